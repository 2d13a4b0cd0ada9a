"""advlib.experiments.blog_jsma_distillation.run on tiny sizes: digits 8x8,
a small MLP distilled at T = 1 and T = 20, one image per class."""

import math
import re
from pathlib import Path

import pytest
import torch

from advlib import data, metrics, published, train
from advlib.attacks import cw_l2, deepfool
from advlib.defences import distillation
from advlib.experiments import blog_jsma_distillation as chapter

ROOT = Path(__file__).resolve().parents[1]
CONFIG = train.TrainConfig("mlp", "digits", epochs=30, lr=0.01, optimizer="adam", seed=0)
TEMPERATURES = (1, 20)
CW = dict(cw_search_steps=3, cw_max_iter=50)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    networks = {t: distillation.distilled(CONFIG, t, cache_dir=cache, progress=False)[0] for t in TEMPERATURES}
    return networks, data.load("digits", "test")


@pytest.fixture(scope="module")
def results(setting):
    networks, test = setting
    return chapter.run(networks=networks, test=test, n_per_class=1, jsma_logits=True, **CW)


def _x(results, test):
    return test.x[torch.tensor(results["images"]["index"])]


def test_structure(results, setting):
    _, test = setting
    classes = len(test.classes)
    assert results["temperatures"] == [1.0, 20.0]
    assert [r["temperature"] for r in results["rows"]] == results["temperatures"]
    assert results["images"]["n"] == classes and sorted(results["images"]["label"]) == list(range(classes))
    assert results["attacks"]["n"] == classes * (classes - 1)
    assert all(t != test.y[results["images"]["index"][i]].item()
               for i, t in zip(results["attacks"]["image"], results["attacks"]["target"]))
    for per in results["per_attack"]:
        for attack in ("jsma", "jsma_logits"):
            assert all(len(per[attack][k]) == results["attacks"]["n"] for k in ("success", "l0", "label_adv"))
        for attack in ("deepfool", "cw"):
            assert len(per[attack]["success"]) == len(per[attack]["rel_l2"]) == results["images"]["n"]
    assert len(results["grid"]["cells"]) == classes * (classes - 1)


def test_images_are_correct_for_every_network(results, setting):
    networks, test = setting
    x, y = _x(results, test), torch.tensor(results["images"]["label"])
    assert torch.equal(y, test.y[torch.tensor(results["images"]["index"])])
    for model in networks.values():
        assert torch.equal(train.predict(model, x), y)


def test_jsma_rates_rest_on_the_per_attack_numbers(results):
    n_feat = results["n_features"]
    gamma = results["settings"]["gamma"]
    for row, per in zip(results["rows"], results["per_attack"]):
        for attack, rate, l0 in (("jsma", "jsma_success", "jsma_l0_mean"),
                                 ("jsma_logits", "jsma_logits_success", "jsma_logits_l0_mean")):
            success = torch.tensor(per[attack]["success"])
            changed = torch.tensor(per[attack]["l0"], dtype=torch.float64)
            assert row[rate] == pytest.approx(success.double().mean().item())
            if success.any():
                assert row[l0] == pytest.approx(changed[success].mean().item())
            # Pairs of features, at most gamma of them; a success changes at least one pair.
            assert (changed <= gamma + 1e-12).all() and (changed[success] >= 1 / n_feat).all()
            counts = (changed * n_feat).round()
            assert torch.allclose(counts, changed * n_feat, atol=1e-6)


def test_grid_adversarials_rejudged_on_the_returned_points(results, setting):
    networks, test = setting
    model = networks[1]
    x = torch.tensor(results["grid"]["x"])
    rows = torch.tensor([c["row"] for c in results["grid"]["cells"]])
    x_adv = x[rows].flatten(1).clone()
    for k, cell in enumerate(results["grid"]["cells"]):
        x_adv[k, cell["features"]] = torch.tensor(cell["values"])
    x_adv = x_adv.view(-1, *x.shape[1:])
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    labels = train.predict(model, x_adv)
    assert labels.tolist() == [c["label_adv"] for c in results["grid"]["cells"]]
    assert [bool(v) for v in labels == torch.tensor([c["target"] for c in results["grid"]["cells"]])] == \
        [c["success"] for c in results["grid"]["cells"]]
    # The grid is the T = 1 JSMA run of the first image of each class.
    first = results["per_attack"][0]["jsma"]
    image, target = results["attacks"]["image"], results["attacks"]["target"]
    for cell in results["grid"]["cells"]:
        k = next(k for k in range(len(image)) if results["images"]["label"][image[k]] == cell["row"]
                 and target[k] == cell["target"])
        assert first["success"][k] == cell["success"]
        assert first["l0"][k] == pytest.approx(len(cell["features"]) / results["n_features"])


def test_logit_attacks_rho_recomputed_and_rerun(results, setting):
    networks, test = setting
    x = _x(results, test)
    for (t, model), row, per in zip(networks.items(), results["rows"], results["per_attack"]):
        for attack, key in (("deepfool", "deepfool"), ("cw", "cw")):
            success = torch.tensor(per[attack]["success"])
            rel = torch.tensor(per[attack]["rel_l2"], dtype=torch.float64)
            assert row[f"{key}_success"] == pytest.approx(success.double().mean().item())
            assert row[f"{key}_rho"] == pytest.approx(rel[success].mean().item())
        # The attacks are deterministic: run again, the same verdicts and sizes.
        df = deepfool(model, x)
        assert df.success.tolist() == per["deepfool"]["success"]
        assert metrics.relative_norms(x, df.perturbation).tolist() == pytest.approx(per["deepfool"]["rel_l2"], rel=1e-5)
        cw = cw_l2(model, x, search_steps=CW["cw_search_steps"], max_iter=CW["cw_max_iter"])
        assert cw.success.tolist() == per["cw"]["success"]


def test_gradient_magnitude_is_the_log_of_the_mean(results, setting):
    networks, test = setting
    x = _x(results, test)
    for (t, model), row, per in zip(networks.items(), results["rows"], results["per_attack"]):
        per_image = torch.tensor(per["grad_log10_image"], dtype=torch.float64)
        assert row["grad_log10_mean"] == pytest.approx(math.log10((10 ** per_image).mean().item()), abs=1e-9)
        assert row["grad_log10_median"] == pytest.approx(per_image.median().item())
        lj = distillation.softmax_jacobian_log10(model, x)
        assert per_image[0].item() == pytest.approx(math.log10((10 ** lj[0]).mean().item()), abs=1e-9)
        assert 0 <= row["grad_zero_fraction_float32"] <= 1
    # A network trained at T = 20 has far flatter softmax gradients than at T = 1.
    assert results["rows"][1]["grad_log10_mean"] < results["rows"][0]["grad_log10_mean"] - 1


def test_accuracy_is_the_test_accuracy(results, setting):
    networks, test = setting
    for (t, model), row in zip(networks.items(), results["rows"]):
        assert row["accuracy"] == pytest.approx(train.accuracy(model, test.x, test.y))


def test_saliency_example(results, setting):
    networks, test = setting
    sal = results["saliency"]
    assert [a["temperature"] for a in sal["at"]] == [1.0, 20.0]
    for at in sal["at"]:
        alpha = torch.tensor(at["alpha"])
        s_map = torch.tensor(at["saliency"])
        assert alpha.shape == s_map.shape == torch.Size(results["image_shape"])
        assert (s_map >= 0).all() and ((s_map > 0) <= (alpha > 0)).all()
        assert len(at["first_pair"]) in (0, 2) and set(at["first_pair"]) <= set(at["changed"])
        # The first pair is the best of the saliency map's pairs: its single-feature scores are positive.
        assert all(alpha.flatten()[f] > 0 for f in at["first_pair"])
        assert at["alpha_zero_fraction"] == pytest.approx((alpha == 0).double().mean().item())


def test_claims_are_recomputed_from_their_numbers(results):
    rows, claims = results["rows"], results["claims"]
    success = [r["jsma_success"] for r in rows]
    holds = {
        "jsma_success_falls": all(b <= a for a, b in zip(success, success[1:])) and success[-1] < 0.1 * success[0],
        "gradients_vanish": rows[0]["grad_log10_mean"] - rows[-1]["grad_log10_mean"] >= 2,
        "accuracy_kept": max(rows[0]["accuracy"] - r["accuracy"] for r in rows) <= 0.05,
        "logit_attacks_succeed": min(min(r["deepfool_success"], r["cw_success"]) for r in rows) >= 0.95,
    }
    assert {k: c["holds"] for k, c in claims.items()} == holds
    assert all(isinstance(c["statement"], str) and c["measured"] for c in claims.values())


def test_texts_and_tables_cover_the_notebook(results):
    paper = published.load("blog_jsma_distillation")
    texts = chapter.texts(results, paper)
    assert all(isinstance(v, str) and v for v in texts.values())
    source = (ROOT / "notebooks" / "blog_jsma_distillation.md").read_text(encoding="utf-8")
    used = set(re.findall(r"\{glue:text\}`([a-z0-9_]+)`", source))
    glued = set(texts) | set(chapter.names("fashion-mnist", "lenet"))
    assert used <= glued, sorted(used - glued)
    assert set(paper["claims"]["values"]) == set(results["claims"])
    table = chapter.temperature_table(results)
    assert set(table.columns) == set(chapter.TEMPERATURE_FORMATS)  # the page formats every column
    assert list(table.index) == ["1", "20"]
    assert "JSMA (logits) success" in chapter.logit_table(results).columns
    jsma = chapter.jsma_table(results, paper["jsma"]["values"], "digits")
    assert jsma.loc["success rate", "Papernot et al. (MNIST)"] == "97%"
    assert "10^30" in chapter.distillation_table(results, paper["distillation"]["values"]).data.to_string()


def test_run_refuses_bad_input(setting):
    networks, test = setting
    with pytest.raises(ValueError, match="must include T = 1"):
        chapter.run(networks={20: networks[20], 50: networks[20]}, test=test, n_per_class=1)
    with pytest.raises(ValueError, match="at least two temperatures"):
        chapter.run(networks={1: networks[1]}, test=test)
    with pytest.raises(ValueError, match="n_per_class=1000"):
        chapter.run(networks=networks, test=test, n_per_class=1000)
    with pytest.raises(TypeError, match="test must be an advlib.data.Dataset"):
        chapter.run(networks=networks, test=test.x)
    with pytest.raises(ValueError, match="gamma"):
        chapter.run(networks=networks, test=test, gamma=0)


def test_parameters_to_recipe_and_data():
    params = {"arch": "fc500-150-10", "dataset": "fashion-mnist", "epochs": 5, "lr": 0.002, "batch_size": 32,
              "train_limit": 0, "seed": 0}
    config = chapter.config(params)
    assert config.train_limit is None and config.optimizer == "adam" and config.batch_size == 32
    assert chapter.config({**params, "train_limit": 100}).train_limit == 100
    assert chapter.datasets({"dataset": "mnist"}) == {"mnist"}


def test_every_figure_draws_from_the_results(results):
    import matplotlib.pyplot as plt

    from advlib.figures import blog_jsma_distillation as figures

    k = len(results["classes"])
    drawn = [figures.saliency(results), figures.grid(results), figures.temperature(results, 0.97), figures.logits(results)]
    assert [len(f.axes) for f in drawn] == [8, k * k, 4, 2]
    assert len(drawn[3].axes[0].lines) == 4  # DeepFool, C&W, JSMA on the logits (run here) and on the probabilities
    for f in drawn:
        plt.close(f)


def test_the_load_cell_helpers():
    infos = {1.0: {"key": "k1", "test_accuracy": 0.9, "teacher": {"test_accuracy": 0.95}, "from_cache": True,
                   "train_seconds": 3.0, "config": {}},
             20.0: {"key": "k20", "test_accuracy": 0.8, "teacher": {"test_accuracy": 0.85}, "from_cache": False,
                    "train_seconds": 4.0, "config": {}}}
    record = chapter.networks_record(infos)
    assert record[20.0] == {"key": "k20", "test_accuracy": 0.8, "teacher": {"test_accuracy": 0.85},
                            "from_cache": False, "train_seconds": 4.0}
    frame = chapter.accuracy_frame(infos)
    assert frame.loc[20.0, "teacher accuracy"] == 0.85 and frame.loc[1.0, "distilled accuracy"] == 0.9
    assert chapter.names("fashion-mnist", "lenet")["arch_name"] == "LeNet"
    assert chapter.names("mnist", "mlp")["arch_name"] == "mlp"
