"""advlib.experiments.adversarial_retraining on a tiny classifier (28x28 digits, a few
images, a few detector updates): what must hold whatever the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advlib import data, provenance, train
from advlib.experiments import _shared, adversarial_retraining as chapter

N_TRAIN, N_TEST, ARCHS = 16, 8, ["fc500-150-10", "lenet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = train.TrainConfig("fc500-150-10", "digits", epochs=3, lr=0.05, data_options={"size": 28})
    model, _ = train.trained(config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    splits = {s: data.load("digits", s, size=28) for s in ("train", "test")}
    results = chapter.run(model=model, train=splits["train"], test=splits["test"], n_train_images=N_TRAIN,
                          n_test_images=N_TEST, max_iter=40, alpha=8 / 255, detector_archs=ARCHS,
                          detector_steps=8, detector_batch=16, batch_size=10)
    return model, splits, results


def test_results_are_what_is_saved(setup):
    _, _, r = setup
    assert provenance.to_jsonable(r) == r
    json.dumps(r, allow_nan=False)
    assert r["detector_archs"] == ARCHS and r["detector_names"] == ["FC500-150-10", "LeNet"]


def test_the_sets_are_balanced_and_kept_images_reached_every_target(setup):
    _, _, r = setup
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        k = r["kept"][split]
        assert 0 < k <= n
        assert r["images"][split] == {**r["images"][split], "attacked": n, "extra_genuine": 3 * n}
        for name in _shared.LOSS_NAMES:
            assert r["set_sizes"][split]["single"][name] == {"genuine": k, name: k}
            # A kept image reached its target with every loss: at least k of the n did with each.
            assert r["attacks"][split][name]["reached"] >= k / n - 1e-12
        assert r["set_sizes"][split]["mixed"] == {"genuine": 4 * k, **{name: k for name in _shared.LOSS_NAMES}}


def test_train_and_test_images_are_apart_and_the_first_correct(setup):
    model, splits, r = setup
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        ds = splits[split]
        correct = torch.nonzero(train.predict(model, ds.x) == ds.y).squeeze(1)
        assert r["images"][split]["index"] == correct[: 4 * n].tolist()


def test_accuracies_are_consistent(setup):
    _, _, r = setup
    for a in ARCHS:
        for name in _shared.LOSS_NAMES:
            acc = r["table_2"][a][name]
            assert set(acc) == {"genuine", name, "overall"}
            assert all(0 <= v <= 1 for v in acc.values())
            assert acc["overall"] == pytest.approx((acc["genuine"] + acc[name]) / 2)  # half and half
        t3 = r["table_3"][a]
        assert set(t3) == set(chapter.TABLE_3_ROWS)
        assert t3["adversarial"] == pytest.approx(np.mean([t3[n] for n in _shared.LOSS_NAMES]))
        assert t3["overall"] == pytest.approx((t3["genuine"] + t3["adversarial"]) / 2)
        assert set(r["detector_train_accuracy"][a]) == {*_shared.LOSS_NAMES, "all"}


def test_the_example_is_adversarial_on_the_returned_points(setup):
    model, splits, r = setup
    ex = r["example"]
    genuine = torch.tensor(ex["genuine"])[None]
    classes = splits["test"].classes
    assert classes[int(train.predict(model, genuine))] == ex["genuine_class"]
    with torch.no_grad():
        target = int(model(genuine).argmin(1))
    for name, adv in ex["adversarial"].items():
        adv = torch.tensor(adv)[None]
        assert adv.min() >= 0 and adv.max() <= 1
        assert int(train.predict(model, adv)) == target, f"{name}: the kept adversarial is not at its target"
        assert ex["adversarial_class"][name] == classes[target]


def test_each_verdict_is_its_numbers(setup):
    _, _, r = setup
    t2, t3, c = r["table_2"], r["table_3"], r["claims"]
    mean_2 = {n: np.mean([t2[a][n]["overall"] for a in ARCHS]) for n in _shared.LOSS_NAMES}
    mean_3 = {n: np.mean([t3[a][n] for a in ARCHS]) for n in _shared.LOSS_NAMES}
    cap_2 = [np.mean([t2[a][n]["overall"] for n in _shared.LOSS_NAMES]) for a in ARCHS]
    cap_3 = [t3[a]["overall"] for a in ARCHS]
    assert r["derived"]["mean_table_2"] == pytest.approx(mean_2)
    expected = {
        "ce_sign_easiest_single": mean_2["CE-sign"] > max(v for k, v in mean_2.items() if k != "CE-sign"),
        "ce_sign_easiest_all": mean_3["CE-sign"] > max(v for k, v in mean_3.items() if k != "CE-sign"),
        "ce_m_logit_hardest_all": set(sorted(mean_3, key=mean_3.get)[:2]) == {"CE", "M-logit"},
        "capacity_single": cap_2[1] > cap_2[0],
        "capacity_all": cap_3[1] > cap_3[0],
    }
    assert set(c) == set(expected)
    for key, holds in expected.items():
        assert c[key]["holds"] is bool(holds), key


def test_texts_and_tables(setup):
    _, _, r = setup
    texts = chapter.texts(r)
    assert all(isinstance(v, str) and len(v) < 2000 for v in texts.values())
    for key, claim in r["claims"].items():
        assert texts[f"v_{key}"] == _shared.VERDICT[claim["holds"]]
    assert chapter.table_2(r, {}).shape == (4, len(ARCHS) + 1)
    assert list(chapter.table_3(r, {})["paper"]) == [""] * len(chapter.TABLE_3_ROWS)
    assert chapter.attack_table(r).shape == (8, 4)
    assert chapter.train_accuracy_table(r).shape == (5, len(ARCHS))


@pytest.mark.parametrize("bad, match", [(dict(detector_archs=["nope"]), "detector_archs"),
                                        (dict(detector_archs=["lenet", "lenet"]), "detector_archs"),
                                        (dict(n_train_images=10_000), "correctly"),
                                        (dict(detector_steps=0), "detector_steps"), (dict(alpha=-1.0), "alpha")])
def test_bad_options_are_refused_by_name(setup, bad, match):
    model, splits, _ = setup
    with pytest.raises((ValueError, TypeError), match=match):
        chapter.run(model=model, train=splits["train"], test=splits["test"],
                    **{"n_train_images": 2, "n_test_images": 2, "max_iter": 2, **bad})


def test_datasets():
    assert chapter.datasets({}) == {"fashion-mnist"}


def test_the_figure_draws_from_the_results(setup):
    import matplotlib.pyplot as plt

    from advlib.figures import adversarial_retraining as figures

    *_, r = setup
    fig = figures.examples(r)
    assert len(fig.axes) == 2 * (1 + len(r["example"]["adversarial"]))
    plt.close(fig)
