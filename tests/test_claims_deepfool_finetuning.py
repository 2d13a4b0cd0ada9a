"""The DeepFool paper's fine-tuning claims (Sec. 4.3: Figures 6, 7 and 9, Table 3), checked on
what the book build measured.

notebooks/deepfool_finetuning.md saves what ``advlib.experiments.deepfool_finetuning.run``
returned under ``results.results`` of book/executed/deepfool_finetuning.json. The paper's
networks were trained on MNIST and CIFAR-10 and fine-tuned on every training image; this build's
are small, on stand-in data, fine-tuned on a subset, and a claim may not replicate. So, as for
the other chapters, these tests do not demand that a claim holds. For every claim they

1. check that the raw numbers are sane (finite, positive, as many epochs as the protocol says);
2. recompute the verdict from the raw per-epoch numbers, by the definition the chapter states,
   and require the verdict the chapter saved, and glued into its prose, to be that one;
3. where the claim replicated, check the inequality itself on the raw numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.claims

STEM = "deepfool_finetuning"
EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed"
RUNS = ("deepfool", "fgsm", "clean")
VERDICT_TEXT = {True: "replicates", False: "does not replicate"}


@pytest.fixture(scope="module")
def results() -> dict:
    path = EXECUTED / f"{STEM}.json"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these claims are checked on the numbers the book build saves. "
            f"Run `make book` (or `.venv/bin/python scripts/build_book.py run {STEM}`) first."
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in record.get("results", {}):
        pytest.fail(f"{path}: no results.results (the dict the chapter's run returned); rebuild the chapter")
    return record["results"]["results"]


@pytest.fixture(scope="module")
def glued() -> dict[str, str]:
    ipynb = EXECUTED / f"{STEM}.ipynb"
    if not ipynb.is_file():
        pytest.fail(f"{ipynb} is missing: run `make book` first")
    out = {}
    for cell in json.loads(ipynb.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                text = "".join(output["data"][f"{scrap.get('mime_prefix', '')}text/plain"])
                out[scrap["name"]] = text[1:-1] if text[:1] in "'\"" else text
    return out


def _verdict(results, glued, key: str, holds: bool) -> None:
    saved = results["claims"][key]
    assert saved["holds"] is holds, f"{key}: the chapter saved holds={saved['holds']}, its numbers say {holds}"
    assert glued[f"v_{key}"] == VERDICT_TEXT[holds], f"{key}: the prose says {glued[f'v_{key}']!r}"


def test_the_numbers_are_sane(results):
    epochs = results["protocol"]["epochs"]
    assert set(results["rows"]) == {"LeNet (MNIST)", "FC500-150-10 (MNIST)", "NIN (CIFAR-10)", "LeNet (CIFAR-10)"}
    for label, row in results["rows"].items():
        assert set(row["runs"]) == set(RUNS), label
        firsts = {row["runs"][a]["rho_deepfool"][0] for a in RUNS}
        assert len(firsts) == 1, f"{label}: epoch 0 differs between runs: {firsts}"
        for attack, curve in row["runs"].items():
            rho = curve["rho_deepfool"]
            assert curve["epochs"] == list(range(epochs + 1)), (label, attack)
            assert all(math.isfinite(v) and v > 0 for v in rho), (label, attack, rho)
            # DeepFool flips (nearly) every test image, so its rho_adv is an estimate, not a bound.
            assert min(curve["deepfool_success"]) >= 0.95, (label, attack, curve["deepfool_success"])
            assert 0 <= curve["test_error"] <= 1
    assert set(results["claims"]) == {"deepfool_first_epoch", "deepfool_beats_fgsm", "fgsm_higher_error",
                                      "alpha_lowers_robustness", "fgsm_exaggerates"}


def test_deepfool_fine_tuning_raises_robustness_after_one_epoch(results, glued):
    rho = {label: r["runs"]["deepfool"]["rho_deepfool"] for label, r in results["rows"].items()}
    holds = all(v[1] > v[0] for v in rho.values())
    _verdict(results, glued, "deepfool_first_epoch", holds)
    if holds:
        assert all(v[1] / v[0] > 1 for v in rho.values())


def test_deepfool_fine_tuning_ends_more_robust_than_fgsm_fine_tuning(results, glued):
    last = {label: (r["runs"]["deepfool"]["rho_deepfool"][-1], r["runs"]["fgsm"]["rho_deepfool"][-1])
            for label, r in results["rows"].items()}
    holds = all(df > fg for df, fg in last.values())
    _verdict(results, glued, "deepfool_beats_fgsm", holds)
    if not holds:
        # Not replicated: the prose must state the numbers it rests on.
        assert glued["m_deepfool_beats_fgsm"] == results["claims"]["deepfool_beats_fgsm"]["measured"]


def test_fgsm_fine_tuning_leaves_a_higher_test_error(results, glued):
    errors = {label: (r["runs"]["fgsm"]["test_error"], r["runs"]["deepfool"]["test_error"])
              for label, r in results["rows"].items()}
    for label, (fg, df) in errors.items():
        assert results["table3"][label]["fgsm"] == fg and results["table3"][label]["deepfool"] == df
    _verdict(results, glued, "fgsm_higher_error", all(fg > df for fg, df in errors.values()))


def test_magnified_perturbations_lower_robustness(results, glued):
    f7 = results["figure7"]
    runs = f7["runs"]
    assert set(runs) == {"1", "2", "3"}
    # alpha = 1 is the same fine-tuning as the row's DeepFool run.
    assert runs["1"]["rho_deepfool"] == results["rows"][f7["row"]]["runs"]["deepfool"]["rho_deepfool"]
    sizes = [runs[a]["perturbed_set"]["rho_train"] for a in ("1", "2", "3")]
    assert sizes[0] < sizes[1] < sizes[2], sizes
    _verdict(results, glued, "alpha_lowers_robustness", runs["3"]["rho_deepfool"][-1] < runs["1"]["rho_deepfool"][-1])


def test_fgsm_measures_a_larger_relative_gain_than_deepfool(results, glued):
    f9 = results["figure9"]
    run = f9["run"]
    by_df = run["rho_deepfool"][-1] / run["rho_deepfool"][0]
    # None: no eps misclassifies 90% of the test images; fast gradient sign then reports no finite robustness.
    by_fg = None if run["rho_fgsm"][-1] is None else run["rho_fgsm"][-1] / run["rho_fgsm"][0]
    assert f9["relative_deepfool"][-1] == pytest.approx(by_df)
    assert (f9["relative_fgsm"][-1] is None) == (by_fg is None)
    _verdict(results, glued, "fgsm_exaggerates", by_fg is None or by_fg > by_df)


def test_fgsm_perturbations_are_the_larger(results):
    """The paper's explanation of Figure 6 and Table 3, measured on the perturbed training sets."""
    for label, r in results["rows"].items():
        df, fg = (r["runs"][a]["perturbed_set"]["rho_train"] for a in ("deepfool", "fgsm"))
        assert fg > df, f"{label}: fast gradient sign's {fg:.3g} is not larger than DeepFool's {df:.3g}"
