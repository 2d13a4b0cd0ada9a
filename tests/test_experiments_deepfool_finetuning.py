"""advlib.experiments.deepfool_finetuning on tiny sizes: the FC500-150-10 row on the 8x8
digits, two extra epochs, a temporary training cache. What must hold whatever the data: the
shape of the results, epoch 0 being the original network in every run, the cache handing the
same numbers back, the measurements re-done from the attacks' returned points, the claims'
verdicts following from their numbers, and bad arguments refused by name."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from advlib import data, metrics, train
from advlib.attacks import deepfool, fgsm
from advlib.experiments import deepfool_finetuning as ft
from advlib.experiments import table1

FC = "FC500-150-10 (MNIST)"
TINY = dict(mnist_rows_dataset="digits", rows=(FC,), network_overrides={FC: {"epochs": 3}}, n_train=150, n_test=30,
            n_test_error=200, epochs=2, figure7_row=FC, figure8_referee=None, figure9_row=FC)
DEEPFOOL = dict(p=2, overshoot=0.02, max_iter=50, candidates=10, clip=(0.0, 1.0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("advlib-cache")
        mp.setenv("ADVLIB_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def results(cache):
    return ft.run(**TINY)


@pytest.fixture(scope="module")
def network(cache):
    model, _ = table1.network(FC, "digits", epochs=3)
    return model


def test_results_have_every_run_per_epoch_and_are_json(results):
    json.dumps(results, allow_nan=False)
    row = results["rows"][FC]
    assert set(row["runs"]) == set(ft.RUNS)
    for curve in row["runs"].values():
        assert curve["epochs"] == [0, 1, 2]
        assert len(curve["rho_deepfool"]) == len(curve["deepfool_success"]) == 3
        assert all(r > 0 for r in curve["rho_deepfool"])
        assert 0 <= curve["test_error"] <= 1
    assert row["n_train"] == 150 and row["n_test_rho"] == 30 and row["n_test_error"] == 200
    assert set(results["figure7"]["runs"]) == {"1", "2", "3"}
    assert "figure8" not in results


def test_epoch_0_is_the_original_network_in_every_run(results, network):
    runs = results["rows"][FC]["runs"]
    first = {a: c["rho_deepfool"][0] for a, c in runs.items()}
    assert len(set(first.values())) == 1, first
    x = data.load("digits", "test", limit=30).x
    res = deepfool(network, x, **DEEPFOOL)
    assert first["deepfool"] == pytest.approx(metrics.rho_adv(x, res.perturbation), rel=1e-5)
    assert results["table3"][FC]["original"] == pytest.approx(ft.test_error(network, data.load("digits", "test", limit=200)))


def test_fine_tuning_changes_the_network_and_the_runs_differ(results):
    runs = results["rows"][FC]["runs"]
    finals = {a: c["rho_deepfool"][-1] for a, c in runs.items()}
    assert len(set(finals.values())) == 3, finals
    assert all(c["rho_deepfool"][-1] != c["rho_deepfool"][0] for c in runs.values())


def test_the_perturbed_sets_are_what_they_say(results):
    runs = results["rows"][FC]["runs"]
    assert runs["clean"]["perturbed_set"]["rho_train"] == 0
    assert runs["deepfool"]["perturbed_set"]["attack_success"] == pytest.approx(1.0, abs=0.02)
    fg = runs["fgsm"]["perturbed_set"]
    # The protocol's eps misclassifies at least 90% of the training images.
    assert fg["attack_success"] >= 0.9 and fg["misclassified_share"] >= 0.9 and fg["fgsm_eps"] > 0
    sizes = [r["perturbed_set"]["rho_train"] for r in results["figure7"]["runs"].values()]
    assert sizes[0] < sizes[1] < sizes[2]  # alpha = 1, 2, 3: larger, even clipped


def test_alpha_1_is_the_deepfool_run_from_the_cache(results):
    assert results["figure7"]["runs"]["1"]["key"] == results["rows"][FC]["runs"]["deepfool"]["key"]
    assert results["figure7"]["runs"]["1"]["from_cache"]
    keys = {r["key"] for r in results["figure7"]["runs"].values()}
    assert len(keys) == 3


def test_a_second_run_trains_nothing_and_gives_the_same_numbers(results):
    again = ft.run(**TINY)
    for attack, curve in again["rows"][FC]["runs"].items():
        assert curve["from_cache"]
        assert curve["rho_deepfool"] == results["rows"][FC]["runs"][attack]["rho_deepfool"]
    assert again["figure9"] == {**results["figure9"], "run": {**results["figure9"]["run"], "from_cache": True}}
    assert again["claims"] == results["claims"]


def test_a_changed_recipe_trains_anew(results):
    other = ft.run(**{**TINY, "lr_factor": 0.25, "figure7_row": None, "figure9_row": None})
    for attack, curve in other["rows"][FC]["runs"].items():
        assert not curve["from_cache"]
        assert curve["key"] != results["rows"][FC]["runs"][attack]["key"]


def test_figure9_measures_both_ways_relative_to_the_original(results):
    f9 = results["figure9"]
    run = f9["run"]
    assert run["attack"] == "fgsm" and run["lr_factor"] == 0.1
    assert f9["relative_deepfool"][0] == f9["relative_fgsm"][0] == 1.0
    for rel, rho in zip(f9["relative_deepfool"], run["rho_deepfool"]):
        assert rel == pytest.approx(rho / run["rho_deepfool"][0])
    for rel, rho in zip(f9["relative_fgsm"], run["rho_fgsm"]):
        assert (rel is None) == (rho is None)


def test_claims_follow_from_their_numbers(results):
    claims = results["claims"]
    assert set(claims) == {"deepfool_first_epoch", "deepfool_beats_fgsm", "fgsm_higher_error",
                           "alpha_lowers_robustness", "fgsm_exaggerates"}
    assert ft.claims(json.loads(json.dumps(results))) == claims
    runs = results["rows"][FC]["runs"]
    rho = runs["deepfool"]["rho_deepfool"]
    assert claims["deepfool_first_epoch"]["holds"] is (rho[1] > rho[0])
    assert claims["deepfool_beats_fgsm"]["holds"] is (rho[-1] > runs["fgsm"]["rho_deepfool"][-1])
    t3 = results["table3"][FC]
    assert claims["fgsm_higher_error"]["holds"] is (t3["fgsm"] > t3["deepfool"])
    f7 = results["figure7"]["runs"]
    assert claims["alpha_lowers_robustness"]["holds"] is (f7["3"]["rho_deepfool"][-1] < f7["1"]["rho_deepfool"][-1])


def test_a_claim_verdict_flips_with_its_numbers(results):
    changed = copy.deepcopy(results)
    t3 = changed["table3"][FC]
    t3["fgsm"], t3["deepfool"] = 0.1, 0.2
    assert not ft.claims(changed)["fgsm_higher_error"]["holds"]
    t3["fgsm"], t3["deepfool"] = 0.2, 0.1
    assert ft.claims(changed)["fgsm_higher_error"]["holds"]
    f9 = changed["figure9"]
    f9["relative_fgsm"][-1] = None  # no eps at the end: fast gradient sign calls it unbreakable
    assert ft.claims(changed)["fgsm_exaggerates"]["holds"]


def test_texts_and_frames_render(results):
    from advlib import published

    paper = published.load("deepfool_finetuning")
    texts = ft.texts(results)
    assert all(isinstance(v, str) and v for v in texts.values())
    assert texts["v_fgsm_higher_error"] in ("replicates", "does not replicate")
    assert list(ft.table3_frame(results, paper).columns) == ["original", "DeepFool", "fast gradient sign", "clean"]
    assert len(ft.figure6_frame(results, paper)) == 1
    assert len(ft.networks_frame(results)) == 1


def test_rho_deepfool_is_recomputed_from_the_returned_points(network):
    x = data.load("digits", "test", limit=25).x
    out = ft.rho_deepfool(network, x, deepfool_options=DEEPFOOL, batch=10)
    res = deepfool(network, x, **DEEPFOOL)
    flipped = train.predict(network, res.x_adv) != train.predict(network, x)
    assert out["deepfool_success"] == pytest.approx(flipped.double().mean().item())
    assert out["rho_deepfool"] == pytest.approx(metrics.rho_adv(x, res.x_adv - x), rel=1e-5)


def test_rho_fgsm_reaches_the_fraction_on_the_returned_points(network):
    x = data.load("digits", "test", limit=40).x
    out = ft.rho_fgsm(network, x, fraction=0.9, batch=16)
    res = fgsm(network, x, eps=out["fgsm_eps"])
    assert (train.predict(network, res.x_adv) != train.predict(network, x)).double().mean().item() >= 0.9
    assert out["rho_fgsm"] == pytest.approx(metrics.rho_adv(x, res.x_adv - x), rel=1e-5)


def test_rho_fgsm_is_none_when_no_eps_reaches_the_fraction():
    # Logits that do not depend on the input: no step of any size changes a label.
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))
    x = data.load("digits", "test", limit=10).x
    assert ft.rho_fgsm(constant, x, fraction=0.9) == {"rho_fgsm": None, "fgsm_eps": None}


def test_scaled_stays_in_the_box():
    x = torch.rand(4, 1, 5, 5)
    r = torch.randn(4, 1, 5, 5)
    out = ft.scaled(x, r, 3.0)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(ft.scaled(x, torch.zeros_like(x), 3.0), x)


def test_figure8_examples_are_class_changes_the_referee_sees(cache):
    train_set = data.load("digits", "train", limit=120)
    model, _ = train.trained(train.TrainConfig("fc500-150-10", "digits", epochs=3, lr=0.05, seed=0), progress=False)
    referee, _ = train.trained(train.TrainConfig("fc500-150-10", "digits", epochs=3, lr=0.05, seed=1), progress=False)
    out = ft._class_changes(model, referee, train_set, deepfool_options=DEEPFOOL, alphas=(1.0, 2.0, 3.0),
                            n_pool=120, n_show=4, batch=50)
    assert out["alpha"] == 3.0 and out["n_pool"] == 120
    for share in out["share"].values():
        assert 0 <= share["changed"] <= share["eligible"] <= 120
    assert len(out["examples"]) <= 4
    for ex in out["examples"]:
        assert ex["referee_reads"] != ex["true"]
        perturbed = torch.tensor(ex["perturbed"])
        assert perturbed.min() >= 0 and perturbed.max() <= 1
        if ex["referee_confidence"] > 0.9:  # far from the referee's boundary: the rounded image reads the same
            read = train.predict(referee, perturbed.reshape(1, 1, 8, 8))
            assert train_set.classes[int(read)] == ex["referee_reads"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": ("no such row",)}, "rows"),
        ({"rows": ()}, "rows"),
        ({"network_overrides": {"nope": {}}}, "network_overrides"),
        ({"alphas": (2.0, 3.0)}, "alphas"),
        ({"n_train": -1}, "n_train"),
        ({"epochs": 0}, "epochs"),
        ({"lr_factor": 0}, "lr_factor"),
        ({"figure7_row": "LeNet (MNIST)"}, "figure7_row"),
        ({"figure8_referee": FC}, "figure8_referee"),
        ({"fgsm_fraction": 1.5}, "fgsm_fraction"),
        ({"progress": 1}, "progress"),
    ],
)
def test_bad_arguments_are_refused_by_name(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ft.run(**{**TINY, **change})


def test_every_figure_draws_from_the_results(results):
    import matplotlib.pyplot as plt

    from advlib.figures import deepfool_finetuning as figures

    drawn = [figures.figure6(results), figures.figure7(results), figures.figure9(results)]
    assert [len(f.axes) for f in drawn] == [len(results["rows"]), 1, 1]
    # Figure 8 needs a second network to read the classes (none in the tiny run): drawn on its own record.
    example = {"image": [[0.0, 1.0], [1.0, 0.0]], "perturbed": [[0.5, 1.0], [1.0, 0.5]], "true": "a",
               "referee_reads": "b", "network_reads": "a"}
    drawn.append(figures.figure8({"figure8": {"examples": [example, example]}}))
    assert len(drawn[-1].axes) == 4
    for f in drawn:
        plt.close(f)


def test_record_data_names_every_row_and_split():
    named = {}

    class Run:
        def data(self, name, described, stands_in_for=None):
            named[name] = (described, stands_in_for)

    ft.record_data(Run(), {"rows": {"LeNet (MNIST)": {"datasets": {"train": {"n": 1}, "test": {"n": 2}},
                                                       "stands_in_for": "MNIST"}}})
    assert named == {"LeNet (MNIST): train": ({"n": 1}, "MNIST"), "LeNet (MNIST): test": ({"n": 2}, "MNIST")}
