"""advlib.experiments.perturbation_theory on a tiny 2-D study: what must hold whatever the data."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from advlib import data, provenance, theory
from advlib.experiments import _shared, perturbation_theory as chapter

GRID, PATHS, STEPS = 24, 3, 12


@pytest.fixture(scope="module")
def study():
    opts = dict(n_samples=200, noise=0.08, factor=0.5, seed=0)
    train_set, test_set = (data.load("circles", s, **opts) for s in ("train", "test"))
    net = chapter.network(train_set, hidden=16, epochs=150, lr=0.05, seed=0)
    results = chapter.run(model=net, train=train_set, test=test_set, grid=GRID, n_paths=PATHS, path_steps=STEPS,
                          path_alpha=0.002, path_alpha_sign=0.02)
    return net, test_set, results


def test_network_is_deterministic_and_leaves_the_global_generator_alone():
    train_set = data.load("circles", "train", n_samples=100)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = chapter.network(train_set, hidden=8, epochs=5, seed=1)
    assert torch.equal(torch.rand(1), before)
    b = chapter.network(train_set, hidden=8, epochs=5, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_results_are_what_is_saved_and_modest(study):
    _, _, results = study
    assert provenance.to_jsonable(results) == results
    text = json.dumps(results, allow_nan=False)
    assert len(text) < 200_000
    assert set(results["claims"]) == {"ce_vanishes_in_s3", "logit_gradient_everywhere", "ce_larger_than_logit_in_s1",
                                      "theorem_within_bound", "ce_stalls_short_of_logit", "ce_sign_vanishes_in_s3"}


def test_subspaces_partition_the_grid_and_match_the_softmax(study):
    _, _, r = study
    assert sum(r["subspace_share"].values()) == pytest.approx(1.0)
    where = torch.as_tensor(r["maps"]["subspace"])
    p = torch.tensor(np.array(r["maps"]["prob_target"], dtype=float))
    assert where.shape == p.shape == (GRID, GRID)
    c = r["confident"]
    # Two classes: S3 iff the target is confident, S1 iff the other one is (p rounded to 4 digits).
    clear = ((p - c).abs() > 1e-3) & ((p - (1 - c)).abs() > 1e-3)
    assert ((where == theory.S3) == (p >= c))[clear].all()
    assert ((where == theory.S1) == (p <= 1 - c))[clear].all()
    for s, share in r["subspace_share"].items():
        assert share == pytest.approx((where == int(s[1])).double().mean().item())


def test_step_magnitudes(study):
    _, _, r = study
    sign = np.array(r["maps"]["magnitude"]["CE-sign"], dtype=float)
    assert np.isin(np.round(sign, 3), [0.0, 1.0, 1.414]).all(), "a sign step of a 2-D gradient has norm 0, 1 or sqrt 2"
    ce = np.array(r["maps"]["magnitude"]["CE"], dtype=float)
    where = np.array(r["maps"]["subspace"])
    for s in ("S1", "S2", "S3"):
        mine = ce[where == int(s[1])]
        summary = r["gradient_magnitude"]["CE"][s]
        assert summary["n"] == mine.size
        if mine.size:
            assert summary["q50"] == pytest.approx(float(np.quantile(mine, 0.5)), rel=2e-3)


def test_theorem_error_within_the_proven_bound(study):
    _, _, r = study
    ap = r["approximation"]
    assert ap["largest_excess"] <= chapter.BOUND_TOLERANCE
    assert ap["decomposition_error"] < 1e-10  # the exact decomposition, in float64
    sc = ap["scatter"]
    assert (np.asarray(sc["scaled"]) <= np.asarray(sc["bound"]) + 1e-12).all()
    assert len(sc["bound"]) <= chapter.MAX_SCATTER


def test_paths_start_at_outer_test_points_and_stay_in_the_box(study):
    _, test_set, r = study
    x0 = torch.as_tensor(r["paths"]["x0"])
    outer = test_set.x[test_set.y == chapter.OUTER]
    assert all((outer == p).all(1).any() for p in x0)
    for name in chapter.LOSS_NAMES:
        path = torch.as_tensor(r["paths"]["iterates"][name])
        assert path.shape == (STEPS + 1, PATHS, 2)
        assert torch.equal(path[0], x0)
        assert path.min() >= 0 and path.max() <= 1
        assert r["paths"]["summary"][name]["retrace_error"] <= 1e-6
        trace = torch.as_tensor(r["paths"]["trace"][name]["prob_target"])
        assert trace.shape == (STEPS + 1, PATHS) and ((trace >= 0) & (trace <= 1)).all()
    # CE-sign steps of L-inf size path_alpha_sign (fewer where the box clips).
    sign = torch.as_tensor(r["paths"]["iterates"]["CE-sign"])
    assert sign.diff(dim=0).abs().amax() <= 0.02 + 1e-6


def test_each_verdict_is_its_numbers(study):
    _, _, r = study
    c = _shared.nan_for_none(r["claims"])
    for key, claim in c.items():
        assert isinstance(claim["statement"], str) and isinstance(claim["holds"], bool) and claim["measured"], key
    ce = c["ce_vanishes_in_s3"]
    assert ce["holds"] == (ce["median_s3"] < min(ce["median_s1"], ce["median_s2"]))
    assert c["logit_gradient_everywhere"]["holds"] == (c["logit_gradient_everywhere"]["smallest"] > 0)
    assert c["ce_larger_than_logit_in_s1"]["holds"] == (c["ce_larger_than_logit_in_s1"]["median_ratio"] > 1)
    b = c["theorem_within_bound"]
    assert b["holds"] == (b["largest_excess"] <= b["tolerance"])
    g = c["ce_stalls_short_of_logit"]
    assert g["holds"] == (g["gap_ce"] < g["gap_logit"])
    assert g["gap_ce"] == r["paths"]["summary"]["CE"]["final_logit_gap_median"]
    s = c["ce_sign_vanishes_in_s3"]
    assert s["holds"] == (s["zero_share_s3"] >= 0.5)


def test_texts_are_strings_and_carry_the_verdicts(study):
    _, _, r = study
    texts = chapter.texts(r)
    assert all(isinstance(v, str) and len(v) < 1000 for v in texts.values())
    for key, claim in r["claims"].items():
        assert texts[f"v_{key}"] == ("replicates" if claim["holds"] else "does not replicate")


def test_tables(study):
    _, _, r = study
    assert list(chapter.magnitude_table(r).index) == ["S1", "S2", "S3"]
    assert list(chapter.theorem_table(r).index) == ["S1", "S2", "S3"]
    assert list(chapter.path_table(r).index) == list(chapter.LOSS_NAMES)


@pytest.mark.parametrize("bad, match", [(dict(confident=1.0), "confident"), (dict(grid=1), "grid"),
                                        (dict(path_steps=5), "path_steps"), (dict(path_alpha=0.0), "path_alpha"),
                                        (dict(n_paths=10_000), "n_paths")])
def test_bad_options_are_refused_by_name(study, bad, match):
    net, test_set, _ = study
    with pytest.raises((ValueError, TypeError), match=match):
        chapter.run(model=net, train=test_set, test=test_set, **{"grid": 4, **bad})


def test_datasets():
    assert chapter.datasets({}) == {"circles"}


def test_every_figure_draws_from_the_results(study):
    import matplotlib.pyplot as plt

    from advlib.figures import perturbation_theory as figures

    net, test_set, results = study
    drawn = [figures.circles(results, test_set, confident=0.9), figures.heatmaps(results, confident=0.9),
             figures.iterations(results, confident=0.9), figures.bound(results, confident=0.9)]
    assert [len(f.axes) for f in drawn][::2] == [1, 2]  # the heat maps and the bound add colour bars / a legend
    assert len(drawn[1].axes) == 3 + 3  # three panels, three colour bars
    for f in drawn:
        plt.close(f)
