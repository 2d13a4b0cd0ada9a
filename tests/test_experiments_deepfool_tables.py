"""advlib.experiments.deepfool_tables (and the helpers of table1 it uses) on
tiny sizes: one Table 1 row on the 8x8 digits, and the ILSVRC2012 path on a
fake validation folder of a few images with a tiny network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from advlib import data, provenance, published, train
from advlib.experiments import table1
from advlib.experiments import deepfool_tables as chapter

ROW = "FC500-150-10 (MNIST)"
N_IMAGES, N_LBFGS = 12, 2
COLOURS = {"blue": 2, "green": 1, "red": 0}  # class folder -> its bright channel; sorted: blue, green, red


def _fake_imagenet(root, per_class=2):
    """A validation folder in ImageFolder's layout: one subfolder per class,
    images of several sizes and formats, each mostly its class's colour."""
    rng = np.random.default_rng(0)
    sizes = [(300, 260), (260, 400), (256, 256)]
    for name, channel in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[(i + channel) % len(sizes)]
            img = rng.uniform(0.1, 0.35, (h, w, 3))
            img[..., channel] = rng.uniform(0.6, 0.9, (h, w))
            suffix = ".png" if i % 2 == 0 else ".JPEG"
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"img{i}{suffix}")
        (root / name / "notes.txt").write_text("not an image")
    return root


class ColourNet(nn.Module):
    """A tiny 'ImageNet network' reading normalised images: the logits are the
    channels' means (red, green, blue), so it classifies the fake images by colour."""

    def forward(self, x):
        return x.mean(dim=(2, 3))[:, [COLOURS[name] for name in sorted(COLOURS)]]


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    return _fake_imagenet(tmp_path_factory.mktemp("ilsvrc") / "val")


@pytest.fixture(scope="module")
def results(tmp_path_factory, imagenet_dir):
    cache = tmp_path_factory.mktemp("cache")
    overrides = {ROW: {"epochs": 3}}
    res = chapter.run(
        mnist_rows_dataset="digits", rows=(ROW,), network_overrides=overrides, n_images=N_IMAGES,
        n_images_lbfgs=N_LBFGS, attack_batch=5, lbfgs_batch=2, imagenet_dir=str(imagenet_dir), n_imagenet=5,
        imagenet_models={"CaffeNet (ILSVRC2012)": ColourNet()}, imagenet_batch=2, cache_dir=cache,
    )
    model, _ = train.trained(table1.config(ROW, "digits", **overrides[ROW]), cache_dir=cache, progress=False)
    return res, model


# ---------------------------------------------------------------- the table1 helpers


def test_table1_dataset_of_and_overrides():
    assert table1.dataset_of("LeNet (MNIST)", mnist_rows_dataset="a", cifar_rows_dataset="b") == "a"
    assert table1.dataset_of("NIN (CIFAR-10)", mnist_rows_dataset="a", cifar_rows_dataset="b") == "b"
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        table1.dataset_of("VGG", mnist_rows_dataset="a", cifar_rows_dataset="b")
    assert table1.overrides() == {}
    o = table1.overrides(lenet_epochs=20, nin_width=192, cifar_train_limit=0)
    assert o["LeNet (MNIST)"] == {"epochs": 20}
    assert o["NIN (CIFAR-10)"]["model_options"]["width"] == 192 and o["NIN (CIFAR-10)"]["train_limit"] is None
    assert o["LeNet (CIFAR-10)"] == {"train_limit": None} and "FC500-150-10 (MNIST)" not in o
    assert table1.overrides(cifar_train_limit=100)["LeNet (CIFAR-10)"] == {"train_limit": 100}
    # The overrides are config's **recipe: they change the config and nothing else.
    config = table1.config("NIN (CIFAR-10)", "fashion-mnist-32rgb", **o["NIN (CIFAR-10)"])
    assert dict(config.model_options)["width"] == 192 and config.train_limit is None
    with pytest.raises(ValueError, match="nin_epochs"):
        table1.overrides(nin_epochs=-1)
    with pytest.raises(ValueError, match="cifar_train_limit"):
        table1.overrides(cifar_train_limit=-2)


def test_table1_test_set_keeps_the_data_options():
    config = table1.config("LeNet (MNIST)", "digits", data_options={"size": 28})
    assert tuple(table1.test_set(config).x.shape[1:]) == (1, 28, 28)


# ---------------------------------------------------------------- the ILSVRC2012 path


def test_imagenet_validation_reads_an_image_folder(imagenet_dir):
    val = chapter.imagenet_validation(imagenet_dir, 100)
    assert val.classes == ("blue", "green", "red")
    assert val.x.shape == (6, 3, 224, 224) and val.x.dtype == torch.float32
    assert 0 <= val.x.min() and val.x.max() <= 1
    assert val.y.tolist() == [0, 0, 1, 1, 2, 2]  # sorted by class; the .txt files are not images
    # Each image's bright channel is its class's.
    assert (val.x.mean(dim=(2, 3)).argmax(1) == torch.tensor([COLOURS[c] for c in val.classes])[val.y]).all()
    few = chapter.imagenet_validation(imagenet_dir, 3)
    assert few.y.tolist() == [0, 1, 2], "evenly spaced over the sorted images"
    assert few.describe()["options"]["of"] == 6


def test_load_image_is_resize_256_then_centre_crop_224(tmp_path):
    # A 300 x 200 image whose columns are numbered: after resizing the short side to 256 the
    # width is 384, and the centre crop keeps columns 80..303 of the resized image.
    w, h = 300, 200
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1))
    img = np.stack([ramp, np.full((h, w), 128.0), 255 - ramp], axis=-1).astype(np.uint8)
    path = tmp_path / "ramp.png"
    Image.fromarray(img).save(path)
    x = chapter.load_image(path)
    assert x.shape == (3, 224, 224)
    resized = np.asarray(Image.fromarray(img).resize((384, 256), Image.BILINEAR), dtype=np.float32) / 255
    expected = torch.from_numpy(resized[16:240, 80:304]).permute(2, 0, 1)
    assert torch.equal(x, expected)
    with pytest.raises(ValueError, match="crop"):
        chapter.load_image(path, resize=100, crop=224)


def test_imagenet_validation_refuses_what_is_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        chapter.imagenet_validation(tmp_path / "missing", 5)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        chapter.imagenet_validation(tmp_path / "empty", 5)


def test_normalised_model_reads_pixels():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    wrapped = chapter.Normalised(net)
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor(chapter.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(chapter.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(x), net((x - mean) / std))
    with pytest.raises(ValueError, match="std"):
        chapter.Normalised(net, std=(0.0, 1.0, 1.0))


def test_imagenet_missing_names_the_folder_and_the_weights(tmp_path):
    missing = chapter.imagenet_missing("")
    assert any("validation folder" in m for m in missing)
    assert any("torchvision" in m for m in missing)  # torchvision does not import in this venv
    assert any(str(tmp_path / "nope") in m for m in chapter.imagenet_missing(str(tmp_path / "nope")))


def test_imagenet_rows_say_what_they_need(tmp_path):
    res = chapter.run(mnist_rows_dataset="digits", rows=(), imagenet_dir=str(tmp_path / "none"),
                      imagenet_models={"CaffeNet (ILSVRC2012)": ColourNet()}, cache_dir=tmp_path)
    for label in chapter.IMAGENET_ROWS:
        assert not res["rows"][label]["ran"] and res["rows"][label]["reason"].startswith("not run: needs ")


# ---------------------------------------------------------------- run


def test_results_are_what_is_saved_and_modest(results):
    res, _ = results
    assert provenance.to_jsonable(res) == res
    assert len(json.dumps(res, allow_nan=False)) < 300_000
    assert list(res["rows"]) == [ROW, "CaffeNet (ILSVRC2012)", "GoogLeNet (ILSVRC2012)"]
    assert res["rows"]["GoogLeNet (ILSVRC2012)"] == {"ran": False, "reason": "not run: needs a network (none given)"}
    assert set(res["examples"]) == set(res["sizes"]) == {ROW, "CaffeNet (ILSVRC2012)"}
    assert set(res["claims"]) == {
        "deepfool_smaller_than_fgsm", "few_iterations_without_box", "box_costs_iterations",
        "default_steps_fool_at_least_plain", "deepfool_fools_every_image", "fgsm_fools_its_fraction",
        "table2_deepfool_smaller_linf", "deepfool_no_larger_than_lbfgs", "deepfool_faster_than_lbfgs",
    }


def test_a_row_names_its_data_network_and_recipe(results):
    res, model = results
    row = res["rows"][ROW]
    assert row["ran"] and row["dataset"] == "digits" and row["stands_in_for"] == "MNIST"
    assert row["data_label"] == "scikit-learn digits (stand-in for MNIST)"
    assert row["train_config"] == table1.config(ROW, "digits", epochs=3).as_dict()
    assert row["data"]["test"]["name"] == "digits" and row["data"]["train"]["n"] == 1347
    test = data.load("digits", "test")
    correct = train.predict(model, test.x) == test.y
    assert row["test_error"] == pytest.approx(1 - correct.double().mean().item())
    assert row["n_images"] == N_IMAGES and row["n_test"] == len(test)
    # The first correctly classified images, in order.
    assert row["attacked"]["options"]["first_correct"] == N_IMAGES


def test_rho_and_deciles_are_the_per_image_sizes(results):
    res, _ = results
    for label, sizes in res["sizes"].items():
        row = res["rows"][label]
        for method, key in (("DeepFool", "deepfool"), ("fast gradient sign", "fgsm")):
            per_image = torch.tensor(sizes[method], dtype=torch.float64)
            assert len(per_image) == row["n_images"]
            assert row[key]["rho"] == pytest.approx(per_image.mean().item(), rel=1e-3)
            assert row[key]["relative_norm"]["median"] == pytest.approx(torch.quantile(per_image, 0.5).item(), rel=1e-3)
        if "lbfgs" in row:
            assert len(sizes["L-BFGS"]) == round(row["lbfgs"]["success_rate"] * row["lbfgs"]["n_images"])


def test_figure1_adversarials_are_rejudged_on_the_saved_points(results):
    res, model = results
    ex = res["examples"][ROW]
    x = torch.tensor(ex["x"], dtype=torch.float32)
    test = data.load("digits", "test")
    first = data.first_correct(model, test, N_IMAGES)
    assert torch.allclose(x, first.x[ex["index"]], atol=1e-6) and ex["label"] == int(first.y[ex["index"]])
    for key in ("deepfool", "fgsm"):
        r = torch.tensor(ex[key]["r"], dtype=torch.float32)
        assert r.norm().item() == pytest.approx(ex[key]["norm"], rel=1e-5)
        x_adv = (x + r).clamp(0, 1)
        assert 0 <= x_adv.min() and x_adv.max() <= 1
        label = int(train.predict(model, x_adv[None]))
        assert label == ex[key]["label"]
        assert (label != ex["label"]) == ex[key]["fooled"]


def test_quantities_that_hold_whatever_the_data(results):
    res, _ = results
    for label, row in res["rows"].items():
        if not row["ran"]:
            continue
        df, free, plain, fg, t2 = (row[k] for k in ("deepfool", "deepfool_nobox", "deepfool_plain", "fgsm", "table2"))
        assert 0 < df["rho"] and 1 <= df["mean_iterations"] <= df["max_iterations"] <= 50
        assert 0 <= plain["images_differing"] <= row["n_images"]
        assert fg["fooled_rate"] >= 0.9 and fg["eps"] > 0  # the protocol's eps
        assert df["time_per_image"] > 0 and fg["time_per_image"] > 0
        # rho_inf of a sign step of size eps is at most eps over the image's largest pixel (<= 1) ... and the box.
        assert t2["fgsm_rho_inf"] > 0 and t2["deepfool_rho_inf"] > 0
        assert free["success_rate"] <= 1
    lb = res["rows"][ROW]["lbfgs"]
    assert lb["n_images"] == N_LBFGS and 0 <= lb["deepfool_nobox_fooling_once_clipped"] <= 1


def test_the_imagenet_row_ran_on_the_folder(results):
    res, _ = results
    row = res["rows"]["CaffeNet (ILSVRC2012)"]
    assert row["ran"] and row["dataset"] == "ilsvrc2012-val" and row["stands_in_for"] is None
    assert row["n_test"] == 5 and row["data"]["test"]["shape"] == [3, 224, 224]
    assert "lbfgs" not in row  # no L-BFGS on ImageNet, nor in the paper
    assert row["test_error"] == 0.0 and row["n_images"] == 5  # the colour network is right on every image
    ex = res["examples"]["CaffeNet (ILSVRC2012)"]  # large images are saved pooled and rounded: drawn only
    assert ex["pooled"] == 4 and np.asarray(ex["x"]).shape == (3, 56, 56) and ex["digits"] == 3


def test_each_claim_is_recomputed_from_its_numbers(results):
    res, _ = results
    c = res["claims"]
    fg = c["deepfool_smaller_than_fgsm"]
    assert fg["holds"] == all(v >= 2 for v in fg["ratios"].values())
    ran = {k: r for k, r in res["rows"].items() if r["ran"]}
    ratios = {k: r["fgsm"]["rho"] / r["deepfool"]["rho"] for k, r in ran.items()}
    assert c["deepfool_smaller_than_fgsm"]["ratios"] == pytest.approx(ratios)
    it = c["few_iterations_without_box"]
    assert it["holds"] == all(it["mean_iterations"][k] < 3 and it["success_rate"][k] == 1 for k in ran)
    b = c["box_costs_iterations"]
    assert b["holds"] == all(b["mean_iterations_box"][k] > b["mean_iterations_nobox"][k] for k in ran)
    assert c["deepfool_fools_every_image"]["holds"] == all(r["deepfool"]["success_rate"] == 1 for r in ran.values())
    f = c["fgsm_fools_its_fraction"]
    assert f["holds"] == all(f["fooled_rate"][k] >= f["fraction"] and f["eps"][k] > 0 for k in ran)
    t2 = c["table2_deepfool_smaller_linf"]
    assert t2["holds"] == all(t2["success_rate"][k] == 1 and t2["deepfool_rho_inf"][k] < t2["fgsm_rho_inf"][k]
                              for k in ran)
    lb = c["deepfool_no_larger_than_lbfgs"]
    row = res["rows"][ROW]["lbfgs"]
    assert lb["ratios"] == pytest.approx({ROW: row["deepfool_rho_same_images"] / row["rho"]})
    assert lb["holds"] == all(v <= lb["slack"] for v in lb["ratios"].values())
    assert lb["verdict"].startswith("holds here" if lb["holds"] else "does not hold here")
    sp = c["deepfool_faster_than_lbfgs"]
    assert sp["holds"] == all(v > 1 for v in sp["ratios"].values())
    for claim in c.values():
        assert isinstance(claim["holds"], bool) and claim["statement"] and claim["measured"]


def test_tables_show_the_numbers_beside_the_published_ones(results):
    res, _ = results
    t1 = chapter.table1_frame(res)
    assert len(t1) == 2 * len(chapter.ROWS) and t1.shape[1] == 7
    pub = published.load("deepfool_tables")["table1"]["values"]
    shown = t1.loc[(ROW, "this build")]
    assert float(shown[("DeepFool", "ρ_adv")]) == pytest.approx(res["rows"][ROW]["deepfool"]["rho"], rel=0.06)
    assert float(t1.loc[(ROW, "paper")][("DeepFool", "ρ_adv")]) == pub[ROW]["deepfool"]
    assert t1.loc[("NIN (CIFAR-10)", "this build")].iloc[0] == "not in rows"
    assert t1.loc[("GoogLeNet (ILSVRC2012)", "this build")].iloc[0] == "not run"
    t2 = chapter.table2_frame(res)
    assert float(t2.loc[(ROW, "this build")].iloc[0]) == pytest.approx(
        res["rows"][ROW]["table2"]["deepfool_rho_inf"], abs=6e-4)
    for frame in (chapter.networks_frame(res), chapter.lbfgs_frame(res), chapter.iterations_frame(res)):
        assert len(frame) >= 1 and frame.shape[1] <= 9
    texts = chapter.texts(res)
    assert texts["t1_rows_run"] == "2" and all(isinstance(v, str) for v in texts.values())
    assert texts["vs_verdict"] == res["claims"]["deepfool_no_larger_than_lbfgs"]["verdict"]
    assert "overflow-x" in chapter.scrolling(t1).data


def test_published_numbers_have_their_source():
    pub = published.load("deepfool_tables")
    assert "Moosavi-Dezfooli" in pub["source"]["authors"] and pub["source"]["year"] == 2016
    assert set(pub["table1"]["values"]) == set(chapter.ROWS)
    assert set(pub["table2"]["values"]) == set(table1.ROWS)
    for row in pub["table1"]["values"].values():
        assert all(isinstance(row[k], float) for k in ("test_error", "deepfool", "fgsm"))
        assert row["device"] in ("cpu", "gpu")
    assert set(pub["claims"]["values"]) >= {"deepfool_smaller_than_fgsm", "deepfool_no_larger_than_lbfgs"}


def test_bad_arguments_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        chapter.run(rows=("VGG (MNIST)",), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="network_overrides"):
        chapter.run(rows=(), network_overrides={"VGG": {}}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n_images"):
        chapter.run(rows=(), n_images=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="imagenet_models"):
        chapter.run(rows=(), imagenet_models={"AlexNet": ColourNet()}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fgsm_fraction"):
        chapter.run(rows=(), fgsm_fraction=1.5, cache_dir=tmp_path)


def test_datasets_are_the_two_row_parameters():
    assert chapter.datasets({}) == {"fashion-mnist", "fashion-mnist-32rgb"}
    assert chapter.datasets({"mnist_rows_dataset": "mnist", "cifar_rows_dataset": "cifar10"}) == {"mnist", "cifar10"}


def test_measure_refuses_a_model_that_classifies_nothing(imagenet_dir):
    val = chapter.imagenet_validation(imagenet_dir, 6)

    # Every label shifted by one: the colour network is wrong on every image.
    wrong = data.Dataset(x=val.x, y=(val.y + 1) % 3, name="x", split="val", classes=val.classes, source="")
    with pytest.raises(ValueError, match="none of the"):
        chapter.measure(chapter.Normalised(ColourNet()), wrong, n_images=0, n_lbfgs=0,
                        deepfool_options=dict(overshoot=0.02, clip=(0.0, 1.0)))


def test_every_figure_draws_from_the_results(results):
    import matplotlib.pyplot as plt

    from advlib.figures import deepfool_tables as figures

    res, _ = results
    drawn = [figures.examples(res), figures.distribution(res)]
    assert len(drawn[0].axes) == 5 * len(res["examples"])
    assert len(drawn[1].axes) == 1
    for f in drawn:
        plt.close(f)
