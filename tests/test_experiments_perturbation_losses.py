"""advlib.experiments.perturbation_losses on a tiny classifier (digits, a few images):
what must hold whatever the data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from advlib import data, provenance, train
from advlib.experiments import _shared, perturbation_losses as chapter

N, T, ALPHA = 12, 15, 8 / 255
EM, EP = chapter.SETTINGS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = train.TrainConfig("fc500-150-10", "digits", epochs=2, lr=0.05)
    model, _ = train.trained(config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    test = data.load("digits", "test")
    results = chapter.run(model=model, test=test, n_images=N, max_iter=T, alpha=ALPHA, batch_size=5)
    return model, test, results


def test_results_are_what_is_saved(setup):
    _, _, r = setup
    assert provenance.to_jsonable(r) == r
    json.dumps(r, allow_nan=False)
    assert set(r["measured"]) == set(r["curves"]) == {EM, EP}
    assert all(set(r["measured"][s]) == set(_shared.LOSS_NAMES) for s in (EM, EP))


def test_images_are_the_first_correct_ones_with_their_least_likely_targets(setup):
    model, test, r = setup
    index = torch.as_tensor(r["images"]["test_index"])
    correct = torch.nonzero(train.predict(model, test.x) == test.y).squeeze(1)
    assert torch.equal(index, correct[:N])
    assert r["images"]["label"] == test.y[index].tolist()
    with torch.no_grad():
        assert r["images"]["target"] == model(test.x[index]).argmin(1).tolist()
    assert all(t != y for t, y in zip(r["images"]["target"], r["images"]["label"]))


def test_step_sizes(setup):
    _, test, r = setup
    s = r["settings"]
    n = test.x[0].numel()
    assert s["n_pixels"] == n and s["step_l2"] == pytest.approx(ALPHA * math.sqrt(n))
    # An equal-perturbation step is step_l2 long, or shorter where the box clips it.
    for name in _shared.LOSS_NAMES:
        assert max(r["measured"][EP][name]["first_step_l2"]) <= s["step_l2"] * (1 + 1e-5)
    # A CE-sign step of the equal multiplier moves every pixel by at most alpha.
    assert max(r["measured"][EM]["CE-sign"]["first_step_l2"]) <= ALPHA * math.sqrt(n) * (1 + 1e-5)


def test_per_image_numbers_are_consistent(setup):
    _, _, r = setup
    step = r["settings"]["step_l2"]
    for s in (EM, EP):
        for name in _shared.LOSS_NAMES:
            m = r["measured"][s][name]
            it, reached = np.asarray(m["iterations"]), np.asarray(m["reached"], dtype=bool)
            assert it.shape == reached.shape == (N,)
            assert ((it >= 1) & (it <= T)).all(), "a correctly classified image is not at its target at step 0"
            assert (it[~reached] == T).all(), "an image that never reached its target ran every iteration"
            least = np.array([math.nan if v is None else v for v in m["least_l2"]])
            assert np.isnan(least).tolist() == (~reached).tolist()
            assert (least[reached] > 0).all()
            if s == EP:
                # The box is convex and holds x: no clipped step adds more than step_l2 of distance.
                assert (least[reached] <= it[reached] * step * (1 + 1e-5)).all(), name
            assert m["time_s"] > 0
            for key, curve in r["curves"][s][name].items():
                for stat, values in curve.items():
                    assert len(values) == T + 1, (s, name, key, stat)
            probs = np.asarray(r["curves"][s][name]["prob_label"]["q75"])
            assert ((probs >= 0) & (probs <= 1)).all()
            assert r["curves"][s][name]["logit_label"]["mean"][0] == pytest.approx(np.mean(m["target_logit"]["start"]))
            assert r["curves"][s][name]["logit_label"]["mean"][T] == pytest.approx(np.mean(m["target_logit"]["end"]))


def test_derived_numbers_are_the_per_image_ones(setup):
    _, _, r = setup
    d = _shared.nan_for_none(r["derived"])
    assert d["window_start"] == round(0.8 * T)
    for s in (EM, EP):
        for name in _shared.LOSS_NAMES:
            m = _shared.nan_for_none(r["measured"][s][name])
            assert d["mean_iterations"][s][name] == pytest.approx(np.mean(m["iterations"]))
            least = np.asarray(m["least_l2"])
            if np.isfinite(least).any():
                assert d["median_least_l2"][s][name] == pytest.approx(np.nanmedian(least))
            z = {k: np.mean(v) for k, v in m["target_logit"].items()}
            share = (z["end"] - z["window_start"]) / (z["end"] - z["start"])
            assert d["saturation_share"][s][name] == pytest.approx(share, rel=1e-6, abs=1e-9)


def test_each_verdict_is_its_numbers(setup):
    _, _, r = setup
    d, c = _shared.nan_for_none(r["derived"]), _shared.nan_for_none(r["claims"])
    it, least, first, shares = (d[k] for k in ("mean_iterations", "median_least_l2", "median_first_step_l2",
                                              "saturation_share"))
    expected = {
        "ce_fewest_iterations": it[EP]["CE"] < min(v for k, v in it[EP].items() if k != "CE"),
        "ce_sign_most_iterations": it[EP]["CE-sign"] > max(v for k, v in it[EP].items() if k != "CE-sign"),
        "m_logit_slower_than_logit": it[EP]["M-logit"] > it[EP]["logit"],
        "m_logit_less_perturbation_than_logit": least[EP]["M-logit"] < least[EP]["logit"],
        "ce_least_perturbation": least[EP]["CE"] < min(v for k, v in least[EP].items() if k != "CE"),
        "ce_sign_largest_step": first[EM]["CE-sign"] > max(v for k, v in first[EM].items() if k != "CE-sign"),
        "ce_gradient_decreases": d["median_grad_end"][EM]["CE"] < d["median_grad_start"][EM]["CE"],
    }
    for s, short in ((EM, "equal_multiplier"), (EP, "equal_perturbation")):
        expected[f"ce_saturates_{short}"] = shares[s]["CE"] < 0.05
        expected[f"ce_sign_saturates_{short}"] = shares[s]["CE-sign"] < 0.05
        expected[f"logit_keeps_increasing_{short}"] = shares[s]["logit"] >= 0.05
    assert set(c) == set(expected)
    for key, holds in expected.items():
        assert c[key]["holds"] is bool(holds), key
        assert isinstance(c[key]["statement"], str) and c[key]["measured"]


def test_texts_and_table(setup):
    _, _, r = setup
    texts = chapter.texts(r)
    assert all(isinstance(v, str) and len(v) < 2000 for v in texts.values())
    for key, claim in r["claims"].items():
        assert texts[f"v_{key}"] == _shared.VERDICT[claim["holds"]]
    table = chapter.table_1(r, {n: "paper" for n in _shared.LOSS_NAMES})
    assert list(table.index) == list(_shared.LOSS_NAMES) and table.shape[1] == 7


def test_the_stopped_and_full_runs_agree_on_single_batches_too(setup):
    model, test, r = setup
    one = chapter.run(model=model, test=test, n_images=N, max_iter=T, alpha=ALPHA, batch_size=N)
    for s in (EM, EP):
        for name in _shared.LOSS_NAMES:
            assert one["measured"][s][name]["iterations"] == r["measured"][s][name]["iterations"], (s, name)


@pytest.mark.parametrize("bad, match", [(dict(n_images=10_000), "n_images|correctly"), (dict(alpha=0.0), "alpha"),
                                        (dict(saturation_window=1.5), "saturation_window"),
                                        (dict(max_iter=0), "max_iter"), (dict(kappa=-1.0), "kappa")])
def test_bad_options_are_refused_by_name(setup, bad, match):
    model, test, _ = setup
    with pytest.raises((ValueError, TypeError), match=match):
        chapter.run(model=model, test=test, **{"n_images": 2, "max_iter": 2, **bad})


def test_datasets():
    assert chapter.datasets({"dataset": "mnist"}) == {"mnist"}


def test_shared_loss_sources_claims_and_names():
    from advlib import losses

    sources = _shared.loss_sources(0.5)
    assert list(sources) == list(_shared.LOSS_NAMES)
    assert sources["CE"] is losses.ce and sources["CE-sign"] is losses.ce_sign and sources["logit"] is losses.logit
    logits, t = torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([1])
    assert sources["M-logit"].value(logits, t, targeted=True).item() == -0.5  # max(1 - 2, -kappa)
    assert list(_shared.loss_sources(names=("logit", "CE"))) == ["logit", "CE"]
    with pytest.raises(ValueError, match="names"):
        _shared.loss_sources(names=("hinge",))
    with pytest.raises(ValueError, match="kappa"):
        _shared.loss_sources(-1.0)
    claims = {"a": _shared.claim("A holds", np.bool_(True), "1 < 2", x=1), "b": _shared.claim("B", 0, "no")}
    assert claims["a"]["holds"] is True and claims["b"]["holds"] is False
    table = _shared.claims_table(claims, {"a": "pa", "b": "pb"}, "paper").data
    assert list(table["holds"]) == ["yes", "no"] and list(table["paper"]) == ["pa", "pb"]
    with pytest.raises(KeyError, match="b"):
        _shared.claims_table(claims, {"a": "pa"}, "paper")
    assert _shared.verdicts(claims) == {"v_a": "replicates", "v_b": "does not replicate"}
    assert _shared.n_holding(claims) == "1 of 2"
    assert _shared.names_text(["CE", "logit", "M-logit"]) == "CE, logit and M-logit"
    assert _shared.nan_for_none({"a": [None, 1.0]})["a"][1] == 1.0
    assert math.isnan(_shared.nan_for_none({"a": [None, 1.0]})["a"][0])


def test_every_figure_draws_from_the_results(setup):
    import matplotlib.pyplot as plt

    from advlib.figures import perturbation_losses as figures

    *_, results = setup
    em, ep = chapter.SETTINGS
    drawn = [figures.ifgs(results, em), figures.setting(results, em), figures.setting(results, ep),
             figures.gradients(results, em)]
    assert [len(f.axes) for f in drawn] == [1, 4, 4, 1]
    assert len(drawn[3].axes[0].lines) == len(_shared.LOSS_NAMES) + 1  # a curve per loss, and sqrt(n)
    for f in drawn:
        plt.close(f)


def test_the_model_record_and_frame():
    info = {"config": {"epochs": 4}, "test_accuracy": 0.9012345, "from_cache": True, "train_seconds": 1.5, "key": "k"}
    assert chapter.model_record(info) == {"config": {"epochs": 4}, "test_accuracy": 0.9012345, "from_cache": True,
                                          "train_seconds": 1.5}
    frame = chapter.model_frame(info, "fashion-mnist")
    assert frame.loc["test accuracy"].item() == "0.9012" and frame.loc["this run"].item() == "loaded from the cache"
