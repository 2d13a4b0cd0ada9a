"""The classifiers of the papers, sized for a CPU.

Every builder takes inputs in [0, 1] - ``[N, C, H, W]`` images, or ``[N, 2]``
points for :func:`mlp2d` - and returns logits ``[N, classes]`` (no softmax).
There is no normalisation layer inside: the attacks measure perturbations in
the same [0, 1] space the models read, as in the papers' Caffe models (whose
MNIST input is scaled by 1/256).

The models are plain ``nn.Sequential`` stacks with no in-place operations.

Caffe rounds pooling output sizes up where PyTorch rounds down; the Caffe
models here use ``ceil_mode=True`` so their layer sizes are the originals'
(cifar10_quick's last feature map is 4x4, not 3x3).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

# (kind, kernel, stride, padding) - the layers that change the spatial size,
# walked by _spatial_size to check an input is large enough before building.
_Layer = tuple[str, int, int, int]


def _check_in_shape(in_shape: Sequence[int], dims: int, arch: str) -> tuple[int, ...]:
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != dims
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        want = "(channels, height, width)" if dims == 3 else f"a tuple of {dims} positive integers"
        raise ValueError(f"{arch}: in_shape must be {want}, got {in_shape!r}")
    return shape


def _check_positive(value: int, name: str, arch: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arch}: {name} must be an integer >= {minimum}, got {value!r}")


def _spatial_size(size: int, layers: Sequence[_Layer]) -> int:
    for kind, kernel, stride, pad in layers:
        span = size + 2 * pad - kernel
        if span < 0:
            # PyTorch would still pool a window hanging off the edge; a map
            # that small carries nothing of the image, so it counts as empty.
            return 0
        # Caffe (and PyTorch's ceil_mode) round pooling up; convolutions round down.
        size = (math.ceil(span / stride) if kind == "pool" else span // stride) + 1
    return size


def _check_spatial(in_shape: tuple[int, int, int], layers: Sequence[_Layer], arch: str) -> tuple[int, int]:
    """The feature map's (height, width) after ``layers``; a clear error if it vanishes."""
    out = tuple(_spatial_size(s, layers) for s in in_shape[1:])
    if min(out) < 1:
        minimum = next(s for s in range(1, 10_000) if _spatial_size(s, layers) >= 1)
        raise ValueError(
            f"{arch}: input {in_shape[1]}x{in_shape[2]} is too small; its layers need at least "
            f"{minimum}x{minimum} pixels (resize the images, e.g. the 'digits' data with size=28)"
        )
    return out  # type: ignore[return-value]


def fc500_150_10(in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """FC500-150-10, the fully connected MNIST network of the DeepFool paper
    (Table 1): flatten, 500 ReLU units, 150 ReLU units, ``num_classes`` logits.

    Args:
        in_shape: ``(C, H, W)`` of one input; any size, it is flattened.
        num_classes: number of logits.

    Example:
        >>> model = fc500_150_10()
        >>> model(torch.rand(4, 1, 28, 28)).shape  # torch.Size([4, 10])
    """
    shape = _check_in_shape(in_shape, 3, "fc500-150-10")
    _check_positive(num_classes, "num_classes", "fc500-150-10", 2)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(shape), 500),
        nn.ReLU(),
        nn.Linear(500, 150),
        nn.ReLU(),
        nn.Linear(150, num_classes),
    )


_LENET_LAYERS: tuple[_Layer, ...] = (("conv", 5, 1, 0), ("pool", 2, 2, 0), ("conv", 5, 1, 0), ("pool", 2, 2, 0))


def lenet(in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """LeNet as in Caffe's MNIST example (``lenet_train_test.prototxt``), the
    "LeNet (MNIST)" of the DeepFool paper: conv 20@5x5, max-pool 2/2, conv 50@5x5,
    max-pool 2/2, fully connected 500, ReLU, fully connected ``num_classes``.

    As in Caffe, there is no nonlinearity after the convolutions (the
    max-pools are the only one before the ReLU). A 28x28 input gives 50x4x4
    features; inputs smaller than 15x15 leave no room for the last pooling
    window and raise ValueError.

    Args:
        in_shape: ``(C, H, W)`` of one input, at least 15x15.
        num_classes: number of logits.

    Example:
        >>> model = lenet()
        >>> model(torch.rand(4, 1, 28, 28)).shape  # torch.Size([4, 10])
    """
    shape = _check_in_shape(in_shape, 3, "lenet")
    _check_positive(num_classes, "num_classes", "lenet", 2)
    h, w = _check_spatial(shape, _LENET_LAYERS, "lenet")
    return nn.Sequential(
        nn.Conv2d(shape[0], 20, 5),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(50 * h * w, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


_CIFAR_QUICK_LAYERS: tuple[_Layer, ...] = (
    ("conv", 5, 1, 2),
    ("pool", 3, 2, 0),
    ("conv", 5, 1, 2),
    ("pool", 3, 2, 0),
    ("conv", 5, 1, 2),
    ("pool", 3, 2, 0),
)


def lenet_cifar(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> nn.Sequential:
    """The three-convolution LeNet the DeepFool paper trains on CIFAR-10
    ("LeNet (CIFAR-10)", Table 1), taken here as Caffe's ``cifar10_quick``,
    the LeNet-style CIFAR model of the Caffe examples the authors worked with:

    conv 32@5x5 pad 2, max-pool 3/2, ReLU; conv 32@5x5 pad 2, ReLU, avg-pool 3/2;
    conv 64@5x5 pad 2, ReLU, avg-pool 3/2; fully connected 64; fully connected
    ``num_classes``.

    Choices, stated because the paper does not spell the layers out:
    all three convolutions are padded by 2 as in ``cifar10_quick`` (so a
    32x32 input gives 64x4x4 features with Caffe's round-up pooling), and, as
    there, no ReLU sits between the two fully connected layers. Caffe
    subtracts the training-set mean image; here the model reads [0, 1] inputs
    directly and the optimiser copes with the offset.

    Args:
        in_shape: ``(C, H, W)`` of one input, at least 12x12.
        num_classes: number of logits.

    Example:
        >>> model = lenet_cifar()
        >>> model(torch.rand(4, 3, 32, 32)).shape  # torch.Size([4, 10])
    """
    shape = _check_in_shape(in_shape, 3, "lenet-cifar")
    _check_positive(num_classes, "num_classes", "lenet-cifar", 2)
    h, w = _check_spatial(shape, _CIFAR_QUICK_LAYERS, "lenet-cifar")
    return nn.Sequential(
        nn.Conv2d(shape[0], 32, 5, padding=2),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(64 * h * w, 64),
        nn.Linear(64, num_classes),
    )


def _mlpconv(c_in: int, widths: tuple[int, int, int], kernel: int, last_relu: bool = True) -> list[nn.Module]:
    """One mlpconv block of NIN: a k x k convolution followed by two 1x1
    convolutions (a small MLP slid over the image), ReLU after each."""
    a, b, c = widths
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, a, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.Conv2d(a, b, 1),
        nn.ReLU(),
        nn.Conv2d(b, c, 1),
    ]
    if last_relu:
        layers.append(nn.ReLU())
    return layers


_NIN_LAYERS: tuple[_Layer, ...] = (
    ("conv", 5, 1, 2),
    ("pool", 3, 2, 0),
    ("conv", 5, 1, 2),
    ("pool", 3, 2, 0),
    ("conv", 3, 1, 1),
)


def nin_small(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    width: int = 64,
    dropout: float = 0.5,
) -> nn.Sequential:
    """A CPU-sized Network in Network (Lin, Chen, Yan, ICLR 2014), the "NIN
    (CIFAR-10)" of the DeepFool paper.

    Same structure as the paper's CIFAR-10 NIN: three mlpconv blocks (a
    convolution, 5x5 / 5x5 / 3x3, followed by two 1x1 convolutions, ReLU after
    each), max-pool 3/2 then dropout after the first block, avg-pool 3/2 then
    dropout after the second, the third block's last 1x1 convolution giving
    one map per class, and global average pooling in place of any fully
    connected layer.

    The reduction: ``width`` channels where the paper has 192 (default 64,
    one third), and the paper's 160 and 96 of the first block scaled alike
    (5/6 and 1/2 of ``width``); about 1/9 of the paper's 1M parameters at the
    default. One departure: the paper's final ReLU before the global pooling
    is dropped, because logits clamped at 0 have zero gradient, which stalls
    gradient attacks (DeepFool's linearisation sees a flat class).

    Args:
        in_shape: ``(C, H, W)`` of one input, at least 6x6.
        num_classes: number of logits (the last block's channels).
        width: channels of the 5x5/3x3 convolutions (paper: 192).
        dropout: dropout probability after the first two blocks (paper: 0.5);
            inactive in eval mode, as the attacks run.

    Example:
        >>> model = nin_small(width=32)
        >>> model(torch.rand(4, 3, 32, 32)).shape  # torch.Size([4, 10])
    """
    shape = _check_in_shape(in_shape, 3, "nin-small")
    _check_positive(num_classes, "num_classes", "nin-small", 2)
    _check_positive(width, "width", "nin-small", 2)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"nin-small: dropout must be a probability in [0, 1), got {dropout!r}")
    _check_spatial(shape, _NIN_LAYERS, "nin-small")
    return nn.Sequential(
        *_mlpconv(shape[0], (width, max(1, width * 5 // 6), max(1, width // 2)), 5),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Dropout(dropout),
        *_mlpconv(max(1, width // 2), (width, width, width), 5),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Dropout(dropout),
        *_mlpconv(width, (width, width, num_classes), 3, last_relu=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def mlp2d(hidden: int = 32, num_classes: int = 2, *, in_shape: Sequence[int] = (2,)) -> nn.Sequential:
    """One hidden ReLU layer on points of the plane: the classifier of the
    2-D ``make_circles`` study in Ozbulak et al.'s supplement (Fig. 6).

    Args:
        hidden: hidden units (the paper does not give its size; 32 draws a
            smooth circular boundary).
        num_classes: number of logits (2: the inner and the outer circle).
        in_shape: ``(d,)`` of one input; 2 for the plane.

    Example:
        >>> model = mlp2d()
        >>> model(torch.rand(4, 2)).shape  # torch.Size([4, 2])
    """
    shape = _check_in_shape(in_shape, 1, "mlp2d")
    _check_positive(hidden, "hidden", "mlp2d")
    _check_positive(num_classes, "num_classes", "mlp2d", 2)
    return nn.Sequential(nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def mlp(in_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, *, hidden: int = 32, depth: int = 2) -> nn.Sequential:
    """A fully connected ReLU network: flatten, ``depth`` hidden layers of
    ``hidden`` ReLU units each, ``num_classes`` logits. The default on the
    8x8 digits is the 64-32-32-10 network whose exact minimal perturbations
    :mod:`advlib.exact` computes (the chapter "How close to optimal?").

    Only ``Flatten``, ``Linear`` and ``ReLU`` layers, so the network is a
    piecewise affine function that a mixed-integer program can state exactly.
    The widths are two integers rather than a list so that the recipe stays a
    flat set of options the training cache can key on.

    Args:
        in_shape: ``(C, H, W)`` (or any shape) of one input; it is flattened.
        num_classes: number of logits.
        hidden: ReLU units in each hidden layer.
        depth: number of hidden layers (0 gives an affine model).

    Example:
        >>> model = mlp((1, 8, 8), 10, hidden=32, depth=2)  # 64-32-32-10
        >>> model(torch.rand(4, 1, 8, 8)).shape  # torch.Size([4, 10])
    """
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"mlp: in_shape must be a tuple of positive integers, got {in_shape!r}")
    _check_positive(num_classes, "num_classes", "mlp", 2)
    _check_positive(hidden, "hidden", "mlp")
    _check_positive(depth, "depth", "mlp", 0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "fc500-150-10": fc500_150_10,
    "lenet": lenet,
    "lenet-cifar": lenet_cifar,
    "nin-small": nin_small,
    "mlp2d": mlp2d,
    "mlp": mlp,
}


def build(arch: str, in_shape: Sequence[int], num_classes: int, **kw) -> nn.Module:
    """The model named ``arch`` (a key of :data:`ARCHITECTURES`) for inputs of
    ``in_shape`` (one sample, without the batch dimension) and ``num_classes``
    logits; ``kw`` goes to the builder (e.g. ``width`` for ``"nin-small"``).

    Example:
        >>> model = build("lenet", (1, 28, 28), 10)
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string naming an architecture, got {type(arch).__name__}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_shape=tuple(in_shape), num_classes=num_classes, **kw)
