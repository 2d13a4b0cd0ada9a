"""advlib.data.as_rgb32: a grey 28x28 set in CIFAR-10's 3x32x32 layout, named for what it is."""

from __future__ import annotations

import sys

import pytest
import torch

from advlib import data


def test_as_rgb32_pads_and_replicates():
    grey = data.load("digits", "test", size=28, limit=7)
    rgb = data.as_rgb32(grey)
    assert rgb.x.shape == (7, 3, 32, 32) and rgb.x.dtype == torch.float32 and rgb.x.is_contiguous()
    for c in range(3):
        assert torch.equal(rgb.x[:, c, 2:30, 2:30], grey.x[:, 0])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert rgb.x[:, :, border].abs().max().item() == 0.0
    assert torch.equal(rgb.y, grey.y) and rgb.classes == grey.classes and rgb.split == "test"
    desc = rgb.describe()
    assert desc["name"] == "digits-32rgb" and desc["shape"] == [3, 32, 32]
    assert desc["derived_from"] == grey.describe()
    assert "derived_from" not in grey.describe()


def test_as_rgb32_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"28x28.*\[7, 1, 8, 8\]"):
        data.as_rgb32(data.load("digits", "test", limit=7))


def test_load_by_derived_name(tmp_path, monkeypatch):
    # No MNIST anywhere and no torchvision: the derived name fails as its base does.
    monkeypatch.setenv("ADVLIB_DATA", str(tmp_path))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(data.DataNotFoundError, match="mnist"):
        data.load("mnist-32rgb", "test")


@pytest.mark.skipif(not data.SYSTEM_DATA_DIR.joinpath("fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_32rgb():
    ds = data.load("fashion-mnist-32rgb", "test", limit=5)
    assert ds.name == "fashion-mnist-32rgb" and ds.x.shape == (5, 3, 32, 32)
    assert ds.describe()["derived_from"]["name"] == "fashion-mnist"
    assert torch.equal(ds.x[:, 1, 2:30, 2:30], data.load("fashion-mnist", "test", limit=5).x[:, 0])
