"""The DeepFool paper's claims, checked on what the book build measured.

notebooks/deepfool_tables.md and deepfool_geometry.md save what
``advlib.experiments.<chapter>.run`` returned under ``results.results`` of
book/executed/<stem>.json, and the tables they showed under ``results.table1`` etc.

Tables 1 and 2: the claims are the paper's orderings, not its values (our networks are small,
trained for a few epochs, often on stand-in data): on every row that ran, DeepFool's
perturbations are at most half of fast gradient sign's and no larger than L-BFGS's (5% slack),
found on every image, in fewer than 3 iterations on average without the box (the paper's
setting; more with it, which the book says), faster than L-BFGS; fast gradient sign fools the 90%
its protocol asks for; and in the L-inf norm (Table 2) DeepFool is smaller too. Every verdict is
recomputed here from the raw per-row numbers and must be the one the chapter saved and glued
into its prose. The L-BFGS claim and the "fewer than 3 iterations" are checked as reported
findings (the book must state the verdict, whichever it is: both sit near their thresholds on
networks trained here); the others must hold. A failure here is a finding to explain in the
book, not a threshold to move.

The geometry chapter: one DeepFool step is the closed form on the affine classifiers (float64),
and on the two small networks of the plane DeepFool fools every test point in fewer than 3
iterations on average.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.claims

EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}
# The paper's data set of each row, as advlib.data names it.
PAPER_DATA = {
    "LeNet (MNIST)": ("MNIST", "mnist"),
    "FC500-150-10 (MNIST)": ("MNIST", "mnist"),
    "NIN (CIFAR-10)": ("CIFAR-10", "cifar10"),
    "LeNet (CIFAR-10)": ("CIFAR-10", "cifar10"),
    "CaffeNet (ILSVRC2012)": ("ILSVRC2012", None),
    "GoogLeNet (ILSVRC2012)": ("ILSVRC2012", None),
}
LBFGS_SLACK = 1.05


def _load(stem: str) -> tuple[dict, dict]:
    """The saved record (``results`` as saved: the run's dict under ``results``,
    the tables shown beside it) and the values glued into the prose."""
    path = EXECUTED / f"{stem}.json"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these claims are checked on the numbers the book build saves. "
            f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {stem}`) first."
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in record.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    return record, _glued(path.with_suffix(".ipynb"))


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
                prefix = scrap.get("mime_prefix", "")
                text = "".join(out["data"][f"{prefix}text/plain"])
                glued[scrap["name"]] = text[1:-1] if text[:1] in "'\"" else text
    return glued


def _nan(value):
    """JSON's None (a NaN when saved) back to NaN, recursively."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


# ---------------------------------------------------------------- Tables 1 and 2


@pytest.fixture(scope="module")
def tables():
    return _load("deepfool_tables")


@pytest.fixture(scope="module")
def record(tables) -> dict:
    return tables[0]


@pytest.fixture(scope="module")
def results(record) -> dict:
    return record["results"]["results"]


@pytest.fixture(scope="module")
def rows(results) -> dict[str, dict]:
    """The rows that ran, by classifier."""
    return {label: _nan(row) for label, row in results["rows"].items() if row["ran"]}


def _check(rows: dict[str, dict], holds, describe) -> None:
    """Every row must satisfy ``holds(row)``; the failure lists each row that does not, with its numbers."""
    bad = [f"{label} ({row['data_label']}): {describe(row)}" for label, row in rows.items() if not holds(row)]
    assert not bad, "\n".join(bad)


def _verdict(results: dict, glued: dict, key: str, holds: bool) -> None:
    """The chapter saved, and glued into its prose, the verdict its numbers give."""
    saved = results["claims"][key]
    assert saved["holds"] is holds, f"{key}: saved {saved['holds']}, recomputed from the rows {holds}"
    assert glued.get(f"v_{key}") == VERDICT_TEXT[holds], f"{key}: the prose says {glued.get(f'v_{key}')!r}"


def test_every_row_ran_or_says_why(record, results, rows):
    saved = results["rows"]
    assert set(saved) == set(PAPER_DATA), f"rows saved: {sorted(saved)}"
    for label in ("LeNet (MNIST)", "FC500-150-10 (MNIST)", "NIN (CIFAR-10)", "LeNet (CIFAR-10)"):
        assert label in rows, f"{label} did not run: {saved[label].get('reason')}"
    for label, row in saved.items():
        if not row["ran"]:
            assert row["reason"].startswith("not run: needs "), row
    params = record["parameters"]
    for label, row in rows.items():
        assert row["n_images"] >= 1 and math.isfinite(row["test_error"]), (label, row)
        if params["n_images"] and PAPER_DATA[label][1]:
            assert row["n_images"] == params["n_images"], (label, row["n_images"])


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


def test_deepfool_at_most_half_of_fast_gradient_sign(results, tables, rows):
    _verdict(results, tables[1], "deepfool_smaller_than_fgsm", all(r["deepfool"]["rho"] <= r["fgsm"]["rho"] / 2
                                                                   for r in rows.values()))
    _check(
        rows,
        lambda r: r["deepfool"]["rho"] <= r["fgsm"]["rho"] / 2,
        lambda r: f"DeepFool rho_adv {r['deepfool']['rho']:.3e} > fast gradient sign's {r['fgsm']['rho']:.3e} / 2",
    )


def test_deepfool_no_larger_than_lbfgs_or_the_book_says_so(record, results, tables, rows):
    """The paper: DeepFool's perturbations are slightly smaller than L-BFGS's.
    On earlier builds' models and box they were 8-15% larger (a real
    difference, investigated: our L-BFGS-B handles the box exactly and
    searches many values of c; without the box DeepFool was 0.78-1.06x
    L-BFGS's, but those perturbations mostly stop fooling once clipped). So
    the claim is checked as a reported finding: the verdict is recomputed from
    the raw numbers, and the book must state that verdict; where the claim
    holds, the inequality holds."""
    if record["parameters"]["n_images_lbfgs"]:
        missing = [label for label in rows if PAPER_DATA[label][1] and "lbfgs" not in rows[label]]
        assert not missing, f"no L-BFGS results for {missing}"
    # Compared on the images L-BFGS fooled, where both have a perturbation.
    ratios = {label: row["lbfgs"]["deepfool_rho_same_images"] / row["lbfgs"]["rho"]
              for label, row in rows.items() if "lbfgs" in row}
    holds = all(v <= LBFGS_SLACK for v in ratios.values())
    _verdict(results, tables[1], "deepfool_no_larger_than_lbfgs", holds)
    claim = results["claims"]["deepfool_no_larger_than_lbfgs"]
    assert _nan(claim["ratios"]) == pytest.approx(ratios, rel=1e-12, nan_ok=True)
    glued = tables[1]["vs_verdict"]
    assert glued == claim["verdict"], "the prose states another verdict than the one saved"
    if holds:
        assert glued.startswith("holds here"), glued
    else:
        larger = sum(not v <= LBFGS_SLACK for v in ratios.values())
        assert glued.startswith(f"does not hold here: on {larger} of the {len(ratios)} rows"), glued


def test_deepfool_is_faster_than_lbfgs(results, tables, rows):
    lb = {k: r for k, r in rows.items() if "lbfgs" in r}
    _verdict(results, tables[1], "deepfool_faster_than_lbfgs",
             all(r["lbfgs"]["time_per_image"] > r["deepfool"]["time_per_image"] for r in lb.values()))
    _check(
        lb,
        lambda r: r["lbfgs"]["time_per_image"] > r["deepfool"]["time_per_image"],
        lambda r: f"L-BFGS {r['lbfgs']['time_per_image']:.3g} s per image, "
        f"DeepFool {r['deepfool']['time_per_image']:.3g} s",
    )


def test_deepfool_converges_in_few_iterations(results, tables, rows):
    """The paper: fewer than 3 iterations on average, in its setting, without the
    box. Measured on every row and reported whichever way it goes: on networks
    trained here for minutes, on stand-in data, the mean sits near 3 (the
    CPU-sized NIN's is 3.00 on some builds), so the verdict the numbers give is
    what the page must state. That DeepFool fools every image without the box
    is no paper's number but the algorithm's: it must hold on every row."""
    def ok(r):
        return r["deepfool_nobox"]["mean_iterations"] < 3 and r["deepfool_nobox"]["success_rate"] == 1.0

    _verdict(results, tables[1], "few_iterations_without_box", all(ok(r) for r in rows.values()))
    saved = results["claims"]["few_iterations_without_box"]
    assert saved["mean_iterations"] == {k: r["deepfool_nobox"]["mean_iterations"] for k, r in rows.items()}
    means = [r["deepfool_nobox"]["mean_iterations"] for r in rows.values()]
    lo, hi = f"{min(means):.3f}", f"{max(means):.3f}"
    assert tables[1]["t1_iter_nobox"] == (lo if lo == hi else f"{lo} to {hi}"), tables[1]["t1_iter_nobox"]
    _check(
        rows, lambda r: r["deepfool_nobox"]["success_rate"] == 1.0,
        lambda r: f"DeepFool without the box: mean iterations {r['deepfool_nobox']['mean_iterations']:.2f} "
        f"(max {r['deepfool_nobox']['max_iterations']}), fooling {100 * r['deepfool_nobox']['success_rate']:.1f}%",
    )


def test_the_box_is_what_costs_the_extra_iterations(results, tables, rows):
    """The book says so: inside the box DeepFool takes more iterations than without it."""
    ok = lambda r: r["deepfool"]["mean_iterations"] > r["deepfool_nobox"]["mean_iterations"]  # noqa: E731
    _verdict(results, tables[1], "box_costs_iterations", all(ok(r) for r in rows.values()))
    _check(
        rows, ok,
        lambda r: f"mean iterations {r['deepfool']['mean_iterations']:.2f} with the box, "
        f"{r['deepfool_nobox']['mean_iterations']:.2f} without",
    )


def test_the_default_box_steps_fool_at_least_what_the_plain_ones_do(results, tables, rows):
    """The book's comparison of the box handling: advlib's steps never fool fewer images
    than the plain clipped steps, and where the two return the same points they are one."""
    def ok(r):
        return r["deepfool"]["success_rate"] >= r["deepfool_plain"]["success_rate"] and (
            r["deepfool_plain"]["images_differing"] > 0 or r["deepfool_plain"]["rho"] == r["deepfool"]["rho"])

    _verdict(results, tables[1], "default_steps_fool_at_least_plain", all(ok(r) for r in rows.values()))
    _check(
        rows, ok,
        lambda r: f"fooled {100 * r['deepfool']['success_rate']:.1f}% (plain steps "
        f"{100 * r['deepfool_plain']['success_rate']:.1f}%), {r['deepfool_plain']['images_differing']} images differ",
    )


def test_deepfool_fools_every_image(results, tables, rows):
    _verdict(results, tables[1], "deepfool_fools_every_image", all(r["deepfool"]["success_rate"] == 1.0
                                                                   for r in rows.values()))
    _check(
        rows,
        lambda r: r["deepfool"]["success_rate"] == 1.0,
        lambda r: f"DeepFool fooled {100 * r['deepfool']['success_rate']:.2f}% of {r['n_images']} images",
    )


def test_fast_gradient_sign_fools_its_protocols_fraction(record, results, tables, rows):
    fraction = record["parameters"]["fgsm_fraction"]
    ok = lambda r: r["fgsm"]["fooled_rate"] >= fraction and r["fgsm"]["eps"] > 0  # noqa: E731
    _verdict(results, tables[1], "fgsm_fools_its_fraction", all(ok(r) for r in rows.values()))
    _check(
        rows, ok,
        lambda r: f"fast gradient sign fooled {100 * r['fgsm']['fooled_rate']:.1f}% at eps {r['fgsm']['eps']:.4g}, "
        f"the protocol asks for {100 * fraction:.0f}%",
    )


def test_table2_deepfool_smaller_in_linf(results, tables, rows):
    def ok(r):
        return (r["table2"]["deepfool_inf_success_rate"] == 1.0
                and r["table2"]["deepfool_rho_inf"] < r["table2"]["fgsm_rho_inf"])

    _verdict(results, tables[1], "table2_deepfool_smaller_linf", all(ok(r) for r in rows.values()))
    _check(
        rows, ok,
        lambda r: f"DeepFool (p = inf) rho_inf {r['table2']['deepfool_rho_inf']:.4f} fooling "
        f"{100 * r['table2']['deepfool_inf_success_rate']:.1f}%, "
        f"fast gradient sign's {r['table2']['fgsm_rho_inf']:.4f}",
    )


def test_the_chapter_reports_every_claim_it_defines(results, tables):
    expected = {"deepfool_smaller_than_fgsm", "few_iterations_without_box", "box_costs_iterations",
                "default_steps_fool_at_least_plain", "deepfool_fools_every_image", "fgsm_fools_its_fraction",
                "table2_deepfool_smaller_linf", "deepfool_no_larger_than_lbfgs", "deepfool_faster_than_lbfgs"}
    assert set(results["claims"]) == expected
    holding = sum(c["holds"] for c in results["claims"].values())
    assert tables[1]["n_holding"] == f"{holding} of {len(expected)}"


def test_tables_show_the_saved_numbers(record, results, rows):
    """The book's Tables 1 and 2 print the numbers the claims were checked on, and its
    table of networks names each row's data."""
    t1, t2 = record["results"]["table1"], record["results"]["table2"]
    index1 = [tuple(i) for i in t1["index"]]
    columns1 = [tuple(c) for c in t1["columns"]]
    index2 = [tuple(i) for i in t2["index"]]
    for label, row in rows.items():
        shown = dict(zip(columns1, t1["data"][index1.index((label, "this build"))]))
        assert float(shown[("DeepFool", "ρ_adv")]) == pytest.approx(row["deepfool"]["rho"], rel=0.06)
        assert float(shown[("fast gradient sign", "ρ_adv")]) == pytest.approx(row["fgsm"]["rho"], rel=0.06)
        assert shown[("", "test error")] != "-"
        if (label, "this build") in index2:
            shown2 = dict(zip(t2["columns"], t2["data"][index2.index((label, "this build"))]))
            assert float(shown2["DeepFool ρ_adv^∞"]) == pytest.approx(row["table2"]["deepfool_rho_inf"], abs=6e-4)
    for label, row in results["rows"].items():
        if not row["ran"]:
            shown = dict(zip(columns1, t1["data"][index1.index((label, "this build"))]))
            assert shown[("", "test error")] == "not run", shown


# ---------------------------------------------------------------- the geometry chapter


@pytest.fixture(scope="module")
def geometry():
    record, glued = _load("deepfool_geometry")
    return _nan(record["results"]["results"]), glued


def test_geometry_affine_steps_are_the_closed_forms(geometry):
    r, glued = geometry
    ab, am = r["affine_binary"], r["affine_multiclass"]
    tol = r["claims"]["affine_binary_exact"]["tolerance"]
    assert tol <= 1e-12
    diff = math.dist(ab["perturbation"], ab["r_star"])
    assert diff == pytest.approx(ab["difference_norm"], abs=1e-15)
    _geometry_verdict(r, glued, "affine_binary_exact", diff <= tol)
    assert diff <= tol, f"one DeepFool step is {diff:.1e} from r* on the affine binary classifier"
    faces = {int(k): v for k, v in am["face_distances"].items()}
    closest = min(faces, key=faces.get)
    holds = am["difference_norm"] <= tol and am["landed_on"] == closest == am["closest"]
    _geometry_verdict(r, glued, "affine_multiclass_exact", holds)
    assert holds, am


def test_geometry_deepfool_fools_every_point_in_few_iterations(geometry):
    r, glued = geometry
    success = {n: r[n]["success_rate"] for n in ("circles", "rings")}
    _geometry_verdict(r, glued, "fools_every_point", all(v == 1.0 for v in success.values()))
    assert all(v == 1.0 for v in success.values()), success
    means = {}
    for n in ("circles", "rings"):
        counts = {int(k): v for k, v in r[n]["iteration_counts"].items()}
        assert sum(counts.values()) == r[n]["n_points"]
        means[n] = sum(k * v for k, v in counts.items()) / r[n]["n_points"]
        assert means[n] == pytest.approx(r[n]["mean_iterations"])
    below = r["claims"]["few_iterations"]["below"]
    assert below == 3, "the paper's 'less than 3'"
    _geometry_verdict(r, glued, "few_iterations", all(v < below for v in means.values()))
    assert all(v < below for v in means.values()), means


def test_geometry_first_step_is_the_projection(geometry):
    r, glued = geometry
    d = r["rings"]["drawn"]
    first = math.dist(d["path"][0], d["path"][1])
    err = abs(first / (1 + r["overshoot"]) - 1e-4 - d["nearest_face_distance"])
    assert err == pytest.approx(d["first_step_vs_projection"], abs=1e-7)
    tol = r["claims"]["first_step_is_projection"]["tolerance"]
    _geometry_verdict(r, glued, "first_step_is_projection", err <= tol)
    assert err <= tol, err


def _geometry_verdict(r: dict, glued: dict, key: str, holds: bool) -> None:
    assert r["claims"][key]["holds"] is holds, f"{key}: saved {r['claims'][key]['holds']}, recomputed {holds}"
    assert glued.get(f"v_{key}") == VERDICT_TEXT[holds], f"{key}: the prose says {glued.get(f'v_{key}')!r}"
