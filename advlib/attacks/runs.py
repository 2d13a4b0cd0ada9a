"""Running an attack on more samples than fit in one batch, and choosing targets."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn

from .. import checks, distributed
from ._common import AttackResult, attacking, begin, check_inputs

# Trace records whose rows are iterates: a batch that finished early repeats
# its last row (each of its samples is at its returned point). Every other
# record is per-run and NaN where a sample took no part.
_ITERATES = frozenset({"x"})


def batched(
    attack: Callable[..., AttackResult],
    model: nn.Module,
    x: Tensor,
    *,
    size: int,
    label: Tensor | None = None,
    target: Tensor | None = None,
    **options,
) -> AttackResult:
    """``attack(model, x, label=..., target=..., **options)`` on batches of
    ``size`` samples, joined into one complete :class:`AttackResult`.

    Every field is concatenated; trace records ``[steps, n, ...]`` are joined
    along the sample dimension, a batch with fewer rows padded: iterates
    (``trace["x"]``) repeat the batch's last row, other records are NaN there
    (no run). ``label``/``target`` are sliced with ``x`` and passed on only
    when given. Each batch is judged by its own forward pass; the samples
    are independent (eval mode), so the result is the batch attack's.

    Under ``torchrun`` (:mod:`advlib.distributed`) each rank attacks a
    contiguous run of the batches, on its device (a copy of ``model`` moved
    there), and every rank returns the whole result on the CPU: the same
    batches, so the same numbers, as one process.

    Example::

        res = attacks.batched(attacks.deepfool, model, test.x, size=500, p=2)
    """
    if not callable(attack):
        raise TypeError(f"attack must be an attack function such as attacks.deepfool, got {type(attack).__name__}")
    size = checks.integer(size, "size", low=1)
    x, _ = check_inputs(x, None)
    for name, value in (("label", label), ("target", target)):
        if value is not None and (not isinstance(value, Tensor) or value.shape[:1] != x.shape[:1]):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a tensor of shape [N] = [{x.shape[0]}] to match x, got {shape}")
    where = distributed.device() if distributed.active() else None
    if where is not None and any(t.device != where for t in model.parameters()):
        model = copy.deepcopy(model).to(where)  # a copy: attacks never change the model they are given

    def one(i: int, j: int) -> AttackResult:
        kw = dict(options)
        if label is not None:
            kw["label"] = label[i:j] if where is None else label[i:j].to(where)
        if target is not None:
            kw["target"] = target[i:j] if where is None else target[i:j].to(where)
        res = attack(model, x[i:j] if where is None else x[i:j].to(where), **kw)
        if not isinstance(res, AttackResult):
            raise TypeError(f"attack must return an AttackResult, got {type(res).__name__}")
        return res

    # Under torchrun each rank attacks a contiguous run of the batches (advlib.distributed).
    return join(distributed.map_chunks(one, x.shape[0], size))


def join(parts: list[AttackResult]) -> AttackResult:
    """The results of consecutive batches as one result (see :func:`batched`)."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: torch.cat([getattr(r, name) for r in parts])  # noqa: E731
    targets = [r.target for r in parts]
    if any(t is None for t in targets) and not all(t is None for t in targets):
        raise ValueError("cannot join targeted and untargeted results")
    keys = parts[0].trace.keys()
    if any(r.trace.keys() != keys for r in parts):
        raise ValueError("cannot join results with different trace records")
    trace = {}
    for k in keys:
        rows = max(r.trace[k].shape[0] for r in parts)
        trace[k] = torch.cat([_pad(r.trace[k], rows, repeat=k in _ITERATES) for r in parts], dim=1)
    return AttackResult(
        x_adv=cat("x_adv"), perturbation=cat("perturbation"), success=cat("success"),
        iterations=cat("iterations"), label_orig=cat("label_orig"), label_adv=cat("label_adv"),
        target=None if targets[0] is None else torch.cat(targets), trace=trace,
    )


def _pad(t: Tensor, rows: int, *, repeat: bool) -> Tensor:
    if t.shape[0] == rows:
        return t
    if repeat and t.shape[0] > 0:
        extra = t[-1:].expand(rows - t.shape[0], *t.shape[1:])
    else:
        fill = math.nan if t.is_floating_point() else 0
        extra = torch.full((rows - t.shape[0], *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([t, extra])


def least_likely(model: nn.Module, x: Tensor) -> Tensor:
    """The class of lowest logit per sample (long [N]; ties: the first), the
    hardest target: Kurakin et al.'s "least-likely class" method."""
    x, _ = check_inputs(x, None)
    with attacking(model):
        logits, *_ = begin(model, x, label=None, target=None)
    return logits.argmin(dim=1)
