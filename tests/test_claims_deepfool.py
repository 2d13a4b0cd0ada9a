"""The DeepFool paper's claims (Tables 1 and 2), checked on what the book build measured.

notebooks/deepfool_tables.md saves every row's numbers in book/executed/deepfool_tables.json.
The claims are the paper's orderings, not its values (our networks are small, trained for a few
epochs, often on stand-in data): on every row that ran, DeepFool's perturbations are at most half
of fast gradient sign's and no larger than L-BFGS's (5% slack), found on every image, in fewer
than 3 iterations on average without the box (the paper's setting; more with it, which the book
says); fast gradient sign fools the 90% its protocol asks for; and in the
L-inf norm (Table 2) DeepFool is smaller too. A failure here is a finding to explain in the
book, not a threshold to move.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

STEM = "deepfool_tables"
RESULTS = Path(__file__).resolve().parents[1] / "book" / "executed" / f"{STEM}.json"
# The paper's data set of each row, as advlib.data names it.
PAPER_DATA = {
    "LeNet (MNIST)": ("MNIST", "mnist"),
    "FC500-150-10 (MNIST)": ("MNIST", "mnist"),
    "NIN (CIFAR-10)": ("CIFAR-10", "cifar10"),
    "LeNet (CIFAR-10)": ("CIFAR-10", "cifar10"),
    "CaffeNet (ILSVRC2012)": ("ILSVRC2012", None),
    "GoogLeNet (ILSVRC2012)": ("ILSVRC2012", None),
}


@pytest.fixture(scope="module")
def record() -> dict:
    if not RESULTS.is_file():
        pytest.fail(
            f"{RESULTS} is missing: these claims are checked on the numbers the book build saves. "
            f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {STEM}`) first."
        )
    return json.loads(RESULTS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rows(record) -> dict[str, dict]:
    """The rows that ran, by classifier."""
    return {label: row for label, row in record["results"]["rows"].items() if row["ran"]}


def _check(rows: dict[str, dict], holds, describe) -> None:
    """Every row must satisfy ``holds(row)``; the failure lists each row that does not, with its numbers."""
    bad = [f"{label} ({row['data_label']}): {describe(row)}" for label, row in rows.items() if not holds(row)]
    assert not bad, "\n".join(bad)


@pytest.mark.claims
def test_every_row_ran_or_says_why(record, rows):
    saved = record["results"]["rows"]
    assert set(saved) == set(PAPER_DATA), f"rows saved: {sorted(saved)}"
    for label in ("LeNet (MNIST)", "FC500-150-10 (MNIST)", "NIN (CIFAR-10)", "LeNet (CIFAR-10)"):
        assert label in rows, f"{label} did not run: {saved[label].get('reason')}"
    for label, row in saved.items():
        if not row["ran"]:
            assert row["reason"].startswith("not run: needs "), row
    params = record["parameters"]
    for label, row in rows.items():
        assert row["n_images"] >= 1 and math.isfinite(row["test_error"]), (label, row)
        if params["n_images"] and label in PAPER_DATA and PAPER_DATA[label][1]:
            assert row["n_images"] == params["n_images"], (label, row["n_images"])


@pytest.mark.claims
def test_every_row_names_its_data_and_whether_it_stands_in(record, rows):
    recorded = {d["role"]: d for d in record["datasets"]}
    for label, row in rows.items():
        paper_name, paper_key = PAPER_DATA[label]
        assert row["dataset"], label
        if paper_key is not None:
            expected = None if row["dataset"] == paper_key else paper_name
            assert row["stands_in_for"] == expected, (label, row["dataset"], row["stands_in_for"])
            test = recorded[f"{label}: test"]
            assert test["name"] == row["dataset"] and test["stands_in_for"] == row["stands_in_for"], test
            assert recorded[f"{label}: train"]["stands_in_for"] == row["stands_in_for"]
        if row["stands_in_for"]:
            assert f"stand-in for {row['stands_in_for']}" in row["data_label"], row["data_label"]
        else:
            assert "stand-in" not in row["data_label"], row["data_label"]


@pytest.mark.claims
def test_deepfool_at_most_half_of_fast_gradient_sign(rows):
    _check(
        rows,
        lambda r: r["deepfool"]["rho"] <= r["fgsm"]["rho"] / 2,
        lambda r: f"DeepFool rho_adv {r['deepfool']['rho']:.3e} > fast gradient sign's {r['fgsm']['rho']:.3e} / 2",
    )


@pytest.mark.claims
def test_deepfool_no_larger_than_lbfgs_or_the_book_says_so(record, rows):
    """The paper: DeepFool's perturbations are slightly smaller than L-BFGS's.
    On this build's models and box they are 8-15% larger (a real difference,
    investigated: our L-BFGS-B handles the box exactly and searches ten values
    of c; without the box DeepFool is 0.78-1.06x L-BFGS's, but those
    perturbations mostly stop fooling once clipped). So the claim is checked
    as the guide asks: the verdict is recomputed from the raw numbers, and the
    book must state that verdict; where the claim holds, the inequality holds."""
    if record["parameters"]["n_images_lbfgs"]:
        missing = [label for label, row in rows.items() if PAPER_DATA[label][1] and "lbfgs" not in row]
        assert not missing, f"no L-BFGS results for {missing}"
    # Compared on the images L-BFGS fooled, where both have a perturbation.
    ratios = {
        label: row["lbfgs"]["deepfool_rho_same_images"] / row["lbfgs"]["rho"]
        for label, row in rows.items() if "lbfgs" in row
    }
    holds = all(v <= 1.05 for v in ratios.values())
    claim = record["results"]["lbfgs_claim"]
    assert claim["replicated"] == holds, (claim, ratios)
    assert claim["ratios"] == pytest.approx(ratios, rel=1e-12)
    if holds:
        assert claim["verdict"].startswith("holds here"), claim
    else:
        larger = sum(v > 1.05 for v in ratios.values())
        assert claim["verdict"].startswith(f"does not hold here: on {larger} of the {len(ratios)} rows"), claim


@pytest.mark.claims
def test_deepfool_converges_in_few_iterations(rows):
    """The paper: fewer than 3 iterations, in its setting, without the box."""
    _check(
        rows,
        lambda r: r["deepfool_nobox"]["mean_iterations"] < 3 and r["deepfool_nobox"]["success_rate"] == 1.0,
        lambda r: f"DeepFool without the box: mean iterations {r['deepfool_nobox']['mean_iterations']:.2f} "
        f"(max {r['deepfool_nobox']['max_iterations']}), fooling {100 * r['deepfool_nobox']['success_rate']:.1f}%",
    )


@pytest.mark.claims
def test_the_box_is_what_costs_the_extra_iterations(rows):
    """The book says so: inside the box DeepFool takes more iterations than without it."""
    _check(
        rows,
        lambda r: r["deepfool"]["mean_iterations"] > r["deepfool_nobox"]["mean_iterations"],
        lambda r: f"mean iterations {r['deepfool']['mean_iterations']:.2f} with the box, "
        f"{r['deepfool_nobox']['mean_iterations']:.2f} without",
    )


@pytest.mark.claims
def test_the_default_box_steps_fool_at_least_what_the_plain_ones_do(rows):
    """The book's comparison of the box handling: advlib's steps never fool fewer images
    than the plain clipped steps, and where the two return the same points they are one."""
    _check(
        rows,
        lambda r: r["deepfool"]["success_rate"] >= r["deepfool_plain"]["success_rate"]
        and (r["deepfool_plain"]["images_differing"] > 0 or r["deepfool_plain"]["rho"] == r["deepfool"]["rho"]),
        lambda r: f"fooled {100 * r['deepfool']['success_rate']:.1f}% (plain steps "
        f"{100 * r['deepfool_plain']['success_rate']:.1f}%), {r['deepfool_plain']['images_differing']} images differ",
    )


@pytest.mark.claims
def test_deepfool_fools_every_image(rows):
    _check(
        rows,
        lambda r: r["deepfool"]["success_rate"] == 1.0,
        lambda r: f"DeepFool fooled {100 * r['deepfool']['success_rate']:.2f}% of {r['n_images']} images",
    )


@pytest.mark.claims
def test_fast_gradient_sign_fools_its_protocols_fraction(record, rows):
    fraction = record["parameters"]["fgsm_fraction"]
    _check(
        rows,
        lambda r: r["fgsm"]["fooled_rate"] >= fraction and r["fgsm"]["eps"] > 0,
        lambda r: f"fast gradient sign fooled {100 * r['fgsm']['fooled_rate']:.1f}% at eps {r['fgsm']['eps']:.4g}, "
        f"the protocol asks for {100 * fraction:.0f}%",
    )


@pytest.mark.claims
def test_table2_deepfool_smaller_in_linf(rows):
    _check(
        rows,
        lambda r: r["table2"]["deepfool_inf_success_rate"] == 1.0
        and r["table2"]["deepfool_rho_inf"] < r["table2"]["fgsm_rho_inf"],
        lambda r: f"DeepFool (p = inf) rho_inf {r['table2']['deepfool_rho_inf']:.4f} fooling "
        f"{100 * r['table2']['deepfool_inf_success_rate']:.1f}%, fast gradient sign's {r['table2']['fgsm_rho_inf']:.4f}",
    )


@pytest.mark.claims
def test_tables_show_the_saved_numbers(record, rows):
    """The book's Table 1 and 2 print the numbers the claims were checked on."""
    t1, t2 = record["results"]["table1"], record["results"]["table2"]
    index1 = [tuple(i) for i in t1["index"]]
    columns1 = [tuple(c) for c in t1["columns"]]
    index2 = [tuple(i) for i in t2["index"]]
    for label, row in rows.items():
        shown = dict(zip(columns1, t1["data"][index1.index((label, "this build"))]))
        assert float(shown[("DeepFool", "ρ_adv")]) == pytest.approx(row["deepfool"]["rho"], rel=0.06)
        assert float(shown[("fast gradient sign", "ρ_adv")]) == pytest.approx(row["fgsm"]["rho"], rel=0.06)
        assert row["data_label"] in shown[("", "data, model")]
        shown2 = dict(zip(t2["columns"], t2["data"][index2.index((label, "this build"))])) if (
            (label, "this build") in index2
        ) else None
        if shown2 is not None:
            assert float(shown2["DeepFool ρ_adv^∞"]) == pytest.approx(row["table2"]["deepfool_rho_inf"], abs=6e-4)
