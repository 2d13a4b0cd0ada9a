"""advlib.experiments.blog_mutation_testing on a tiny classifier (28x28 digits, a
few images, a few mutants): what must hold whatever the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from advlib import data, provenance, train
from advlib.defences import mutation
from advlib.experiments import _shared, blog_mutation_testing as chapter

N, N_CAL, CANDIDATES = 12, 12, 8
OPTIONS = dict(n_images=N, n_calibration=N_CAL, n_filter=100, candidates=CANDIDATES, min_fraction=0.8,
               rates={"GF": 0.05, "WS": 0.1, "NS": 0.1, "NAI": 0.05}, cw_max_iter=30, cw_search_steps=1,
               kappas=[3.0], n_kappa_images=6, input_mutants=10, input_std=0.2, jsma_gamma=0.1, seed=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = train.TrainConfig("fc500-150-10", "digits", epochs=3, lr=0.05, data_options={"size": 28})
    model, _ = train.trained(config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    test = data.load("digits", "test", size=28)
    return model, test, chapter.run(model=model, test=test, **OPTIONS)


def test_results_are_what_is_saved(setup):
    _, _, r = setup
    assert provenance.to_jsonable(r) == r
    json.dumps(r, allow_nan=False)
    assert r["detectors"] == ["GF", "WS", "NS", "NAI", chapter.INPUT]


def test_segments_hold_the_kept_adversarials(setup):
    _, _, r = setup
    seg = r["segments"]
    bounds = list(seg.values())
    assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert seg["genuine"][1] - seg["genuine"][0] == N and seg["calibration"][1] - seg["calibration"][0] == N_CAL
    for a in chapter.ATTACKS:
        assert seg[a][1] - seg[a][0] == r["attacks"][a]["kept"] == round(r["attacks"][a]["success_rate"] * N)
    for det in r["detectors"]:
        for g, (lo, hi) in seg.items():
            assert len(r["lcr"][det][g]) == len(r["flagged"][det][g]) == len(r["mutants_used"][det][g]) == hi - lo


def test_rates_are_counts_over_the_kept_mutants(setup):
    _, _, r = setup
    for det in r["detectors"]:
        cap = r["thresholds"][det]["cap"]
        expected = r["mutants"][det]["kept"] if det in r["mutants"] else OPTIONS["input_mutants"]
        assert cap == expected
        for g in r["segments"]:
            lcr = np.asarray(r["lcr"][det][g], dtype=float)
            assert ((lcr >= 0) & (lcr <= 1)).all()
            assert np.allclose(lcr * cap, np.round(lcr * cap))
            used = np.asarray(r["mutants_used"][det][g])
            assert ((used >= 1) & (used <= cap)).all()


def test_the_genuine_rates_and_decisions_are_recomputed_from_the_seed(setup):
    model, test, r = setup
    genuine = test.x[torch.tensor(r["images"]["index"][:N])]
    filter_x, filter_y = test.x[-OPTIONS["n_filter"]:], test.y[-OPTIONS["n_filter"]:]
    op = "NAI"
    pool = mutation.Mutants(model, op, OPTIONS["rates"][op], x=filter_x, y=filter_y, candidates=CANDIDATES,
                            min_fraction=OPTIONS["min_fraction"], seed=OPTIONS["seed"])
    assert pool.kept == [i for i, a in enumerate(r["mutants"][op]["accuracy"]) if a >= r["mutants"][op]["min_accuracy"]]
    changes = mutation.label_changes(model, pool, genuine)
    assert changes.double().mean(0).tolist() == pytest.approx(r["lcr"][op]["genuine"])
    t = r["thresholds"][op]
    res = mutation.detect(model, pool, genuine, t["threshold"], indifference=t["indifference"], alpha=0.05, beta=0.05)
    assert res.adversarial.tolist() == r["flagged"][op]["genuine"]
    assert res.mutants_used.tolist() == r["mutants_used"][op]["genuine"]


def test_thresholds_auroc_and_tables_follow_from_the_rates(setup):
    _, _, r = setup
    for det in r["detectors"]:
        t = r["thresholds"][det]
        raw = mutation.genuine_threshold(torch.tensor(r["lcr"][det]["calibration"]), 0.99)
        assert t["threshold"] == pytest.approx(raw)
        assert t["indifference"] == pytest.approx(0.1 * raw)
        genuine = r["lcr"][det]["genuine"]
        for a in chapter.ATTACKS:
            adv = r["lcr"][det][a]
            if adv:
                auc = roc_auc_score([0] * len(genuine) + [1] * len(adv), genuine + adv)
                assert r["auroc"][det][a] == pytest.approx(auc)
            for g in ("genuine", a):
                if r["flagged"][det][g]:
                    assert r["sprt"][det][g]["flagged"] == pytest.approx(np.mean(r["flagged"][det][g]))
                    assert r["sprt"][det][g]["mean_mutants"] == pytest.approx(np.mean(r["mutants_used"][det][g]))
            assert r["mean_lcr"][det][a] == (pytest.approx(np.mean(adv)) if adv else None)


def test_the_kappa_sweep(setup):
    _, _, r = setup
    keys = list(r["kappa"]["NAI"])
    assert keys == ["kappa=0", "kappa=3"]
    for det in r["detectors"]:
        zero, three = r["kappa"][det]["kappa=0"], r["kappa"][det]["kappa=3"]
        assert zero["n"] == r["kappa_attacks"]["kappa=0"]["kept"]
        assert three["n"] == len(r["lcr"][det]["kappa=3"]) == r["kappa_attacks"]["kappa=3"]["kept"]
        if three["n"]:
            assert three["detected"] == pytest.approx(np.mean(r["flagged"][det]["kappa=3"]))
        # kappa = 0 is the main C&W run's adversarials of the first n_kappa_images images
        assert zero["n"] <= OPTIONS["n_kappa_images"]
        if zero["n"]:
            assert zero["mean_lcr"] == pytest.approx(np.mean(r["lcr"][det]["C&W"][: zero["n"]]))


def test_each_verdict_is_its_numbers(setup):
    _, _, r = setup
    ops, c = r["settings"]["operators"], r["claims"]
    m = _shared.nan_for_none(r["mean_lcr"])
    higher = all(m[o][a] > m[o]["genuine"] for o in ops for a in chapter.ATTACKS)
    auroc = _shared.nan_for_none(r["auroc"])
    best = max(ops, key=lambda o: np.nanmean([auroc[o][a] for a in chapter.ATTACKS]))
    above = sum(auroc[best][a] > 0.9 for a in chapter.ATTACKS)
    fpr = np.mean(r["flagged"]["NAI"]["genuine"])
    used = np.mean([u for a in chapter.ATTACKS for u in r["mutants_used"]["NAI"][a]])
    expected = {"adversarial_rate_higher": higher, "auroc_above_09": above >= 3,
                "sprt_genuine_and_mutants": fpr <= 0.1 and used < r["thresholds"]["NAI"]["cap"]}
    assert set(c) == set(expected)
    for key, holds in expected.items():
        assert c[key]["holds"] is bool(holds), key
    assert c["auroc_above_09"]["best_operator"] == best


def test_texts_and_tables(setup):
    _, _, r = setup
    texts = chapter.texts(r)
    assert all(isinstance(v, str) and len(v) < 2000 for v in texts.values())
    for key, claim in r["claims"].items():
        assert texts[f"v_{key}"] == _shared.VERDICT[claim["holds"]]
    demo = {"threshold": 0.0441, "max_mutants": 500, "detection_rate": 0.998, "mean_mutants": 35.814,
            "operator": "NAI", "dataset": "MNIST"}
    assert chapter.sprt_table(r, demo).shape == (6, 4 + 2 * len(chapter.ATTACKS))
    table = chapter.auroc_table(r, {"FGSM": {"NAI": 0.9647}})
    assert table.loc["FGSM", "NAI (paper)"] == 0.9647 and table.shape[0] == 4
    assert chapter.kappa_table(r).shape == (2, 2 + 5)
    assert chapter.attack_table(r).shape == (4, 5)
    assert chapter.mutant_table(r).shape == (4, 7)


@pytest.mark.parametrize("bad, match", [(dict(operators=["XX"]), "operators"),
                                        (dict(operators=["NAI", "NAI"]), "operators"),
                                        (dict(rates={"GF": 0.0}), "rates"),
                                        (dict(n_filter=100_000), "n_filter"),
                                        (dict(sprt_operator="GF", operators=["NAI"]), "sprt_operator"),
                                        (dict(kappas=[-1.0]), "kappas"),
                                        (dict(relax=1.5), "relax")])
def test_bad_options_are_refused_by_name(setup, bad, match):
    model, test, _ = setup
    with pytest.raises((ValueError, TypeError), match=match):
        chapter.run(model=model, test=test, **{**OPTIONS, "candidates": 2, **bad})


def test_datasets():
    assert chapter.datasets({}) == {"fashion-mnist"} and chapter.datasets({"dataset": "mnist"}) == {"mnist"}


def test_every_figure_draws_from_the_results(setup):
    import matplotlib.pyplot as plt

    from advlib.figures import blog_mutation_testing as figures

    *_, r = setup
    drawn = [figures.rates(r), figures.kappa(r)]
    assert len(drawn[0].axes) == len(r["detectors"]) * len(chapter.ATTACKS)
    assert len(drawn[1].axes[0].lines) == len(r["detectors"])
    for f in drawn:
        plt.close(f)
