"""advlib.experiments.peers on a tiny network: the structure of the table, and
success and sizes recomputed from the returned points, whatever the library."""

from __future__ import annotations

import math

import pytest
import torch

from advlib import attacks, data, peers, train
from advlib.experiments import peers as chapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = train.TrainConfig("fc500-150-10", "digits", epochs=2, lr=0.05)
    return train.trained(config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def result(tiny):
    return chapter.run(
        dataset="digits", n_images=8, repeats=2, attack_names=("deepfool_l2", "fgsm", "jsma", "cw_l2"),
        libraries=("advlib", "Foolbox 3", "torchattacks"), rows=("LeNet (MNIST)",),
        models={"LeNet (MNIST)": tiny},
    )


def test_every_library_and_attack_has_a_row(result):
    row = result["rows"]["LeNet (MNIST)"]
    assert row["n_images"] == 8
    assert set(row["attacks"]) == {"deepfool_l2", "fgsm", "jsma", "cw_l2"}
    for attack, libs in row["attacks"].items():
        assert set(libs) == {"advlib", "Foolbox 3", "torchattacks"}
    assert not row["attacks"]["jsma"]["Foolbox 3"]["ran"]  # Foolbox has no JSMA
    assert "no JSMA" in row["attacks"]["jsma"]["Foolbox 3"]["reason"]


def test_ran_rows_carry_times_success_and_sizes(result):
    for libs in result["rows"]["LeNet (MNIST)"]["attacks"].values():
        for r in libs.values():
            if r["ran"]:
                assert r["seconds"] > 0 and math.isclose(r["images_per_s"], r["n_images"] / r["seconds"])
                assert 0 <= r["success_rate"] <= 1 and 1 <= r["runs"] <= 2 and 1 <= r["n_images"] <= 8
                assert r["outside_box"] == 0 and r["non_finite"] == 0


def test_judge_recomputes_success_and_sizes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    y = torch.tensor([0, 0])
    x_adv = torch.tensor([[0.4, 0.6], [0.6, 0.4]])  # the first crosses, the second does not
    out = chapter.judge(model, x, y, x_adv, "deepfool_l2")
    assert out["success_rate"] == 0.5
    assert math.isclose(out["median_size"], math.sqrt(0.08), rel_tol=1e-6)
    out = chapter.judge(model, x, y, torch.tensor([[0.4, 1.6], [0.6, 0.4]]), "deepfool_l2")
    assert out["success_rate"] == 0 and out["outside_box"] == 1  # outside the box is no success
    out = chapter.judge(model, x, y, x_adv, "jsma", target=torch.tensor([1, 1]))
    assert out["success_rate"] == 0.5 and out["median_size"] == 1.0  # both features changed


def test_ratios_and_claims_follow_from_the_numbers(result):
    for key, r in result["ratios"].items():
        row, attack = key.split(" / ")
        libs = result["rows"][row]["attacks"][attack]
        assert math.isclose(r["speed"], libs["advlib"]["images_per_s"] / libs[r["fastest_peer"]]["images_per_s"])
    c = result["claims"]["success_at_least_the_best_peer"]
    assert c["holds"] == all(v["advlib"] >= v["best_peer"] - 0.01 for v in c["cases"].values())


def test_targets_are_read_on_the_named_peer_or_the_fastest():
    def lib(speed, passes=10.0):
        return {"ran": True, "images_per_s": speed, "forward_per_image": passes / 2, "backward_per_image": passes / 2,
                "sizes": [1.0], "success_rate": 1.0}

    out = {"rows": {"net": {"attacks": {
        "deepfool_l2": {"advlib": lib(90.0), "Foolbox 3": lib(10.0, passes=80.0), "ART": lib(1.0)},
        "cw_l2": {"advlib": lib(5.0), "Foolbox 3": lib(1.0), "torchattacks": lib(2.0)},
        "jsma": {"advlib": lib(5.0), "ART": {"ran": False, "reason": "not installed"}},
        "fgsm": {"advlib": lib(5.0), "ART": lib(50.0)},
    }}}}
    got = chapter.targets(out)
    assert set(got) == {"net / deepfool_l2", "net / cw_l2"}  # no target for FGSM; no peer ran JSMA
    assert got["net / deepfool_l2"] == {"against": "Foolbox 3", "target": 10.0, "ratio": 9.0, "met": False, "work": 8.0}
    assert got["net / cw_l2"] == {"against": "torchattacks", "target": 3.0, "ratio": 2.5, "met": False, "work": 1.0}
    assert chapter.ratio_table({"ratios": chapter.ratios(out), "targets": got}).loc["net / deepfool_l2", "speed target"] == (
        "≥ 10× Foolbox 3: not met; above its work ratio 8.00")


def test_cw_rows_say_what_abort_early_and_warm_start_change(result):
    libs = result["rows"]["LeNet (MNIST)"]["attacks"]["cw_l2"]
    variants, s = libs["advlib"]["variants"], peers.SETTINGS["cw_l2"]
    assert set(variants) == set(chapter.CW_VARIANTS)
    slow = variants["without abort_early"]
    # Every image takes every Adam step of every run, one forward and one backward pass each, and the
    # attack looks at the batch once before (its labels) and once after (the judge).
    assert slow["backward_per_image"] == s["search_steps"] * s["max_iter"]
    assert slow["forward_per_image"] == slow["backward_per_image"] + 2
    assert libs["advlib"]["backward_per_image"] <= slow["backward_per_image"]
    assert variants["with warm_start"]["backward_per_image"] <= slow["backward_per_image"]
    assert "variants" not in libs["Foolbox 3"]
    r = result["ratios"]["LeNet (MNIST) / cw_l2"]
    for name, v in variants.items():
        assert math.isclose(r["variants"][name]["work"], chapter.work(v, libs[r["fastest_peer"]]))
        assert r["variants"][name]["success"] == v["success_rate"]
        assert name in chapter.ratio_table(result).loc["LeNet (MNIST) / cw_l2", "advlib median size / its"]
        assert name in chapter.table(result).loc[("LeNet (MNIST)", "C&W L2", "advlib"), "note"]


def test_counted_counts_the_rows_of_every_pass_and_changes_nothing():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    counted = peers.Counted(model)
    x = torch.rand(5, 1, 2, 2, requires_grad=True)
    out = counted(x)
    assert torch.equal(out, model(x))
    for seed in torch.eye(3)[:2]:  # two backward passes through one forward pass
        torch.autograd.grad(out, x, grad_outputs=seed.expand(5, 3), retain_graph=True)
    counted(x[:2]).sum().backward()  # a loss of the output: one more pass, of 2 rows
    with torch.no_grad():
        counted(x[:3])  # no graph: forward only
    assert (counted.forward_rows, counted.backward_rows) == (5 + 2 + 3, 5 + 5 + 2)
    counted.reset()
    assert (counted.forward_rows, counted.backward_rows) == (0, 0)
    assert list(counted.parameters()) == list(model.parameters())
    model.eval()
    assert not peers.Counted(model).training  # in the model's mode: restoring the wrapper's keeps the model's


def test_the_work_ratio_is_the_peers_passes_over_advlibs(result):
    for key, r in result["ratios"].items():
        row, attack = key.split(" / ")
        libs = result["rows"][row]["attacks"][attack]
        mine, theirs = libs["advlib"], libs[r["fastest_peer"]]
        assert mine["forward_per_image"] >= 1  # every attack here looks at its images at least once
        assert math.isclose(r["work"], (theirs["forward_per_image"] + theirs["backward_per_image"])
                            / (mine["forward_per_image"] + mine["backward_per_image"]))
    # Foolbox's DeepFool: a forward and a backward pass per candidate (9 here), at every step, for the
    # whole batch; its last step takes one, which says the batch is done; two forward passes more,
    # the labels before and the judge after.
    fb = result["rows"]["LeNet (MNIST)"]["attacks"]["deepfool_l2"]["Foolbox 3"]
    assert fb["forward_per_image"] % 9 == 3 and fb["backward_per_image"] == fb["forward_per_image"] - 2


def test_a_missing_library_is_a_row_not_a_crash(tiny, monkeypatch):
    real = peers._import

    def fake(module, library):
        if library == "torchattacks":
            raise peers.NotInstalled("torchattacks is not installed here (test)")
        return real(module, library)

    monkeypatch.setattr(peers, "_import", fake)
    out = chapter.run(dataset="digits", n_images=4, repeats=1, attack_names=("fgsm",), libraries=("advlib", "torchattacks"),
                      rows=("LeNet (MNIST)",), models={"LeNet (MNIST)": tiny})
    assert out["rows"]["LeNet (MNIST)"]["attacks"]["fgsm"]["torchattacks"] == {"ran": False, "reason": "torchattacks is not installed here (test)"}


def test_bad_options_are_refused(tiny):
    with pytest.raises(ValueError, match="attack_names"):
        chapter.run(attack_names=("nope",), models={"LeNet (MNIST)": tiny})
    with pytest.raises(ValueError, match="advlib"):
        chapter.run(libraries=("Foolbox 3",), models={"LeNet (MNIST)": tiny})
    assert chapter.datasets({"dataset": "digits"}) == {"digits"}


def test_sizes_are_compared_on_the_images_both_fooled():
    mine, theirs = chapter._common_medians([1.0, None, 3.0, 5.0], [2.0, 2.0, None])
    assert (mine, theirs) == (1.0, 2.0)
    assert chapter._common_medians([None], [1.0]) == (None, None)


def test_deepfool_rows_say_how_often_the_default_is_algorithm_2(result):
    libs = result["rows"]["LeNet (MNIST)"]["attacks"]["deepfool_l2"]
    share = libs["advlib"]["same_as_algorithm_2"]
    assert 0 <= share <= 1 and "same_as_algorithm_2" not in libs["Foolbox 3"]
    assert "same_as_algorithm_2" not in result["rows"]["LeNet (MNIST)"]["attacks"]["fgsm"]["advlib"]
    c = result["claims"]["deepfool_default_is_algorithm_2"]
    assert c["cases"] == {"LeNet (MNIST) / deepfool_l2": share} and c["holds"] == (share >= 0.99)


def test_same_as_algorithm_2_compares_with_refresh_none(tiny):
    model, _ = tiny
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    full = attacks.deepfool(model, x, label=y, refresh=None, clip=peers.BOX, **peers.SETTINGS["deepfool_l2"]).x_adv
    assert chapter.same_as_algorithm_2(model, x, y, full, "deepfool_l2") == 1.0
    moved = full.clone()
    moved[0] = x[0]
    assert chapter.same_as_algorithm_2(model, x, y, moved, "deepfool_l2") == pytest.approx(5 / 6)


def test_the_page_tables_texts_and_figure_come_from_the_results(result):
    import matplotlib.pyplot as plt

    from advlib.figures import peers as figures

    table = chapter.table(result)
    assert len(table) == 4 * 3  # attacks x libraries, every one a row, ran or not
    assert table.loc[("LeNet (MNIST)", "JSMA", "Foolbox 3"), "note"] == result["rows"]["LeNet (MNIST)"][
        "attacks"]["jsma"]["Foolbox 3"]["reason"]
    ratios = chapter.ratio_table(result)
    assert list(ratios.index) == list(result["ratios"])
    for key, r in result["ratios"].items():
        assert ratios.loc[key, "advlib speed / its"] == f"{r['speed']:.2f}"
    texts = chapter.texts(result)
    speeds = [r["speed"] for r in result["ratios"].values()]
    assert texts["peers_speed_range"] == f"{min(speeds):.1f} to {max(speeds):.1f}"
    fig = figures.speed(result)
    ran = sum(r["ran"] for libs in result["rows"]["LeNet (MNIST)"]["attacks"].values() for r in libs.values())
    assert len(fig.axes[0].patches) >= ran  # one bar per implementation that ran (NaN bars for the others)
    plt.close(fig)
    with pytest.raises(ValueError, match="no network 'no such network'.*LeNet"):
        figures.speed(result, row="no such network")


def test_judge_says_which_returned_images_are_blank():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.full((3, 4), 0.5)
    x_adv = torch.stack([torch.zeros(4), torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.full((4,), 0.7)])
    out = chapter.judge(model, x, torch.zeros(3, dtype=torch.long), x_adv, "cw_l2")
    assert out["blank"] == 2 and out["blank_at"] == [0, 2]


def _cw_case(peer_blank_at):
    """advlib misses image 1 of 4; Foolbox 3 fools all four, blank where said."""
    def lib(sizes, blank_at):
        hits = [s is not None for s in sizes]
        return {"ran": True, "success_rate": sum(hits) / len(hits), "sizes": sizes, "blank_at": blank_at}

    return {"rows": {"net": {"attacks": {"cw_l2": {
        "advlib": lib([0.5, None, 0.4, 0.6], []),
        "Foolbox 3": lib([0.6, 9.0, 0.5, 0.7], peer_blank_at),
    }}}}}


def test_a_success_below_the_peer_says_whether_only_its_blank_images_explain_it():
    claim = chapter.claims(_cw_case([1]))["success_at_least_the_best_peer"]
    assert not claim["holds"] and claim["below_only_by_blank_images"] == ["net / cw_l2"]
    case = claim["cases"]["net / cw_l2"]
    assert case["peer"] == "Foolbox 3" and case["advlib_misses"] == [1] and case["peer_blank_there"] == [1]
    words = chapter._success_verdict(claim)
    assert "net / cw_l2: 75% against Foolbox 3's 100%" in words and "blank image" in words

    claim = chapter.claims(_cw_case([3]))["success_at_least_the_best_peer"]  # the blank is elsewhere
    assert not claim["holds"] and claim["below_only_by_blank_images"] == []
    assert chapter._success_verdict(claim) == "below the best peer's on net / cw_l2 (see the table)"
