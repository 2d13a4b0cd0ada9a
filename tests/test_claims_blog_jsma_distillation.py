"""The blog post's distillation claims (Papernot et al. 2016) and Carlini and
Wagner's answer, checked on what the book build measured.

notebooks/blog_jsma_distillation.md saves what
``advlib.experiments.blog_jsma_distillation.run`` returned under
``results.results`` of book/executed/blog_jsma_distillation.json. The papers
measured on MNIST with their own networks; this build may run a stand-in and
smaller networks, where a claim may not replicate. So these tests do not demand
that a claim holds. For every claim they recompute the verdict from the raw
per-attack and per-image numbers, by the definitions the chapter states, and
require the verdict the chapter saved, and glued into its prose, to be that one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.claims

STEM = "blog_jsma_distillation"
EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}


@pytest.fixture(scope="module")
def record():
    path = EXECUTED / f"{STEM}.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: these claims are checked on the numbers the book build saves. "
                    f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {STEM}`) first.")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in saved.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    return saved


@pytest.fixture(scope="module")
def results(record):
    return record["results"]["results"]


@pytest.fixture(scope="module")
def glued():
    ipynb = EXECUTED / f"{STEM}.ipynb"
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


def _rates(results, attack):
    return [float(np.mean(per[attack]["success"])) for per in results["per_attack"]]


def _log10_mean(values):
    v = np.asarray(values, dtype=float)
    top = v.max()
    return top + math.log10(np.mean(10 ** (v - top)))


def test_the_numbers_are_sane_and_as_many_as_the_parameters_say(record, results):
    params = record["results"]["results"]["settings"]
    classes = len(results["classes"])
    temps = results["temperatures"]
    assert temps == sorted(temps) and 1.0 in temps and len(temps) >= 2
    assert sorted(float(t) for t in record["parameters"]["temperatures"]) == temps
    assert results["images"]["n"] == params["n_per_class"] * classes == record["parameters"]["n_per_class"] * classes
    assert results["attacks"]["n"] == results["images"]["n"] * (classes - 1)
    assert len(results["rows"]) == len(results["per_attack"]) == len(temps)
    for row, per in zip(results["rows"], results["per_attack"]):
        assert len(per["jsma"]["success"]) == results["attacks"]["n"]
        assert len(per["deepfool"]["success"]) == len(per["cw"]["success"]) == results["images"]["n"]
        assert len(per["grad_log10_image"]) == results["images"]["n"]
        assert all(math.isfinite(v) for v in per["grad_log10_image"])
        assert 0 < row["accuracy"] <= 1
        assert max(per["jsma"]["l0"]) <= params["gamma"] + 1e-12


def test_jsma_success_falls(results, glued):
    success = _rates(results, "jsma")
    assert success == pytest.approx([r["jsma_success"] for r in results["rows"]])
    falls = all(b <= a for a, b in zip(success, success[1:]))
    holds = bool(falls and success[0] > 0 and success[-1] < 0.1 * success[0])
    claim = results["claims"]["jsma_success_falls"]
    assert claim["holds"] is holds, f"saved {claim['holds']}, measured {success}"
    assert glued["v_jsma_success_falls"] == VERDICT_TEXT[holds]


def test_gradients_vanish(results, glued):
    means = [_log10_mean(per["grad_log10_image"]) for per in results["per_attack"]]
    assert means == pytest.approx([r["grad_log10_mean"] for r in results["rows"]], abs=1e-6)
    holds = bool(means[0] - means[-1] >= 2)
    claim = results["claims"]["gradients_vanish"]
    assert claim["holds"] is holds, f"saved {claim['holds']}, measured log10 means {means}"
    assert glued["v_gradients_vanish"] == VERDICT_TEXT[holds]


def test_accuracy_kept(results, glued):
    accuracy = [r["accuracy"] for r in results["rows"]]
    holds = bool(max(accuracy[0] - a for a in accuracy) <= 0.05)
    claim = results["claims"]["accuracy_kept"]
    assert claim["holds"] is holds and claim["accuracy"] == pytest.approx(accuracy)
    assert glued["v_accuracy_kept"] == VERDICT_TEXT[holds]


def test_logit_attacks_succeed(results, glued):
    deepfool, cw = _rates(results, "deepfool"), _rates(results, "cw")
    assert deepfool == pytest.approx([r["deepfool_success"] for r in results["rows"]])
    assert cw == pytest.approx([r["cw_success"] for r in results["rows"]])
    holds = bool(min(deepfool + cw) >= 0.95)
    claim = results["claims"]["logit_attacks_succeed"]
    assert claim["holds"] is holds, f"saved {claim['holds']}, measured DeepFool {deepfool}, C&W {cw}"
    assert glued["v_logit_attacks_succeed"] == VERDICT_TEXT[holds]
    # rho_adv is over the fooled images, from their relative norms.
    for row, per in zip(results["rows"], results["per_attack"]):
        for attack in ("deepfool", "cw"):
            ok = np.asarray(per[attack]["success"], dtype=bool)
            rel = np.asarray(per[attack]["rel_l2"], dtype=float)
            assert row[f"{attack}_rho"] == pytest.approx(rel[ok].mean())


def test_the_prose_counts_the_claims_it_checked(results, glued):
    n = sum(c["holds"] for c in results["claims"].values())
    assert glued["n_replicated"] == f"{n} of {len(results['claims'])}"
    assert set(results["claims"]) == {"jsma_success_falls", "gradients_vanish", "accuracy_kept",
                                      "logit_attacks_succeed"}
