"""The peers chapter's statements, recomputed from the numbers the book build saved
(book/executed/peers.json): every verdict the page glues follows from the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advlib.experiments import peers as chapter

RESULTS = Path(__file__).resolve().parents[1] / "book" / "executed" / "peers.json"


@pytest.fixture(scope="module")
def results() -> dict:
    if not RESULTS.is_file():
        pytest.fail(f"{RESULTS} is missing: run `make book` first")
    return json.loads(RESULTS.read_text(encoding="utf-8"))["results"]["results"]


@pytest.mark.claims
def test_every_network_and_attack_ran_in_advlib(results):
    assert set(results["rows"]) == set(chapter.ROWS)
    for row, entry in results["rows"].items():
        assert set(entry["attacks"]) == set(chapter.peers.SETTINGS), row
        for attack, libs in entry["attacks"].items():
            assert libs["advlib"]["ran"], f"{row} / {attack}"
            assert libs["advlib"]["outside_box"] == 0 and libs["advlib"]["non_finite"] == 0


@pytest.mark.claims
def test_deepfool_fools_every_image(results):
    for row, entry in results["rows"].items():
        for attack in ("deepfool_l2", "deepfool_linf"):
            assert entry["attacks"][attack]["advlib"]["success_rate"] == 1.0, f"{row} / {attack}"


@pytest.mark.claims
def test_the_saved_verdicts_follow_from_the_rows(results):
    again = chapter.claims(results)
    for name, claim in again.items():
        assert results["claims"][name]["holds"] == claim["holds"], name
        assert results["claims"][name]["cases"] == claim["cases"], name
    ratios = chapter.ratios(results)
    assert ratios.keys() == results["ratios"].keys()
    for key, r in ratios.items():
        assert r["speed"] == pytest.approx(results["ratios"][key]["speed"]), key


@pytest.mark.claims
def test_deepfool_is_no_larger_than_foolbox(results):
    claim = results["claims"]["deepfool_no_larger_than_foolbox"]
    assert claim["holds"], claim["cases"]


@pytest.mark.claims
def test_deepfool_default_is_algorithm_2_on_99_percent(results):
    for row, entry in results["rows"].items():
        for attack in ("deepfool_l2", "deepfool_linf"):
            share = entry["attacks"][attack]["advlib"]["same_as_algorithm_2"]
            assert share >= 0.99, f"{row} / {attack}: {share:.3f} of the images as refresh=None"


@pytest.mark.claims
def test_the_work_ratios_follow_from_the_counted_passes(results):
    for key, r in results["ratios"].items():
        row, attack = key.split(" / ")
        libs = results["rows"][row]["attacks"][attack]
        assert r["work"] == pytest.approx(chapter.work(libs["advlib"], libs[r["fastest_peer"]]), rel=1e-12), key
        for lib in libs.values():
            if lib["ran"]:
                assert lib["forward_per_image"] >= 1 and lib["backward_per_image"] >= 0, key
    for key, t in results["targets"].items():
        assert t["work"] == pytest.approx(results["ratios"][key]["work"], rel=1e-12) or t["against"] != results["ratios"][key]["fastest_peer"], key
