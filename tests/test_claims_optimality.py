"""The optimality chapter's claims, checked on what the book build measured.

notebooks/optimality.md saves what ``advlib.experiments.optimality.run``
returned under ``results.results`` of book/executed/optimality.json. Every
ratio, summary and verdict is recomputed here from the per-image numbers:
the exact minima and lower bounds, and each attack's sizes.

Two claims are checks of the exact solver and must hold: no attack's
perturbation is below the certified lower bound, and no ratio is below 1 by
more than the solver's tolerance. The paper's claims (DeepFool nearly
minimal: median ratio at most 1 + near; closer to the minimum than fast
gradient sign) and whether every image was proved optimal are reported
findings: the verdict must be the one the numbers give, and the one the
prose states, whichever it is.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

pytestmark = pytest.mark.claims

EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}
NORMS = ("linf", "l1")


@pytest.fixture(scope="module")
def saved():
    path = EXECUTED / "optimality.json"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these claims are checked on the numbers the book build saves. "
            "Run `make book` (or `.venv/bin/python scripts/build_book.py run optimality`) first."
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in record.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    return record


@pytest.fixture(scope="module")
def results(saved):
    return saved["results"]["results"]


@pytest.fixture(scope="module")
def glued():
    ipynb = EXECUTED / "optimality.ipynb"
    if not ipynb.is_file():
        pytest.fail(f"{ipynb} is missing: run `make book` first")
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    out = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            scrap = o.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                text = "".join(o["data"][f"{scrap.get('mime_prefix', '')}text/plain"])
                out[scrap["name"]] = text[1:-1] if text[:1] in "'\"" else text
    return out


def _ratios(results, key, method):
    ex = results["exact"][key]
    sizes = results["attacks"][key][method]["size"]
    return [
        s / d if s is not None and st == "optimal" and d else None
        for s, d, st in zip(sizes, ex["distance"], ex["status"])
    ]


def _median(results, key, method):
    got = [v for v in _ratios(results, key, method) if v is not None]
    return statistics.median(got) if got else None


def test_the_run_is_the_quick_presets_or_larger(saved, results):
    params = saved["parameters"]
    assert results["n_images"] == params["n_images"] >= 40, results["n_images"]
    assert results["model"]["test_accuracy"] >= 0.95, results["model"]["test_accuracy"]


def test_ratios_and_summaries_are_the_saved_numbers(results):
    for key in NORMS:
        for method, entry in results["attacks"][key].items():
            if not entry["ran"]:
                assert entry["reason"] == "not installed", (key, method, entry)
                continue
            assert results["ratios"][key][method] == pytest.approx(_ratios(results, key, method)), (key, method)
            assert results["summary"][key][method]["median"] == pytest.approx(_median(results, key, method))


def test_no_attack_beats_the_certified_lower_bound(results):
    tol = results["claims"]["ratios_at_least_one"]["tolerance"]
    bad = []
    for key in NORMS:
        ex = results["exact"][key]
        assert all(lb <= d for lb, d in zip(ex["lower_bound"], ex["distance"]) if d is not None), key
        for method, entry in results["attacks"][key].items():
            for i, (size, lb) in enumerate(zip(entry["size"], ex["lower_bound"])):
                if size is not None and lb > size * (1 + tol):
                    bad.append(f"{key} {method} image {i}: size {size:.6g} < lower bound {lb:.6g}")
    assert not bad, "\n".join(bad)
    assert results["claims"]["lower_bound_below_every_attack"]["holds"]


def test_every_ratio_is_at_least_one_up_to_the_solver_tolerance(results):
    tol = results["claims"]["ratios_at_least_one"]["tolerance"]
    low = [
        (key, method, i, r)
        for key in NORMS
        for method, entry in results["attacks"][key].items() if entry["ran"]
        for i, r in enumerate(_ratios(results, key, method)) if r is not None and r < 1 - tol
    ]
    assert not low, f"ratios below 1 - {tol}: {low}"
    assert results["claims"]["ratios_at_least_one"]["holds"]


def test_reported_findings_match_the_numbers_and_the_prose(results, glued):
    claims = results["claims"]
    threshold = claims["deepfool_nearly_minimal"]["threshold"]
    df_inf, df_1 = _median(results, "linf", "deepfool"), _median(results, "l1", "deepfool")
    fgsm = _median(results, "linf", "fgsm")
    n = results["n_images"]
    recomputed = {
        "deepfool_nearly_minimal": df_inf is not None and df_inf <= threshold,
        "deepfool_closer_than_fgsm": df_inf is not None and fgsm is not None and df_inf < fgsm,
        "every_image_solved": all(results["exact"][k]["status"].count("optimal") == n for k in NORMS),
    }
    for key, holds in recomputed.items():
        assert claims[key]["holds"] is holds, f"{key}: saved {claims[key]['holds']}, recomputed {holds}"
        assert glued.get(f"v_{key}") == VERDICT_TEXT[holds], f"{key}: the prose says {glued.get(f'v_{key}')!r}"
    # The headline numbers of the prose are this run's.
    assert glued["opt_linf_deepfool_median"] == f"{df_inf:.3f}"
    assert glued["opt_l1_deepfool_median"] == f"{df_1:.3f}"
    assert glued["opt_linf_fgsm_median"] == f"{fgsm:.3f}"


def test_every_solved_point_was_confirmed_adversarial(results):
    for key in NORMS:
        ex = results["exact"][key]
        for i, (st, ok, d) in enumerate(zip(ex["status"], ex["success"], ex["distance"])):
            if st == "optimal":
                assert ok and d is not None and math.isfinite(d), (key, i, st)
