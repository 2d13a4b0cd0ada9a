"""Defensive distillation: Papernot, McDaniel, Wu, Jha and Swami, "Distillation
as a Defense to Adversarial Perturbations against Deep Neural Networks",
IEEE S&P 2016.

The recipe, at a temperature ``T``:

1. train a *teacher* on the hard labels with the loss of
   ``softmax(logits / T)`` (:func:`advlib.train.fit` with ``temperature=T``);
2. take its *soft labels* at ``T`` on the training set,
   ``softmax(teacher(x) / T)`` (:func:`soft_labels`);
3. train the *distilled* network, of the same architecture and recipe, on
   those soft labels at the same ``T``: the cross-entropy to them;
4. deploy it at ``T = 1``: its logits unchanged, ``softmax(logits)``.

Training at a high ``T`` makes the logits grow about ``T`` times (the loss
sees ``logits / T``); at ``T = 1`` the deployed softmax then saturates, its
gradients with respect to the input all but vanish, and an attack that reads
them (JSMA on probabilities, Papernot et al.'s setting) finds no direction.
The decision boundaries do not move away: attacks on the logits succeed as
before (Carlini and Wagner, "Defensive distillation is not robust to
adversarial examples", 2016).

Both networks go through :func:`advlib.train.cached`: the teacher is keyed by
its training recipe and ``T``, the distilled network by the whole recipe,
teacher included, so each is trained once and reloaded bit for bit.

Example::

    config = train.TrainConfig("fc500-150-10", "fashion-mnist", epochs=5, lr=1e-3, optimizer="adam")
    model, info = distilled(config, temperature=100)
    probs = softmax(model(x))  # deployed at T = 1
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from .. import checks, data, models, train

KIND_TEACHER = "distillation-teacher"
KIND_DISTILLED = "distilled"


def softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / T)`` over the classes (dim 1): ``T = 1`` is the usual
    softmax, and as ``T`` grows the probabilities tend to ``1 / classes``."""
    temperature = checks.number(temperature, "temperature", low=0, low_open=True)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a tensor [N, classes], got {getattr(logits, 'shape', type(logits).__name__)}")
    return torch.softmax(logits / temperature, dim=1)


def soft_labels(model: nn.Module, x: Tensor, temperature: float, *, batch_size: int = 1000) -> Tensor:
    """The teacher's soft labels ``softmax(model(x) / T)`` ``[N, classes]``,
    computed in eval mode without gradients (the model's train flags are left
    as they were): what the distilled network is trained on."""
    temperature = checks.number(temperature, "temperature", low=0, low_open=True)
    checks.integer(batch_size, "batch_size", low=1)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty floating-point batch [N, ...], got {getattr(x, 'shape', x)!r}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        for m, mode in flags:
            m.training = mode
    return softmax(logits, temperature)


def _check(config: Any, temperature: Any) -> float:
    if not isinstance(config, train.TrainConfig):
        raise TypeError(f"config must be an advlib.train.TrainConfig, got {type(config).__name__}")
    return checks.number(temperature, "temperature", low=0, low_open=True)


def teacher_recipe(config: train.TrainConfig, temperature: float) -> dict[str, Any]:
    """The cache recipe of the teacher: its training recipe and ``T``."""
    temperature = _check(config, temperature)
    return {"kind": KIND_TEACHER, "train": config.as_dict(), "temperature": temperature}


def distilled_recipe(config: train.TrainConfig, temperature: float) -> dict[str, Any]:
    """The cache recipe of the distilled network: the whole recipe, teacher included."""
    teacher = teacher_recipe(config, temperature)
    return {"kind": KIND_DISTILLED, "teacher": teacher, "train": teacher["train"], "temperature": teacher["temperature"]}


def _splits(config: train.TrainConfig) -> tuple[data.Dataset, data.Dataset]:
    options = dict(config.data_options)
    return (data.load(config.dataset, "train", limit=config.train_limit, **options),
            data.load(config.dataset, "test", **options))


def _builder(config: train.TrainConfig) -> Any:
    def build() -> nn.Module:
        # The shape from one test image: a cache hit need not read the training set.
        probe = data.load(config.dataset, "test", limit=1, **dict(config.data_options))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return models.build(config.arch, tuple(probe.x.shape[1:]), len(probe.classes),
                                **dict(config.model_options))

    return build


def _fit(model: nn.Module, config: train.TrainConfig, x: Tensor, y: Tensor, temperature: float,
         progress: bool, desc: str) -> list[dict]:
    return train.fit(
        model, x, y, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay,
        temperature=temperature, seed=config.seed, progress=progress, desc=desc,
    )


def teacher(
    config: train.TrainConfig, temperature: float, *, cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The teacher: ``config``'s network trained on the hard labels at
    temperature ``T`` (step 1), cached by :func:`teacher_recipe`.

    Returns ``(model, info)`` as :func:`advlib.train.cached` does, with
    ``test_accuracy`` (at ``T = 1``; the temperature does not change the
    argmax), ``n_train`` and ``history``."""
    recipe = teacher_recipe(config, temperature)
    temperature = recipe["temperature"]
    checks.flag(progress, "progress")

    def fit(model: nn.Module) -> dict:
        train_set, test_set = _splits(config)
        history = _fit(model, config, train_set.x, train_set.y, temperature, progress,
                       f"teacher at T={temperature:g}")
        return {"temperature": temperature, "test_accuracy": train.accuracy(model, test_set.x, test_set.y),
                "n_train": len(train_set), "history": history}

    return train.cached(recipe, _builder(config), fit, name=f"{config.name()}-teacher-T{temperature:g}",
                        cache_dir=cache_dir, progress=False)


def distilled(
    config: train.TrainConfig, temperature: float, *, cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The distilled network at temperature ``T``, deployed at ``T = 1``.

    Trains (or loads) the :func:`teacher`, takes its :func:`soft_labels` at
    ``T`` on the training set, and trains a network of the same architecture
    and recipe (``config``: epochs, optimiser, seed...) on them at ``T``: the
    cross-entropy ``-sum_j p_j log softmax(logits / T)_j`` to the soft labels
    ``p`` (steps 2-3). The model returned is that network as it was trained:
    its logits are the trained ones, and deploying it at ``T = 1`` means
    reading ``softmax(logits)`` (step 4). Deterministic: the same config and
    ``T`` give the same weights, trained now or loaded from the cache.

    Args:
        config: the training recipe of both networks (from scratch:
            architecture, data, epochs, optimiser, learning rate, seed).
        temperature: ``T > 0``; Papernot et al. use 1 to 100.
        cache_dir: the cache; default ``$ADVLIB_CACHE``, else ``./.cache/advlib``.
        progress: the training progress bars.

    Returns:
        ``(model, info)``: the model in eval mode, and what
        :func:`advlib.train.cached` records (``recipe``, ``key``,
        ``from_cache``, ...) with ``temperature``, ``test_accuracy`` (deployed,
        at ``T = 1``), ``n_train``, ``history`` (the distilled network's) and
        ``teacher`` (the teacher's ``key``, ``test_accuracy`` and ``from_cache``).

    Example::

        model, info = distilled(train.TrainConfig("lenet", "mnist", epochs=50, lr=1e-3, optimizer="adam"), 100)
        info["test_accuracy"], info["teacher"]["test_accuracy"]
    """
    recipe = distilled_recipe(config, temperature)
    temperature = recipe["temperature"]
    checks.flag(progress, "progress")

    def fit(model: nn.Module) -> dict:
        t_model, t_info = teacher(config, temperature, cache_dir=cache_dir, progress=progress)
        train_set, test_set = _splits(config)
        y = soft_labels(t_model, train_set.x, temperature)
        history = _fit(model, config, train_set.x, y, temperature, progress, f"distilled at T={temperature:g}")
        return {"temperature": temperature, "test_accuracy": train.accuracy(model, test_set.x, test_set.y),
                "n_train": len(train_set), "history": history,
                "teacher": {k: t_info[k] for k in ("key", "test_accuracy", "from_cache")}}

    return train.cached(recipe, _builder(config), fit, name=f"{config.name()}-distilled-T{temperature:g}",
                        cache_dir=cache_dir, progress=False)


def softmax_jacobian_log10(model: nn.Module, x: Tensor) -> Tensor:
    """``log10 |dF_j / dx_i|``, the Jacobian of the deployed softmax
    ``F = softmax(logits)`` with respect to the input, per sample, class and
    feature: ``[N, classes, *x.shape[1:]]``, float64 (``-inf`` where an
    entry is exactly 0).

    What an attack on the probabilities reads, measured without underflow.
    On a distilled network the logits differ by hundreds, so ``F`` is one-hot
    in float32 (and ``exp(-800)`` underflows even float64): autograd returns
    exact zeros. Here ``dF_j/dx = sum_k F_j F_k (g_j - g_k)`` (``g_k`` the
    input gradient of logit ``k``; the identity uses ``sum_k F_k = 1`` and has
    no cancellation), whose weights are taken in log space
    (``log F = log_softmax``) and factored out before the sum. The model is
    run in float64 on a copy (the caller's model is left as it was).

    Example::

        lj = softmax_jacobian_log10(model, x)
        log10_mean = (torch.logsumexp(lj.flatten() * math.log(10), 0) / math.log(10)
                      - math.log10(lj.numel()))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty floating-point batch [N, ...], got {getattr(x, 'shape', x)!r}")
    import copy

    net = copy.deepcopy(model).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    xd = x.detach().double().requires_grad_(True)
    logits = net(xd)
    c = logits.shape[1]
    # g[:, k] = d logit_k / dx: one backward per class, the batch at once.
    g = torch.stack([torch.autograd.grad(logits[:, k].sum(), xd, retain_graph=k < c - 1)[0] for k in range(c)], 1)
    g = g.flatten(2)  # [N, C, n]
    lf = torch.log_softmax(logits.detach(), dim=1)  # [N, C]
    w = lf[:, :, None] + lf[:, None, :]  # log(F_j F_k) [N, j, k]
    w = w.masked_fill(torch.eye(c, dtype=torch.bool), -torch.inf)  # k = j adds nothing
    m = w.max(dim=2, keepdim=True).values  # [N, C, 1]
    weights = torch.exp(w - m)  # <= 1, the largest is 1
    # sum_k weights_jk (g_j - g_k) = (sum_k weights_jk) g_j - sum_k weights_jk g_k
    s = weights.sum(2, keepdim=True) * g - torch.bmm(weights, g)  # [N, C, n]
    out = (m + torch.log(s.abs())) / math.log(10)
    return out.view(len(x), c, *x.shape[1:])
