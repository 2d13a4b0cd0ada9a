"""Wang et al.'s mutation-testing claims, checked on what the book build measured.

notebooks/blog_mutation_testing.md saves what ``advlib.experiments.blog_mutation_testing.run``
returned under ``results.results`` of book/executed/blog_mutation_testing.json: per detector
and per group of images, the label change rates, the SPRT's decisions and the mutants it
used. These tests do not demand that a claim holds. They check the raw numbers are sane,
recompute every verdict from them (the AUROC with scikit-learn, from the saved rates), and
require the verdict saved, and glued into the prose, to be that one; where a claim holds, its
inequality is checked on the raw numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

pytestmark = pytest.mark.claims

STEM = "blog_mutation_testing"
EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
ATTACKS = ("FGSM", "JSMA", "C&W", "DeepFool")
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}


@pytest.fixture(scope="module")
def saved():
    path = EXECUTED / f"{STEM}.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: these claims are checked on the numbers the book build saves. "
                    f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {STEM}`) first.")
    record = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in record.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    ipynb = path.with_suffix(".ipynb")
    if not ipynb.is_file():
        pytest.fail(f"{ipynb} is missing: run `make book` first")
    return record["parameters"], record["results"]["results"], _glued(ipynb)


def _glued(ipynb: Path) -> dict[str, str]:
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    glued = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            scrap = out.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                text = "".join(out["data"][f"{scrap.get('mime_prefix', '')}text/plain"])
                glued[scrap["name"]] = text[1:-1] if text[:1] in "'\"" else text
    return glued


def _auroc(genuine, adversarial) -> float:
    if not genuine or not adversarial:
        return float("nan")
    return float(roc_auc_score([0] * len(genuine) + [1] * len(adversarial), genuine + adversarial))


def test_the_numbers_are_sane(saved):
    p, r, _ = saved
    assert r["images"]["genuine"] == p["n_images"] and r["images"]["calibration"] == p["n_calibration"]
    assert len(set(r["images"]["index"])) == p["n_images"] + p["n_calibration"]
    for det in r["detectors"]:
        cap = r["thresholds"][det]["cap"]
        assert cap >= 1
        assert len(r["lcr"][det]["genuine"]) == p["n_images"]
        for group, rates in r["lcr"][det].items():
            lcr = np.asarray(rates, dtype=float)
            assert np.isfinite(lcr).all() and ((lcr >= 0) & (lcr <= 1)).all(), f"{det}/{group}"
            assert np.allclose(lcr * cap, np.round(lcr * cap)), f"{det}/{group}: not counts over {cap} mutants"
            used = np.asarray(r["mutants_used"][det][group])
            assert ((used >= 1) & (used <= cap)).all(), f"{det}/{group}: mutants used outside [1, cap]"
            assert len(r["flagged"][det][group]) == len(lcr)
    for op, m in r["mutants"].items():
        assert m["kept"] == sum(a >= m["min_accuracy"] for a in m["accuracy"]) == r["thresholds"][op]["cap"]
        assert m["min_accuracy"] == pytest.approx(p["min_fraction"] * m["original_accuracy"])
    for a in ATTACKS:
        assert len(r["lcr"]["NAI"][a]) == r["attacks"][a]["kept"] == round(r["attacks"][a]["success_rate"] * p["n_images"])


def test_the_tables_are_the_per_image_numbers(saved):
    _, r, _ = saved
    for det in r["detectors"]:
        for a in ATTACKS:
            assert r["auroc"][det][a] == pytest.approx(_auroc(r["lcr"][det]["genuine"], r["lcr"][det][a]), nan_ok=True)
        for g in ("genuine", *ATTACKS):
            if r["flagged"][det][g]:
                assert r["sprt"][det][g]["flagged"] == pytest.approx(np.mean(r["flagged"][det][g]))
                assert r["sprt"][det][g]["mean_mutants"] == pytest.approx(np.mean(r["mutants_used"][det][g]))
        calib = np.asarray(r["lcr"][det]["calibration"], dtype=float)
        threshold = calib.mean() + 2.5758293035489 * calib.std() / np.sqrt(len(calib))
        assert r["thresholds"][det]["threshold"] == pytest.approx(threshold, rel=1e-6)


def _verdicts(r) -> tuple[dict[str, bool], dict]:
    ops = r["settings"]["operators"]
    mean = {o: {g: float(np.mean(v)) for g, v in r["lcr"][o].items() if v} for o in ops}
    higher = all(a in mean[o] and mean[o][a] > mean[o]["genuine"] for o in ops for a in ATTACKS)
    auroc = {o: {a: _auroc(r["lcr"][o]["genuine"], r["lcr"][o][a]) for a in ATTACKS} for o in ops}
    best = max(ops, key=lambda o: np.nanmean(list(auroc[o].values())))
    above = [a for a in ATTACKS if auroc[best][a] > 0.9]
    op = r["settings"]["sprt_operator"]
    fpr = float(np.mean(r["flagged"][op]["genuine"]))
    used = float(np.mean([u for a in ATTACKS for u in r["mutants_used"][op][a]]))
    cap = r["thresholds"][op]["cap"]
    verdicts = {"adversarial_rate_higher": higher, "auroc_above_09": len(above) >= 3,
                "sprt_genuine_and_mutants": fpr <= 0.1 and used < cap}
    return verdicts, {"mean": mean, "best": best, "auroc": auroc, "above": above, "fpr": fpr, "used": used, "cap": cap}


def test_saved_and_glued_verdicts_are_the_measured_ones(saved):
    _, r, glued = saved
    verdicts, _ = _verdicts(r)
    assert set(r["claims"]) == set(verdicts), "the chapter reports a different set of claims than it defines"
    for key, holds in verdicts.items():
        assert r["claims"][key]["holds"] is holds, f"{key}: saved {r['claims'][key]['holds']}, measured {holds}"
        assert glued[f"v_{key}"] == VERDICT_TEXT[holds], f"{key}: the prose says {glued[f'v_{key}']!r}"
        assert glued[f"m_{key}"] == r["claims"][key]["measured"], f"{key}: the prose quotes other numbers"


def test_the_claims_quote_the_measured_numbers(saved):
    _, r, _ = saved
    _, num = _verdicts(r)
    c = r["claims"]
    assert c["auroc_above_09"]["best_operator"] == num["best"]
    assert c["auroc_above_09"]["auroc"] == pytest.approx(num["auroc"][num["best"]])
    assert c["sprt_genuine_and_mutants"]["false_positive_rate"] == pytest.approx(num["fpr"])
    assert c["sprt_genuine_and_mutants"]["mean_mutants_adversarial"] == pytest.approx(num["used"])
    for o, per in num["mean"].items():
        for g, v in per.items():
            assert c["adversarial_rate_higher"]["mean_lcr"][o][g] == pytest.approx(v)


def test_where_a_claim_holds_its_inequality_holds(saved):
    _, r, _ = saved
    verdicts, num = _verdicts(r)
    if verdicts["adversarial_rate_higher"]:
        for o, per in num["mean"].items():
            assert min(per[a] for a in ATTACKS) > per["genuine"], o
    if verdicts["auroc_above_09"]:
        assert sum(v > 0.9 for v in num["auroc"][num["best"]].values()) >= 3
    if verdicts["sprt_genuine_and_mutants"]:
        assert num["fpr"] <= 0.1 and num["used"] < num["cap"]
