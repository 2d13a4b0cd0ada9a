"""The perturbation analysis of Ozbulak et al. (2020, Sec. IV): the
three subspaces of Definition IV.1 and the approximation of the cross-entropy
gradient in each (Theorem IV.2), for a targeted attack towards class ``t``.

Notation: ``g`` the logits, ``sigma = softmax(g)``, ``J_j = grad_x g_j`` the
rows of the logits' Jacobian. The targeted CE loss ``CE(sigma(g(x)), t) =
-log sigma_t`` has the gradient

    grad CE = -J_t + sum_j sigma_j J_j                     (exact)

and Theorem IV.2 approximates it by the subspace the point lies in:

- **S1** (high confidence for some class ``c != t``): ``grad CE ~ J_c - J_t``;
- **S2** (low confidence for every class): ``grad CE ~ -J_t + sum_j a_j J_j``
  with constants ``0 <= a_j < 1``, ``sum_j a_j = 1``;
- **S3** (high confidence for ``t``): ``grad CE ~ 0``.

"High confidence" is a softmax of at least ``confident``; the paper's
thresholds were lost in extraction, so it is a parameter, default
:data:`DEFAULT_CONFIDENT` = 0.9. It must lie in (0.5, 1), so that at most one
class can be confident and the three subspaces partition the input space.

The error bound used by the tests and the book: in S1 and S3 the difference
between the exact gradient and the approximation is ``(sigma_d - 1) J_d +
sum_{j != d} sigma_j J_j`` (``d`` the dominant class), so its norm is at most
``2 (1 - sigma_d) max_j ||J_j||`` - the approximation becomes exact as the
dominant softmax tends to 1, and is within ``2 (1 - confident)`` of the
logit-gradient scale everywhere in S1 and S3 (:func:`approximation_error`).

Example::

    logits, jac = logit_jacobian(model, x)            # [N, C], [N, C, *x.shape[1:]]
    where = subspace(logits, t)                       # 1, 2 or 3 per sample
    err = approximation_error(jac, logits, t)["scaled"]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import losses as _losses
from .attacks._common import attacking, check_labels, logits_of

S1, S2, S3 = 1, 2, 3
NAMES = {S1: "S1", S2: "S2", S3: "S3"}
"""Subspace code -> name, for tables and legends."""
DESCRIPTIONS = {
    S1: "confident as a class other than the target",
    S2: "low confidence for every class",
    S3: "confident as the target",
}
DEFAULT_CONFIDENT = 0.9
"""The softmax from which a prediction counts as "high confidence" (the paper's
value was lost in extraction; stated in the book)."""


# ---------------------------------------------------------------- checks


def _check_confident(confident: float) -> float:
    if isinstance(confident, bool) or not isinstance(confident, (int, float)) or not 0.5 < confident < 1:
        raise ValueError(
            f"confident must be a number in (0.5, 1) so that at most one class is confident, got {confident!r}"
        )
    return float(confident)


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, C] with C >= 2, got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")


def _check_target(target: Tensor, logits: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        target = torch.as_tensor(target)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape [N] = [{logits.shape[0]}], got {tuple(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target must lie in [0, {logits.shape[1] - 1}]")
    return target.to(device=logits.device, dtype=torch.long)


def _check_jacobian(jacobian: Tensor, logits: Tensor) -> None:
    if not isinstance(jacobian, Tensor) or not jacobian.is_floating_point():
        raise TypeError(f"jacobian must be a floating-point tensor, got {type(jacobian).__name__}")
    if jacobian.dim() < 3 or jacobian.shape[:2] != logits.shape:
        raise ValueError(
            f"jacobian must have shape [N, C, ...] = [{logits.shape[0]}, {logits.shape[1]}, ...] "
            f"matching the logits, got {tuple(jacobian.shape)}"
        )


def _gather_rows(jacobian: Tensor, index: Tensor) -> Tensor:
    """``jacobian[n, index[n]]`` for every sample: ``[N, ...]``."""
    idx = index.reshape(-1, 1, *([1] * (jacobian.dim() - 2))).expand(-1, 1, *jacobian.shape[2:])
    return jacobian.gather(1, idx).squeeze(1)


def _per_sample_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


# ---------------------------------------------------------------- Definition IV.1


def subspace(logits: Tensor, target: Tensor, *, confident: float = DEFAULT_CONFIDENT) -> Tensor:
    """The subspace of Definition IV.1 each sample lies in, towards ``target``.

    ``S3`` (3) if ``softmax_t >= confident``; ``S1`` (1) if some other class
    has ``softmax >= confident``; else ``S2`` (2), low confidence for every
    class.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` target classes ``t``.
        confident: the softmax from which a prediction is "high confidence",
            in (0.5, 1); default 0.9 (the paper's value is not known).

    Returns:
        ``[N]`` long tensor of 1, 2, 3 (:data:`S1`, :data:`S2`, :data:`S3`).

    Example::

        subspace(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([1, 1]))  # tensor([1, 2])
    """
    _check_logits(logits)
    target = _check_target(target, logits)
    confident = _check_confident(confident)
    prob = logits.softmax(1)
    p_target = prob.gather(1, target[:, None]).squeeze(1)
    p_other = prob.scatter(1, target[:, None], 0.0).amax(1)
    out = torch.full_like(target, S2)
    out[p_other >= confident] = S1
    out[p_target >= confident] = S3
    return out


# ---------------------------------------------------------------- Theorem IV.2


def ce_gradient(jacobian: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """The exact input gradient of the targeted cross-entropy
    ``CE(sigma(g), t) = -log sigma_t``, from the logits' Jacobian:
    ``grad CE = -J_t + sum_j sigma_j J_j``.

    It is evaluated as ``sum_{j != t} sigma_j (J_j - J_t)`` (the same, since
    ``sum_j sigma_j = 1``): forming ``sigma_t - 1`` would cancel to 0 once
    ``sigma_t`` rounds to 1, which is how autograd's gradient of
    ``F.cross_entropy`` behaves deep in S3 - this form keeps its relative
    accuracy there.

    Args:
        jacobian: ``[N, C, ...]``, row ``j`` of sample ``n`` is ``grad_x g_j(x_n)``.
        logits: ``[N, C]``.
        target: ``[N]``.

    Returns:
        ``[N, ...]``, the gradient for each sample.
    """
    _check_logits(logits)
    _check_jacobian(jacobian, logits)
    target = _check_target(target, logits)
    prob = logits.softmax(1).to(jacobian.dtype)
    weights = prob.scatter(1, target[:, None], 0.0)  # sigma_j for j != t, 0 at t
    j_t = _gather_rows(jacobian, target)
    diff = jacobian - j_t.unsqueeze(1)  # J_j - J_t; row t is 0
    return torch.einsum("nc,nc...->n...", weights, diff)


def ce_gradient_approx(
    jacobian: Tensor, logits: Tensor, target: Tensor, *, confident: float = DEFAULT_CONFIDENT
) -> Tensor:
    """Theorem IV.2's approximation of :func:`ce_gradient`, each sample by its
    subspace (:func:`subspace` with ``confident``):

    - S1, dominant class ``c``: ``J_c - J_t``;
    - S2: ``-J_t + sum_j a_j J_j`` with ``a_j = sigma_j(x)``. The theorem only
      says the ``a_j`` are constants in [0, 1) summing to 1; the softmax at the
      point is the choice that satisfies this (no class is confident in S2,
      so every ``sigma_j < confident < 1``) and makes (9) exact. What the
      theorem says in S2 is therefore not an approximation but that the pull
      ``-J_t`` is partly cancelled by ``sigma_t J_t``: the multiplier of
      ``J_t`` is ``-(1 - sigma_t)``, no longer close to -1 as in S1;
    - S3: 0.

    Args:
        jacobian, logits, target: as in :func:`ce_gradient`.
        confident: the threshold of Definition IV.1, in (0.5, 1).

    Returns:
        ``[N, ...]``.
    """
    _check_logits(logits)
    _check_jacobian(jacobian, logits)
    target = _check_target(target, logits)
    where = subspace(logits, target, confident=confident)
    dominant = logits.argmax(1)
    s1 = _gather_rows(jacobian, dominant) - _gather_rows(jacobian, target)
    s2 = ce_gradient(jacobian, logits, target)
    shape = (-1, *([1] * (jacobian.dim() - 2)))
    out = torch.where((where == S1).reshape(shape), s1, s2)
    return torch.where((where == S3).reshape(shape), torch.zeros_like(out), out)


def approximation_error(
    jacobian: Tensor,
    logits: Tensor,
    target: Tensor,
    *,
    exact: Tensor | None = None,
    confident: float = DEFAULT_CONFIDENT,
) -> dict[str, Tensor]:
    """How far Theorem IV.2's approximation is from the exact gradient, per sample.

    Args:
        jacobian, logits, target: as in :func:`ce_gradient`.
        exact: the reference gradient ``[N, ...]`` (e.g. autograd's); default
            :func:`ce_gradient`.
        confident: the threshold of Definition IV.1.

    Returns:
        A dict of ``[N]`` tensors:

        - ``subspace``: 1, 2, 3;
        - ``relative``: ``||exact - approx|| / ||exact||`` (NaN where the exact
          gradient is 0). In S3 the approximation is 0, so this is 1 by
          construction there: the theorem's S3 statement is about size, which
          ``scaled`` measures;
        - ``scaled``: ``||exact - approx|| / max_j ||J_j||``, the error in units
          of the logit gradients the formula combines (0 where all are 0);
        - ``bound``: ``2 (1 - sigma_d)`` in S1 and S3 (``d`` the dominant
          class), 0 in S2 - a proven upper bound on ``scaled`` when ``exact``
          is the true gradient.
    """
    approx = ce_gradient_approx(jacobian, logits, target, confident=confident)
    if exact is None:
        exact = ce_gradient(jacobian, logits, target)
    if exact.shape != approx.shape:
        raise ValueError(f"exact must have shape {tuple(approx.shape)}, got {tuple(exact.shape)}")
    where = subspace(logits, target, confident=confident)
    err = _per_sample_norm(exact.to(approx.dtype) - approx)
    size = _per_sample_norm(exact.to(approx.dtype))
    scale = torch.linalg.vector_norm(jacobian.flatten(2), dim=2).amax(1)
    relative = torch.where(size > 0, err / size.clamp_min(torch.finfo(size.dtype).tiny), torch.nan)
    scaled = torch.where(scale > 0, err / scale.clamp_min(torch.finfo(scale.dtype).tiny), 0.0)
    prob = logits.softmax(1).to(approx.dtype)
    # 1 - sigma_d as the sum of the others: no cancellation when sigma_d rounds to 1.
    rest = prob.scatter(1, logits.argmax(1, keepdim=True), 0.0).sum(1)
    bound = torch.where(where == S2, torch.zeros_like(rest), 2 * rest)
    return {"subspace": where, "relative": relative, "scaled": scaled, "bound": bound}


# ---------------------------------------------------------------- gradients of a model


def logit_jacobian(model: nn.Module, x: Tensor, *, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """The logits and their input Jacobian for every sample of a batch, in
    eval mode (the model's flags are restored afterwards).

    Computed by one reverse pass per class over chunks of ``batch_size``
    samples: in eval mode the samples are independent, so the gradient of
    ``sum_n g_j(x_n)`` is ``grad g_j`` at every sample at once. (A plain loop:
    ``torch.func.vmap(jacrev(...))`` gives the same numbers but costs seconds
    of tracing overhead on a small model.) A model with a single logit ``f``
    is read as the two logits ``(0, f)``, as the attacks do.

    Args:
        model: classifier returning logits ``[N, C]``.
        x: inputs ``[N, ...]``.
        batch_size: samples per chunk (one forward graph of this many samples
            is kept while the ``C`` gradients are taken).

    Returns:
        ``(logits [N, C], jacobian [N, C, *x.shape[1:]])``, detached.

    Example::

        logits, jac = logit_jacobian(models.mlp2d(), torch.rand(5, 2))  # [5, 2], [5, 2, 2]
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty floating-point batch [N, ...]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")

    jacs, logits = [], []
    with attacking(model):
        for chunk in x.detach().split(batch_size):
            xg = chunk.detach().requires_grad_(True)
            out = logits_of(model, xg)
            rows = [
                torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j < out.shape[1] - 1)[0]
                for j in range(out.shape[1])
            ]
            jacs.append(torch.stack(rows, dim=1))
            logits.append(out.detach())
    return torch.cat(logits).detach(), torch.cat(jacs).detach()


def loss_gradient(
    model: nn.Module, x: Tensor, label: Tensor, loss: _losses.Loss, *, targeted: bool = True
) -> tuple[Tensor, Tensor]:
    """The logits at ``x`` and the input gradient of ``loss.value`` per sample,
    by autograd, in eval mode - what an attack driven by ``loss`` computes
    before taking ``loss.direction`` of it (the sign, for ``losses.ce_sign``).

    Returns:
        ``(logits [N, C], grad [N, ...])``, detached.

    Example::

        _, g = loss_gradient(model, x, t, losses.logit)  # = -grad g_t, targeted
    """
    if not isinstance(loss, _losses.Loss):
        raise TypeError(f"loss must be an advlib.losses.Loss, got {type(loss).__name__}")
    with attacking(model):
        xg = x.detach().requires_grad_(True)
        logits = logits_of(model, xg)
        label = check_labels(label, x, logits.shape[1], "targets" if targeted else "labels")
        (grad,) = torch.autograd.grad(loss.value(logits, label, targeted=targeted).sum(), xg)
    return logits.detach(), grad


def summarize(values: Tensor, where: Tensor, quantiles: tuple[float, ...] = (0.5, 0.9)) -> dict[str, dict[str, float]]:
    """Per subspace name: ``n`` and the requested quantiles of ``values`` over
    the samples in it (NaNs ignored; NaN where a subspace is empty).

    Example::

        summarize(grad.flatten(1).norm(dim=1), subspace(logits, t))
        # {"S1": {"n": 812, "q50": ..., "q90": ...}, "S2": {...}, "S3": {...}}
    """
    out = {}
    for code, name in NAMES.items():
        v = values[(where == code) & ~torch.isnan(values)].double()
        row: dict[str, float] = {"n": int((where == code).sum())}
        for q in quantiles:
            row[f"q{round(100 * q)}"] = v.quantile(q).item() if v.numel() else math.nan
        out[name] = row
    return out
