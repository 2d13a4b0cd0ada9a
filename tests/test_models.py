"""The model builders: shapes, the Caffe layer sizes, batched input gradients, errors."""

import pytest
import torch

from advlib import models

# (arch, in_shape, num_classes, parameters): the counts pin the layer sizes -
# 431,080 is Caffe's MNIST LeNet, 145,578 Caffe's cifar10_quick with its 4x4
# last map (round-up pooling), 469,160 the 784-500-150-10 network, 3,466 the
# 64-32-32-10 network of the optimality chapter.
CASES = [
    ("fc500-150-10", (1, 28, 28), 10, 469_160),
    ("lenet", (1, 28, 28), 10, 431_080),
    ("lenet-cifar", (3, 32, 32), 10, 145_578),
    ("nin-small", (3, 32, 32), 10, None),
    ("mlp2d", (2,), 2, None),
    ("mlp", (1, 8, 8), 10, 3_466),
]


def test_registry_names():
    assert list(models.ARCHITECTURES) == ["fc500-150-10", "lenet", "lenet-cifar", "nin-small", "mlp2d", "mlp"]


@pytest.mark.parametrize("arch, in_shape, num_classes, n_params", CASES)
def test_output_shape_and_size(arch, in_shape, num_classes, n_params):
    torch.manual_seed(0)
    model = models.build(arch, in_shape, num_classes).eval()
    x = torch.rand(5, *in_shape)  # inputs in [0, 1]
    out = model(x)
    assert out.shape == (5, num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params
    # the extremes of the box are valid inputs too
    assert torch.isfinite(model(torch.zeros(2, *in_shape))).all()
    assert torch.isfinite(model(torch.ones(2, *in_shape))).all()


@pytest.mark.parametrize("arch, in_shape, num_classes, n_params", CASES)
def test_every_logit_has_an_input_gradient(arch, in_shape, num_classes, n_params):
    """DeepFool steps along the input gradients of the class logits: each must
    be finite and non-zero, and a sample's gradient must come from that sample alone."""
    torch.manual_seed(0)
    model = models.build(arch, in_shape, num_classes).eval()
    x = torch.rand(3, *in_shape, requires_grad=True)
    out = model(x)
    for k in range(num_classes):
        (g,) = torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)
        assert torch.isfinite(g).all() and (g.flatten(1).abs().sum(1) > 0).all()
        (first,) = torch.autograd.grad(out[0, k], x, retain_graph=True)
        assert first[1:].abs().max() == 0
        torch.testing.assert_close(first[0], g[0])


def test_other_shapes_and_options():
    x = torch.rand(2, 1, 8, 8)  # sklearn digits at their own size
    assert models.build("fc500-150-10", (1, 8, 8), 10)(x).shape == (2, 10)
    assert models.build("lenet-cifar", (1, 28, 28), 3)(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    narrow = models.build("nin-small", (3, 32, 32), 10, width=16)
    wide = models.build("nin-small", (3, 32, 32), 10, width=32)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    assert models.mlp2d(hidden=7).state_dict()["0.weight"].shape == (7, 2)
    assert models.lenet(in_shape=(1, 15, 15))(torch.rand(1, 1, 15, 15)).shape == (1, 10)


def test_mlp_is_flatten_then_linear_relu():
    """advlib.exact reads the network layer by layer: only Flatten, Linear, ReLU."""
    model = models.build("mlp", (1, 8, 8), 10, hidden=16, depth=3)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten"] + ["Linear", "ReLU"] * 3 + ["Linear"]
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [16, 16, 16, 10]
    affine = models.mlp((3,), 2, depth=0)
    assert [type(m).__name__ for m in affine] == ["Flatten", "Linear"]


def test_nin_has_no_fully_connected_layer():
    model = models.nin_small()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*lenet-cifar.*mlp2d"):
        models.build("resnet", (1, 28, 28), 10)
    with pytest.raises(TypeError, match="arch must be a string"):
        models.build(models.lenet, (1, 28, 28), 10)


def test_lenet_too_small_input():
    with pytest.raises(ValueError, match=r"8x8 is too small.*at least 15x15"):
        models.lenet(in_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"too small.*at least 12x12"):
        models.build("lenet-cifar", (3, 8, 8), 10)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.lenet(in_shape=(28, 28)), r"in_shape must be \(channels, height, width\)"),
        (lambda: models.fc500_150_10(in_shape=(1, 0, 28)), "in_shape"),
        (lambda: models.lenet(num_classes=1), "num_classes must be an integer >= 2"),
        (lambda: models.nin_small(width=0), "width"),
        (lambda: models.nin_small(dropout=1.0), "dropout"),
        (lambda: models.mlp2d(hidden=0), "hidden"),
        (lambda: models.mlp(hidden=0), "mlp: hidden must be an integer >= 1"),
        (lambda: models.mlp(depth=-1), "mlp: depth must be an integer >= 0"),
        (lambda: models.mlp(in_shape=(0, 8)), "mlp: in_shape"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
