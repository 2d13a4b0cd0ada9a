"""advlib.experiments.optimality on a tiny network: the structure of the
results, every exact point re-judged, every ratio and summary and claim
recomputed from the saved numbers, and the protocol's helpers."""

from __future__ import annotations

import math

import pytest
import torch

from advlib import data, exact, norms, train
from advlib.attacks import deepfool
from advlib.experiments import optimality


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = optimality.config(hidden=12, depth=2, epochs=20)
    return train.trained(config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def result(tiny):
    model, info = tiny
    return optimality.run(n_images=5, model=model, info=info, time_limit=20.0, ifgs_steps=20)


def test_structure(result, tiny):
    assert result["n_images"] == 5 and len(result["index"]) == 5
    assert result["model"]["layers"] == [64, 12, 12, 10]
    assert result["model"]["config"]["arch"] == "mlp"
    for key in optimality.NORMS:
        assert set(result["attacks"][key]) == set(optimality.METHODS[key])
        for m, entry in result["attacks"][key].items():
            if entry["ran"]:
                assert len(entry["size"]) == len(entry["success"]) == 5 and entry["seconds"] >= 0
            else:
                assert m == "foolbox_deepfool" and entry["reason"] == "not installed"
        ex = result["exact"][key]
        assert all(len(ex[f]) == 5 for f in ("distance", "lower_bound", "status", "seconds", "x_adv"))
        assert result["solver"][key]["optimal"] + result["solver"][key]["time_limit"] <= 5


def test_exact_points_are_adversarial_and_their_distances_are_theirs(result, tiny):
    model, _ = tiny
    images = data.first_correct(model, data.load("digits", "test"), 5)
    assert images.index.tolist() == result["index"]
    for key, p in optimality.NORMS.items():
        ex = result["exact"][key]
        x_adv = torch.tensor(ex["x_adv"], dtype=torch.float32).view_as(images.x)
        with torch.no_grad():
            label = model(x_adv).argmax(1)
        for i in range(5):
            if ex["distance"][i] is None:
                continue
            assert label[i] != images.y[i] and label[i] == ex["label_adv"][i]
            size = norms.lp_norm((x_adv[i : i + 1] - images.x[i : i + 1]).double(), p).item()
            assert size == pytest.approx(ex["distance"][i], rel=1e-6)
            assert ex["lower_bound"][i] <= ex["distance"][i]


def test_ratios_summaries_and_claims_are_recomputed_from_the_numbers(result):
    for key in optimality.NORMS:
        ex = result["exact"][key]
        for m, entry in result["attacks"][key].items():
            if not entry["ran"]:
                continue
            want = [
                s / d if s is not None and st == "optimal" and d else None
                for s, d, st in zip(entry["size"], ex["distance"], ex["status"])
            ]
            assert result["ratios"][key][m] == pytest.approx(want)
            got = [v for v in want if v is not None]
            summary = result["summary"][key][m]
            assert summary["n"] == len(got)
            if got:
                assert summary["max"] == pytest.approx(max(got))
                assert summary["within_5pct"] == pytest.approx(sum(v <= 1.05 for v in got) / len(got))
            # Sizes exist exactly where the attack succeeded.
            assert [s is not None for s in entry["size"]] == entry["success"]
    again = optimality.claims(result, tolerance=1e-3, near=0.05)
    for name, claim in result["claims"].items():
        assert claim["holds"] is again[name]["holds"], name
    assert result["claims"]["lower_bound_below_every_attack"]["holds"]
    assert result["claims"]["ratios_at_least_one"]["holds"]


def test_scaled_to_boundary_removes_deepfools_overshoot():
    """On an affine model the boundary along DeepFool's ray is at 1 / (1 + eta)
    of its returned perturbation: the scaled point is the exact minimum (L-inf)."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(6, 3).double().eval()
    x = torch.rand(4, 6, generator=g, dtype=torch.float64) * 0.5 + 0.25
    found = deepfool(model, x, p=math.inf, overshoot=0.1, step_margin=0.0, clip=None)
    label = model(x).argmax(1)
    scaled = optimality.scaled_to_boundary(model, x, found.x_adv, label, steps=40)
    assert (model(scaled).argmax(1) != label).all()
    ratio = norms.lp_norm(scaled - x, math.inf) / norms.lp_norm(found.perturbation, math.inf)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / 1.1), rtol=1e-6, atol=0)
    best = exact.minimal_perturbation(model, x, p=math.inf, clip=None)
    torch.testing.assert_close(norms.lp_norm(scaled - x, math.inf), best.distance, rtol=1e-4, atol=0)
    # A point that is not adversarial comes back unchanged.
    same = optimality.scaled_to_boundary(model, x, x + 1e-3, label)
    assert torch.equal(same, x + 1e-3)


def test_smallest_fooling_eps_points_are_adversarial(tiny):
    model, _ = tiny
    images = data.first_correct(model, data.load("digits", "test"), 3)
    x, y = images.x, images.y
    lower = torch.zeros(3, dtype=torch.float64)
    start = torch.full((3,), 0.05)
    for pts in (optimality._fgsm_smallest(model, x, y, 1e-3),
                optimality._ifgs_smallest(model, x, y, start, lower, steps=20, rtol=1e-2, progress=False)):
        with torch.no_grad():
            assert (model(pts).argmax(1) != y).all()
        assert ((pts >= 0) & (pts <= 1)).all()


def test_summary_and_ratios():
    assert optimality.ratios([2.0, None, 3.0], [1.0, 1.0, 2.0], ["optimal", "optimal", "time limit"]) == [2.0, None, None]
    s = optimality.summary([1.0, 1.02, None, 1.2])
    assert s["n"] == 3 and s["median"] == 1.02 and s["within_1pct"] == pytest.approx(1 / 3)
    assert s["within_5pct"] == pytest.approx(2 / 3) and s["max"] == 1.2
    assert optimality.summary([None])["median"] is None


def test_config_and_datasets():
    config = optimality.config(hidden=16, depth=3)
    assert config.arch == "mlp" and dict(config.model_options) == {"hidden": 16, "depth": 3}
    assert optimality.datasets({}) == {"digits"}


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(n_images=0), "n_images"), (dict(rtol=0), "rtol"), (dict(progress=1), "progress"),
     (dict(model=torch.nn.Linear(2, 2)), "give both model and info")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        optimality.run(**kwargs)


def test_the_figure_draws_every_attack_that_ran(result):
    import matplotlib.pyplot as plt

    from advlib.figures import optimality as figures

    fig = figures.ratios(result)
    for ax, key in zip(fig.axes, optimality.NORMS):
        ran = [m for m in optimality.METHODS[key] if result["attacks"][key][m]["ran"]]
        assert [t.get_text() for t in ax.get_yticklabels()] == [optimality.LABELS[m] for m in ran]
    plt.close(fig)
