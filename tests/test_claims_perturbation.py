"""Ozbulak et al.'s claims, checked on what the book build measured.

The two chapters (notebooks/perturbation_losses.md, notebooks/adversarial_retraining.md) save
their raw numbers and their verdict on each claim in book/executed/<stem>.json. The paper
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
    path = EXECUTED / f"{stem}.json"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these claims are checked on the numbers the book build saves. "
            f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {stem}`) first."
        )
    return json.loads(path.read_text(encoding="utf-8")), path.with_suffix(".ipynb")


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
    assert all(t != y for t, y in zip(res["images"]["target"], res["images"]["label"]))
    settings = res["settings"]
    assert settings["alpha"] == p["alpha"] > 0 and settings["step_l2"] > 0
    if p["step_l2"] == 0:
        assert settings["step_l2"] == pytest.approx(p["alpha"] * math.sqrt(settings["n_pixels"]))
    for s in (EM, EP):
        assert set(res["measured"][s]) == set(LOSSES)
        for name in LOSSES:
            m = res["measured"][s][name]
            it = np.asarray(m["iterations"])
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
    saved = record["results"]["claims"]
    assert set(saved) == set(verdicts), "the chapter reports a different set of claims than it defines"
    for key, replicated in verdicts.items():
        assert saved[key]["replicated"] is replicated, f"{key}: saved {saved[key]['replicated']}, measured {replicated}"
        assert glued[f"v_{key}"] == VERDICT_TEXT[replicated], f"{key}: the prose says {glued[f'v_{key}']!r}"


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
    if claims["ce_fewest_iterations"]["replicated"]:
        assert all(it["CE"] < it[n] for n in LOSSES if n != "CE"), it
    if claims["ce_sign_most_iterations"]["replicated"]:
        assert all(it["CE-sign"] > it[n] for n in LOSSES if n != "CE-sign"), it


def test_ce_gradient_decreases_along_the_optimisation(losses_run):
    record, _ = losses_run
    _, num = _recompute_losses(record)
    if record["results"]["claims"]["ce_gradient_decreases"]["replicated"]:
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
        if claims[f"ce_saturates_{short}"]["replicated"]:
            assert shares["CE"] < threshold
        if claims[f"ce_sign_saturates_{short}"]["replicated"]:
            assert shares["CE-sign"] < threshold
        if claims[f"logit_keeps_increasing_{short}"]["replicated"]:
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
    assert set(saved) == set(verdicts), "the chapter reports a different set of claims than it defines"
    for key, replicated in verdicts.items():
        assert saved[key]["replicated"] is replicated, f"{key}: saved {saved[key]['replicated']}, measured {replicated}"
        assert glued[f"v_{key}"] == VERDICT_TEXT[replicated], f"{key}: the prose says {glued[f'v_{key}']!r}"
    for name in LOSSES:
        assert f"{name} {num['mean_2'][name]:.1%}" in saved["ce_sign_easiest_single"]["measured"]
        assert f"{name} {num['mean_3'][name]:.1%}" in saved["ce_sign_easiest_all"]["measured"]


def test_ce_sign_adversarials_are_the_easiest_to_detect(retraining_run):
    record, _ = retraining_run
    _, num = _recompute_retraining(record)
    claims = record["results"]["claims"]
    for key, table in (("ce_sign_easiest_single", num["mean_2"]), ("ce_sign_easiest_all", num["mean_3"])):
        if claims[key]["replicated"]:
            assert all(table["CE-sign"] > table[n] for n in LOSSES if n != "CE-sign"), (key, table)


def test_detection_improves_with_capacity(retraining_run):
    record, _ = retraining_run
    _, num = _recompute_retraining(record)
    claims = record["results"]["claims"]
    if claims["capacity_single"]["replicated"]:
        assert _strictly_increasing(num["capacity_2"]), num["capacity_2"]
    if claims["capacity_all"]["replicated"]:
        assert _strictly_increasing(num["capacity_3"]), num["capacity_3"]
