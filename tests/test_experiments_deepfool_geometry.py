"""advlib.experiments.deepfool_geometry on tiny toy sets: what must hold whatever the data."""

from __future__ import annotations

import json

import pytest
import torch

from advlib import provenance, train
from advlib.attacks import deepfool
from advlib.experiments import deepfool_geometry as chapter


@pytest.fixture(scope="module")
def study():
    toy = chapter.toy_sets(n_points=240, noise=0.03, seed=0)
    nets = chapter.networks(toy, hidden=16, epochs=100, lr=0.05, seed=0)
    return toy, nets, chapter.run(nets=nets, toy=toy, overshoot=0.02, start_grid=15)


def test_results_are_what_is_saved_and_modest(study):
    *_, results = study
    assert provenance.to_jsonable(results) == results
    assert len(json.dumps(results, allow_nan=False)) < 50_000
    assert set(results["claims"]) == {"affine_binary_exact", "affine_multiclass_exact", "first_step_is_projection",
                                      "fools_every_point", "few_iterations"}


def test_rings_are_deterministic_and_split():
    train_set, test_set = (chapter.rings(s, n_points=100, seed=3) for s in ("train", "test"))
    assert len(train_set) == 75 and len(test_set) == 25 and train_set.classes == chapter.RING_CLASSES
    again = chapter.rings("train", n_points=100, seed=3)
    assert torch.equal(train_set.x, again.x) and torch.equal(train_set.y, again.y)
    assert 0 <= train_set.x.min() and train_set.x.max() <= 1
    radius = (train_set.x - 0.5).norm(dim=1)
    # Noise 0.03 against rings 0.14 apart: the radius orders the classes.
    means = [radius[train_set.y == k].mean().item() for k in range(3)]
    assert means == sorted(means) and means[0] == pytest.approx(chapter.RADII[0], abs=0.02)
    with pytest.raises(ValueError, match="split"):
        chapter.rings("val")


def test_network_is_deterministic_and_leaves_the_global_generator_alone():
    train_set = chapter.rings("train", n_points=80)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = chapter.network(train_set, hidden=8, epochs=5, seed=1)
    assert torch.equal(torch.rand(1), before)
    b = chapter.network(train_set, hidden=8, epochs=5, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_affine_steps_are_the_closed_forms(study):
    *_, r = study
    ab, am = r["affine_binary"], r["affine_multiclass"]
    w, b = torch.tensor(chapter.BINARY_AFFINE["weight"][0], dtype=torch.float64), chapter.BINARY_AFFINE["bias"][0]
    x0 = torch.tensor(chapter.X0["binary"], dtype=torch.float64)
    r_star = -(x0 @ w + b) / (w @ w) * w
    assert torch.allclose(torch.tensor(ab["perturbation"], dtype=torch.float64), r_star, atol=1e-12)
    assert (torch.tensor(ab["x_adv"], dtype=torch.float64) @ w + b).abs() < 1e-12  # on the hyperplane
    # The multiclass face distances, by brute force over the faces.
    W = torch.tensor(chapter.MULTI_AFFINE["weight"], dtype=torch.float64)
    B = torch.tensor(chapter.MULTI_AFFINE["bias"], dtype=torch.float64)
    x0 = torch.tensor(chapter.X0["multiclass"], dtype=torch.float64)
    f = W @ x0 + B
    assert am["k0"] == int(f.argmax()) == 0  # x0 inside the triangle
    dist = {k: ((f[k] - f[0]).abs() / (W[k] - W[0]).norm()).item() for k in (1, 2, 3)}
    assert am["face_distances"] == pytest.approx({str(k): v for k, v in dist.items()})
    assert am["closest"] == min(dist, key=dist.get)
    assert am["deepfool_norm"] == pytest.approx(dist[am["closest"]], rel=1e-12)


def test_drawn_paths_are_the_attacks_iterates(study):
    toy, nets, r = study
    for name in ("circles", "rings"):
        drawn = r[name]["drawn"]
        path = torch.tensor(drawn["path"])
        assert path.shape == (drawn["iterations"] + 1, 2)
        assert torch.equal(path[0], torch.tensor(drawn["x0"]))
        # One unstopped run from x0 returns the last iterate, and flips its label there.
        again = deepfool(nets[name], path[:1], overshoot=r["overshoot"], clip=None)
        assert torch.equal(again.x_adv[0], path[-1]) and int(again.iterations[0]) == drawn["iterations"]
        assert drawn["success"] and drawn["label_adv"] != drawn["label_orig"]
        assert int(train.predict(nets[name], path[-1:])) == drawn["label_adv"]
        # The linearisation at each iterate: the logits there, and their gradients.
        f, g = torch.tensor(drawn["path_logits"]), torch.tensor(drawn["path_gradients"])
        with torch.no_grad():
            assert torch.allclose(f, nets[name](path), atol=1e-6)
        assert g.shape == (len(path), f.shape[1], 2)


def test_linearisation_of_an_affine_model_is_its_weights():
    model = chapter.affine_models()["multiclass"]
    x = torch.rand(5, 2, dtype=torch.float64)
    f, g = chapter.linearisation(model, x)
    assert torch.allclose(f, model(x).detach())
    assert torch.allclose(g, model.weight.detach().expand(5, -1, -1))
    f1, g1 = chapter.linearisation(chapter.affine_models()["binary"], x)  # one logit, read as (0, f)
    assert f1.shape == (5, 2) and (f1[:, 0] == 0).all() and (g1[:, 0] == 0).all()


def test_test_set_statistics(study):
    toy, nets, r = study
    for name in ("circles", "rings"):
        s = r[name]
        assert s["n_points"] == len(toy[name]["test"])
        counts = {int(k): v for k, v in s["iteration_counts"].items()}
        assert sum(counts.values()) == s["n_points"]
        assert s["mean_iterations"] == pytest.approx(sum(k * v for k, v in counts.items()) / s["n_points"])
        assert s["max_iterations"] == max(counts)
        assert r["accuracy"][name]["test"] == pytest.approx(
            train.accuracy(nets[name], toy[name]["test"].x, toy[name]["test"].y))


def test_each_claim_is_recomputed_from_its_numbers(study):
    *_, r = study
    c = r["claims"]
    b = c["affine_binary_exact"]
    assert b["holds"] == (b["difference_norm"] <= b["tolerance"])
    m = c["affine_multiclass_exact"]
    assert m["holds"] == (m["difference_norm"] <= m["tolerance"] and m["closest"] == m["landed_on"])
    p = c["first_step_is_projection"]
    assert p["holds"] == (p["error"] <= p["tolerance"])
    assert c["fools_every_point"]["holds"] == all(v == 1 for v in c["fools_every_point"]["success_rate"].values())
    it = c["few_iterations"]
    assert it["holds"] == all(v < it["below"] for v in it["mean_iterations"].values())
    assert it["mean_iterations"] == {n: r[n]["mean_iterations"] for n in ("circles", "rings")}
    # The affine claims are exact: they hold on any build.
    assert c["affine_binary_exact"]["holds"] and c["affine_multiclass_exact"]["holds"]
    texts = chapter.texts(r)
    assert texts["multi_l"] == str(m["closest"]) and texts["n_holding"].endswith("of 5")


def test_bad_arguments_are_refused_by_name(study):
    toy, nets, _ = study
    with pytest.raises(ValueError, match="nets"):
        chapter.run(nets={"circles": nets["circles"]}, toy=toy)
    with pytest.raises(ValueError, match="overshoot"):
        chapter.run(nets=nets, toy=toy, overshoot=-1)
    with pytest.raises(ValueError, match="n_points"):
        chapter.rings("train", n_points=2)


def test_every_figure_draws_from_the_results(study):
    import matplotlib.pyplot as plt

    from advlib.figures import deepfool_geometry as figures

    toy, nets, results = study
    affine = chapter.affine_models()
    drawn = [
        figures.affine_binary(results, affine["binary"], grid=20),
        figures.nonlinear_binary(results, nets["circles"], toy["circles"]["test"], grid=20),
        figures.affine_multiclass(results, affine["multiclass"], grid=20),
        figures.nonlinear_multiclass(results, nets["rings"], grid=20),
    ]
    panels = min(2, len(results["rings"]["drawn"]["path"]) - 1)
    assert [len(f.axes) for f in drawn] == [1, 2, 1, 1 + panels]
    for f in drawn:
        plt.close(f)


class _Named:
    def __init__(self):
        self.named = {}

    def data(self, name, dataset, **options):
        self.named[name] = (dataset, options)


def test_record_data_names_every_split():
    run = _Named()
    chapter.record_data(run, {"circles": {"train": "a", "test": "b"}, "rings": {"train": "c"}})
    assert run.named == {"train (circles)": ("a", {}), "test (circles)": ("b", {}), "train (rings)": ("c", {})}
