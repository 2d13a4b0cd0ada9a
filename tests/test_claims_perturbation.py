"""Ozbulak et al.'s claims, checked on what the book build measured.

The three chapters (notebooks/perturbation_theory.md, perturbation_losses.md,
adversarial_retraining.md) save what ``advlib.experiments.<chapter>.run`` returned, raw numbers
and a verdict per claim, under ``results.results`` of book/executed/<stem>.json. The paper
measured on ResNet-50 and ImageNet; this build runs LeNet on Fashion-MNIST, where a claim may
not replicate. So these tests do not demand that a claim holds. For every claim they

1. check that the raw numbers are sane (finite, as many as the parameters say);
2. recompute the verdict from the raw numbers, by the definitions the chapter states, and
   require the verdict the chapter saved, and glued into its prose, to be that one;
3. where the claim replicated, check the inequality itself on the raw numbers.

A run that was tuned until a claim held would still pass; a book that reports a claim as
replicated when its numbers say otherwise (or the reverse) fails.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.claims

EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
LOSSES = ("CE", "CE-sign", "logit", "M-logit")
EM, EP = "equal multiplier", "equal perturbation"
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}


def _load(stem: str) -> tuple[dict, Path]:
    """The saved record, with ``results`` replaced by what the chapter's ``run`` returned."""
    path = EXECUTED / f"{stem}.json"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these claims are checked on the numbers the book build saves. "
            f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {stem}`) first."
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in record.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    return {**record, "results": record["results"]["results"]}, path.with_suffix(".ipynb")


def _nan(value):
    """JSON's None (a NaN when saved) back to NaN, recursively."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


def _check_verdicts(saved: dict, verdicts: dict[str, bool], glued: dict[str, str]) -> None:
    assert set(saved) == set(verdicts), "the chapter reports a different set of claims than it defines"
    for key, holds in verdicts.items():
        assert saved[key]["holds"] is holds, f"{key}: saved {saved[key]['holds']}, measured {holds}"
        assert glued[f"v_{key}"] == VERDICT_TEXT[holds], f"{key}: the prose says {glued[f'v_{key}']!r}"


def _glued(ipynb: Path) -> dict[str, str]:
    """The values the notebook glued into its prose: name -> the plain text shown."""
    if not ipynb.is_file():
        pytest.fail(f"{ipynb} is missing: run `make book` first")
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    glued = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            scrap = out.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                name, prefix = scrap["name"], scrap.get("mime_prefix", "")
                text = "".join(out["data"][f"{prefix}text/plain"])
                glued[name] = text[1:-1] if text[:1] in "'\"" else text
    return glued


def _finite(values, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    assert np.isfinite(a).all(), f"{what}: not all finite"
    return a


# ---------------------------------------------------------------- the losses chapter


@pytest.fixture(scope="module")
def losses_run():
    record, ipynb = _load("perturbation_losses")
    return record, _glued(ipynb)


def _least(values) -> np.ndarray:
    """The least perturbations of the images that reached the target (null: not reached)."""
    return np.array([v for v in values if v is not None], dtype=float)


def _recompute_losses(record: dict) -> tuple[dict[str, bool], dict]:
    """The chapter's verdicts, recomputed from the raw per-image numbers."""
    p, m = record["parameters"], record["results"]["measured"]
    iters = {s: {n: float(np.mean(m[s][n]["iterations"])) for n in LOSSES} for s in (EM, EP)}
    least = {s: {n: float(np.median(_least(m[s][n]["least_l2"]))) if _least(m[s][n]["least_l2"]).size else math.nan
                 for n in LOSSES} for s in (EM, EP)}
    first = {s: {n: float(np.median(m[s][n]["first_step_l2"])) for n in LOSSES} for s in (EM, EP)}
    grad = {s: {w: float(np.median(m[s]["CE"]["grad_norm"][w])) for w in ("start", "end")} for s in (EM, EP)}

    def share(s, n):
        z = m[s][n]["target_logit"]
        start, mid, end = (float(np.mean(z[k])) for k in ("start", "window_start", "end"))
        return (end - mid) / (end - start)

    shares = {s: {n: share(s, n) for n in LOSSES} for s in (EM, EP)}

    def others(table, name):
        return [v for k, v in table.items() if k != name]

    verdicts = {
        "ce_fewest_iterations": iters[EP]["CE"] < min(others(iters[EP], "CE")),
        "ce_sign_most_iterations": iters[EP]["CE-sign"] > max(others(iters[EP], "CE-sign")),
        "m_logit_slower_than_logit": iters[EP]["M-logit"] > iters[EP]["logit"],
        "m_logit_less_perturbation_than_logit": least[EP]["M-logit"] < least[EP]["logit"],
        "ce_least_perturbation": least[EP]["CE"] < min(others(least[EP], "CE")),
        "ce_sign_largest_step": first[EM]["CE-sign"] > max(others(first[EM], "CE-sign")),
        "ce_gradient_decreases": grad[EM]["end"] < grad[EM]["start"],
    }
    for s, short in ((EM, "equal_multiplier"), (EP, "equal_perturbation")):
        verdicts[f"ce_saturates_{short}"] = shares[s]["CE"] < p["saturation_share"]
        verdicts[f"ce_sign_saturates_{short}"] = shares[s]["CE-sign"] < p["saturation_share"]
        verdicts[f"logit_keeps_increasing_{short}"] = shares[s]["logit"] >= p["saturation_share"]
    numbers = {"iterations": iters, "least_l2": least, "first_step": first, "grad": grad, "shares": shares}
    return {k: bool(v) for k, v in verdicts.items()}, numbers


def test_losses_numbers_are_sane(losses_run):
    record, _ = losses_run
    p, res = record["parameters"], record["results"]
    n, T = p["n_images"], p["max_iter"]
    assert record["notebook"] == "perturbation_losses"
    assert len(res["images"]["target"]) == n and len(res["images"]["label"]) == n
    assert len(set(res["images"]["test_index"])) == n
    assert all(t != y for t, y in zip(res["images"]["target"], res["images"]["label"]))
    settings = res["settings"]
    assert settings["alpha"] == p["alpha"] > 0 and settings["step_l2"] > 0 and settings["max_iter"] == T
    if p["step_l2"] == 0:
        assert settings["step_l2"] == pytest.approx(p["alpha"] * math.sqrt(settings["n_pixels"]))
    for s in (EM, EP):
        assert set(res["measured"][s]) == set(LOSSES)
        for name in LOSSES:
            m = res["measured"][s][name]
            it = np.asarray(m["iterations"])
            if s == EP:
                # No clipped step adds more than step_l2 of distance (the box is convex and holds x).
                reached_it = it[np.asarray(m["reached"], dtype=bool)]
                least = _least(m["least_l2"])
                assert (least <= reached_it * settings["step_l2"] * (1 + 1e-5)).all(), f"{s}/{name}: least L2"
            reached = np.asarray(m["reached"], dtype=bool)
            assert it.shape == reached.shape == (n,)
            assert ((it >= 1) & (it <= T)).all(), f"{s}/{name}: iterations outside [1, max_iter]"
            # An image that never reached its target ran all max_iter iterations.
            assert (it[~reached] == T).all(), f"{s}/{name}: an unreached image stopped early"
            for norm in ("least_l2", "least_linf"):
                assert len(m[norm]) == n
                assert [v is not None for v in m[norm]] == reached.tolist(), f"{s}/{name}: {norm} vs reached"
                assert (_finite(_least(m[norm]), norm) > 0).all()
            assert (_finite(m["first_step_l2"], "first_step_l2") >= 0).all() and len(m["first_step_l2"]) == n
            for k in ("start", "window_start", "end"):
                assert len(_finite(m["target_logit"][k], f"{s}/{name} target logit {k}")) == n
            for k in ("start", "end"):
                assert (_finite(m["grad_norm"][k], f"{s}/{name} grad norm {k}") >= 0).all()
            assert m["time_s"] > 0
            for key, curve in res["curves"][s][name].items():
                for stat, values in curve.items():
                    assert len(_finite(values, f"{s}/{name} {key} {stat}")) == T + 1
            assert res["derived"]["mean_iterations"][s][name] == pytest.approx(float(np.mean(it)))
    assert res["derived"]["window_start"] == round((1 - p["saturation_window"]) * T)
    # The trajectories' mean target logit is the mean of the per-image values saved.
    for s in (EM, EP):
        for name in LOSSES:
            curve = res["curves"][s][name]["logit_label"]["mean"]
            z = res["measured"][s][name]["target_logit"]
            assert curve[0] == pytest.approx(np.mean(z["start"]), rel=1e-4, abs=1e-4)
            assert curve[T] == pytest.approx(np.mean(z["end"]), rel=1e-4, abs=1e-4)


def test_losses_saved_and_glued_verdicts_are_the_measured_ones(losses_run):
    record, glued = losses_run
    verdicts, _ = _recompute_losses(record)
    _check_verdicts(record["results"]["claims"], verdicts, glued)


def test_losses_reported_numbers_are_the_measured_ones(losses_run):
    record, _ = losses_run
    _, num = _recompute_losses(record)
    claims = record["results"]["claims"]
    for name in LOSSES:
        assert f"{name} {num['iterations'][EP][name]:.1f}" in claims["ce_fewest_iterations"]["measured"]
        assert f"{name} {num['least_l2'][EP][name]:.3f}" in claims["ce_least_perturbation"]["measured"]
        assert f"{name} {num['first_step'][EM][name]:.3f}" in claims["ce_sign_largest_step"]["measured"]
    assert f"{num['grad'][EM]['start']:.3g} at the start" in claims["ce_gradient_decreases"]["measured"]
    assert f"{num['shares'][EP]['CE']:.1%} of the gain" in claims["ce_saturates_equal_perturbation"]["measured"]


def test_equal_perturbation_ce_fewest_and_ce_sign_most_iterations(losses_run):
    record, _ = losses_run
    _, num = _recompute_losses(record)
    it, claims = num["iterations"][EP], record["results"]["claims"]
    if claims["ce_fewest_iterations"]["holds"]:
        assert all(it["CE"] < it[n] for n in LOSSES if n != "CE"), it
    if claims["ce_sign_most_iterations"]["holds"]:
        assert all(it["CE-sign"] > it[n] for n in LOSSES if n != "CE-sign"), it


def test_ce_gradient_decreases_along_the_optimisation(losses_run):
    record, _ = losses_run
    _, num = _recompute_losses(record)
    if record["results"]["claims"]["ce_gradient_decreases"]["holds"]:
        assert num["grad"][EM]["end"] < num["grad"][EM]["start"], num["grad"][EM]


def test_ce_and_ce_sign_saturate_while_logit_keeps_increasing(losses_run):
    record, _ = losses_run
    _, num = _recompute_losses(record)
    threshold, claims = record["parameters"]["saturation_share"], record["results"]["claims"]
    for s, short in ((EM, "equal_multiplier"), (EP, "equal_perturbation")):
        shares = num["shares"][s]
        # The share is of a gain: the target logit rose over the run for every loss.
        for name in LOSSES:
            z = record["results"]["measured"][s][name]["target_logit"]
            assert np.mean(z["end"]) > np.mean(z["start"]), f"{s}/{name}: the target logit did not rise"
        if claims[f"ce_saturates_{short}"]["holds"]:
            assert shares["CE"] < threshold
        if claims[f"ce_sign_saturates_{short}"]["holds"]:
            assert shares["CE-sign"] < threshold
        if claims[f"logit_keeps_increasing_{short}"]["holds"]:
            assert shares["logit"] >= threshold


# ---------------------------------------------------------------- the retraining chapter


@pytest.fixture(scope="module")
def retraining_run():
    record, ipynb = _load("adversarial_retraining")
    return record, _glued(ipynb)


def _strictly_increasing(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def _recompute_retraining(record: dict) -> tuple[dict[str, bool], dict]:
    res = record["results"]
    archs = record["parameters"]["detector_archs"]
    t2, t3 = res["table_2"], res["table_3"]
    mean_2 = {n: float(np.mean([t2[a][n]["overall"] for a in archs])) for n in LOSSES}
    mean_3 = {n: float(np.mean([t3[a][n] for a in archs])) for n in LOSSES}
    capacity_2 = [float(np.mean([t2[a][n]["overall"] for n in LOSSES])) for a in archs]
    capacity_3 = [t3[a]["overall"] for a in archs]
    verdicts = {
        "ce_sign_easiest_single": mean_2["CE-sign"] > max(v for k, v in mean_2.items() if k != "CE-sign"),
        "ce_sign_easiest_all": mean_3["CE-sign"] > max(v for k, v in mean_3.items() if k != "CE-sign"),
        "ce_m_logit_hardest_all": set(sorted(mean_3, key=mean_3.get)[:2]) == {"CE", "M-logit"},
        "capacity_single": _strictly_increasing(capacity_2),
        "capacity_all": _strictly_increasing(capacity_3),
    }
    numbers = {"mean_2": mean_2, "mean_3": mean_3, "capacity_2": capacity_2, "capacity_3": capacity_3}
    return {k: bool(v) for k, v in verdicts.items()}, numbers


def test_retraining_numbers_are_sane(retraining_run):
    record, _ = retraining_run
    p, res = record["parameters"], record["results"]
    assert record["notebook"] == "adversarial_retraining"
    archs = p["detector_archs"]
    assert res["detector_archs"] == archs
    assert len(archs) >= 2 and set(res["table_2"]) == set(res["table_3"]) == set(archs)
    kept = res["kept"]
    assert 0 < kept["train"] <= p["n_train_images"] and 0 < kept["test"] <= p["n_test_images"]
    sizes = res["set_sizes"]
    for split in ("train", "test"):
        k = kept[split]
        for name in LOSSES:
            assert sizes[split]["single"][name] == {"genuine": k, name: k}, (split, name)
        # Table III's sets: as many genuine images as adversarial ones.
        assert sizes[split]["mixed"] == {"genuine": 4 * k, **{name: k for name in LOSSES}}, split
    for a in archs:
        for name in LOSSES:
            acc = res["table_2"][a][name]
            assert set(acc) == {"genuine", name, "overall"}
            assert all(0 <= v <= 1 for v in _finite(list(acc.values()), f"table 2 {a} {name}"))
            # Balanced test set: the overall accuracy is the mean of the two halves.
            assert acc["overall"] == pytest.approx((acc["genuine"] + acc[name]) / 2)
        t3 = res["table_3"][a]
        assert set(t3) == {"genuine", "adversarial", "overall", *LOSSES}
        assert all(0 <= v <= 1 for v in _finite(list(t3.values()), f"table 3 {a}"))
        assert t3["adversarial"] == pytest.approx(np.mean([t3[n] for n in LOSSES]))
        assert t3["overall"] == pytest.approx((t3["genuine"] + t3["adversarial"]) / 2)


def test_retraining_saved_and_glued_verdicts_are_the_measured_ones(retraining_run):
    record, glued = retraining_run
    verdicts, num = _recompute_retraining(record)
    saved = record["results"]["claims"]
    _check_verdicts(saved, verdicts, glued)
    for name in LOSSES:
        assert f"{name} {num['mean_2'][name]:.1%}" in saved["ce_sign_easiest_single"]["measured"]
        assert f"{name} {num['mean_3'][name]:.1%}" in saved["ce_sign_easiest_all"]["measured"]


def test_ce_sign_adversarials_are_the_easiest_to_detect(retraining_run):
    record, _ = retraining_run
    _, num = _recompute_retraining(record)
    claims = record["results"]["claims"]
    for key, table in (("ce_sign_easiest_single", num["mean_2"]), ("ce_sign_easiest_all", num["mean_3"])):
        if claims[key]["holds"]:
            assert all(table["CE-sign"] > table[n] for n in LOSSES if n != "CE-sign"), (key, table)


def test_detection_improves_with_capacity(retraining_run):
    record, _ = retraining_run
    _, num = _recompute_retraining(record)
    claims = record["results"]["claims"]
    if claims["capacity_single"]["holds"]:
        assert _strictly_increasing(num["capacity_2"]), num["capacity_2"]
    if claims["capacity_all"]["holds"]:
        assert _strictly_increasing(num["capacity_3"]), num["capacity_3"]


# ---------------------------------------------------------------- the 2-D theory chapter

SUBSPACES = ("S1", "S2", "S3")


@pytest.fixture(scope="module")
def theory_run():
    record, ipynb = _load("perturbation_theory")
    return record, _glued(ipynb)


def _recompute_theory(record: dict) -> dict[str, bool]:
    """The chapter's verdicts, recomputed from the saved summaries and path outcomes."""
    res = _nan(record["results"])
    ce = {s: res["gradient_magnitude"]["CE"][s]["q50"] for s in SUBSPACES}
    c, paths = res["claims"], res["paths"]["summary"]
    return {
        "ce_vanishes_in_s3": bool(ce["S3"] < min(ce["S1"], ce["S2"])),
        "logit_gradient_everywhere": bool(res["extremes"]["logit_min"] > 0),
        "ce_larger_than_logit_in_s1": bool(c["ce_larger_than_logit_in_s1"]["median_ratio"] > 1),
        "theorem_within_bound": bool(res["approximation"]["largest_excess"] <= c["theorem_within_bound"]["tolerance"]),
        "ce_stalls_short_of_logit": bool(paths["CE"]["final_logit_gap_median"] < paths["logit"]["final_logit_gap_median"]),
        "ce_sign_vanishes_in_s3": bool(c["ce_sign_vanishes_in_s3"]["zero_share_s3"] >= 0.5),
    }


def test_theory_numbers_are_sane(theory_run):
    record, _ = theory_run
    p, res = record["parameters"], _nan(record["results"])
    assert record["notebook"] == "perturbation_theory"
    assert sum(res["subspace_share"].values()) == pytest.approx(1.0)
    for name in ("CE", "CE-sign", "logit"):
        summary = res["gradient_magnitude"][name]
        assert sum(summary[s]["n"] for s in SUBSPACES) == p["grid"] ** 2
        path = np.asarray(res["paths"]["iterates"][name])
        assert path.shape == (p["path_steps"] + 1, p["n_paths"], 2)
        assert res["paths"]["summary"][name]["retrace_error"] <= 1e-6
    # The claims' numbers are the saved summaries'.
    c = res["claims"]
    for s in SUBSPACES:
        assert c["ce_vanishes_in_s3"][f"median_{s.lower()}"] == res["gradient_magnitude"]["CE"][s]["q50"]
    assert c["logit_gradient_everywhere"]["smallest"] == res["extremes"]["logit_min"]
    assert c["theorem_within_bound"]["largest_excess"] == res["approximation"]["largest_excess"]
    # The S3 share of zero sign steps can be read off the saved map where the map is the whole grid.
    if len(res["maps"]["axis"]) == p["grid"]:
        where = np.asarray(res["maps"]["subspace"])
        sign = np.asarray(res["maps"]["magnitude"]["CE-sign"], dtype=float)
        assert (sign[where == 3] == 0).mean() == pytest.approx(c["ce_sign_vanishes_in_s3"]["zero_share_s3"])


def test_theory_saved_and_glued_verdicts_are_the_measured_ones(theory_run):
    record, glued = theory_run
    _check_verdicts(record["results"]["claims"], _recompute_theory(record), glued)


def test_theorem_iv2_error_within_its_proven_bound(theory_run):
    """Not a claim that may fail to replicate: the bound 2 (1 - sigma_d) is proven, so a build
    where the float64 error exceeds it has a bug."""
    record, _ = theory_run
    ap = _nan(record["results"]["approximation"])
    assert ap["largest_excess"] <= 1e-12, ap["largest_excess"]
    assert ap["decomposition_error"] < 1e-10, ap["decomposition_error"]
    assert (np.asarray(ap["scatter"]["scaled"]) <= np.asarray(ap["scatter"]["bound"]) + 1e-12).all()
