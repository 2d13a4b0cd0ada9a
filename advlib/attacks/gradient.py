"""One-step and iterative gradient attacks: FGSM (Goodfellow et al. 2015) and
the basic iterative method IFGS (Kurakin et al. 2017), driven by any of the
four perturbation sources of :mod:`advlib.losses`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import losses as _losses
from .. import norms
from ._common import AttackResult, Box, attacking, check_inputs, check_labels, judged, logits_of, num_classes, project_box


def _goal(pred: Tensor, label: Tensor, targeted: bool) -> Tensor:
    return pred == label if targeted else pred != label


def _loss_gradient(model: nn.Module, x: Tensor, label: Tensor, loss: _losses.Loss, targeted: bool) -> tuple[Tensor, Tensor]:
    """Logits at ``x`` and the gradient of the per-sample loss value (samples
    are independent in eval mode, so the gradient of the sum is per sample)."""
    xg = x.detach().requires_grad_(True)
    logits = logits_of(model, xg)
    (grad,) = torch.autograd.grad(loss.value(logits, label, targeted=targeted).sum(), xg)
    return logits.detach(), grad


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    p: float = math.inf,
    loss: _losses.Loss = _losses.ce,
    targeted: bool = False,
    clip: Box = (0.0, 1.0),
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of Lp size
    ``eps`` along the steepest direction of the loss.

    ``r = eps * sign(grad_x CE(f(x), y))`` for ``p = inf`` (the paper's method);
    for other ``p`` the step is ``eps`` times the unit-Lp steepest direction
    (``p = 2``: the normalised gradient, the "fast gradient method").

    Args:
        model: classifier returning logits ``[N, C]``.
        x: inputs ``[N, ...]`` inside ``clip``.
        y: labels ``[N]``: the true labels (untargeted: move away from them)
            or the targets (``targeted=True``: move towards them).
        eps: the Lp size of the step, before clipping to the box.
        loss: the perturbation source (default cross-entropy).
        clip: the input box, or ``None``.

    Returns:
        :class:`AttackResult`; untargeted ``success`` means the label of the
        clipped ``x_adv`` differs from ``y``.

    Example::

        res = fgsm(model, x, y, eps=0.1)
        print(res.success_rate)
    """
    check_inputs(x, clip)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    with attacking(model):
        y = check_labels(y, x, num_classes(model, x), "targets" if targeted else "labels")
        logits, grad = _loss_gradient(model, x, y, loss, targeted)
        x_adv = project_box(x - eps * norms.steepest(grad, p), clip).detach()
        return judged(
            model, x, x_adv, label_orig=logits.argmax(1), iterations=torch.ones_like(y),
            target=y if targeted else None, label=None if targeted else y,
        )


def fgsm_min_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    fraction: float = 0.9,
    p: float = math.inf,
    clip: Box = (0.0, 1.0),
    rtol: float = 1e-3,
    batch_size: int | None = None,
) -> tuple[float, AttackResult]:
    """The DeepFool paper's protocol for fast gradient sign: the smallest
    ``eps`` for which at least ``fraction`` of the batch is misclassified.

    The FGSM direction does not depend on ``eps``, so it is computed once;
    ``eps`` is then bracketed by doubling and bisected to relative precision
    ``rtol``, each trial costing one forward pass of the batch. The returned
    ``eps`` always reaches ``fraction`` (the bracket's upper end); if the
    misclassification rate is not monotone in ``eps`` it is the smallest
    such value the bisection saw.

    ``batch_size`` splits every pass into chunks (the whole test set of a
    large model does not fit in memory at once); the result is the same.

    Returns:
        ``(eps, result)`` with ``result`` what ``fgsm(..., eps=eps)`` returns.

    Raises:
        ValueError: if ``fraction`` is not reached even when the step covers
            the whole box.
    """
    check_inputs(x, clip)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    size = batch_size or x.shape[0]
    chunks = range(0, x.shape[0], size)
    with attacking(model):
        y = check_labels(y, x, num_classes(model, x))
        parts = [_loss_gradient(model, x[i : i + size], y[i : i + size], _losses.ce, False) for i in chunks]
        label_orig = torch.cat([logits.argmax(1) for logits, _ in parts])
        direction = norms.steepest(torch.cat([grad for _, grad in parts]), p)
        del parts

        @torch.no_grad()
        def labels_at(eps: float) -> Tensor:
            x_eps = project_box(x - eps * direction, clip)
            return torch.cat([logits_of(model, x_eps[i : i + size]).argmax(1) for i in chunks])

        def rate(eps: float) -> float:
            return (labels_at(eps) != y).float().mean().item()

        # The largest useful step: one that can cross the whole box.
        span = (clip[1] - clip[0]) if clip is not None else 1e3
        limit = span * (x[0].numel() ** (1 / p) if p != math.inf else 1.0)
        lo, hi = 0.0, span / 256
        if rate(0.0) >= fraction:
            hi = 0.0
        else:
            while rate(hi) < fraction:
                lo, hi = hi, 2 * hi
                if lo > limit:
                    raise ValueError(
                        f"fast gradient sign misclassifies less than {fraction:.0%} of the batch "
                        f"even at eps = {lo:.3g}; the protocol's eps does not exist for this model"
                    )
            while hi - lo > rtol * hi:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if rate(mid) >= fraction else (mid, hi)
        x_adv = project_box(x - hi * direction, clip).detach()
        label_adv = labels_at(hi)
    return hi, AttackResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=label_adv != y,
        iterations=torch.ones_like(y),
        label_orig=label_orig,
        label_adv=label_adv,
    )


def ifgs(
    model: nn.Module,
    x: Tensor,
    label: Tensor,
    *,
    targeted: bool = False,
    loss: _losses.Loss = _losses.ce_sign,
    alpha: float | None = None,
    step_l2: float | None = None,
    eps: float | None = None,
    ball: float = math.inf,
    max_iter: int = 100,
    stop_on_success: bool = True,
    clip: Box = (0.0, 1.0),
    trace: bool = False,
    progress: bool = False,
) -> AttackResult:
    """The basic iterative method (Kurakin et al. 2017, "IFGS"), with any
    perturbation source of Ozbulak et al.:

    ``x_{i+1} = clip_box(clip_{x, eps}(x_i - s_i))``, ``s_i = alpha * d_i``
    (equal multiplier) or ``s_i = step_l2 * d_i / ||d_i||_2`` (equal
    perturbation), where ``d_i = loss.direction(grad_x loss.value(x_i))``:
    the sign of the CE gradient for ``losses.ce_sign`` (the classic method),
    the gradient itself for ``ce``, ``logit`` and ``m_logit``.

    Args:
        model: classifier returning logits ``[N, C]``.
        x: inputs ``[N, ...]`` inside ``clip``.
        label: ``[N]`` targets (``targeted=True``) or true labels.
        loss: the perturbation source, one of :mod:`advlib.losses`.
        alpha: the multiplier of every step (default Kurakin's 1/255 when
            ``step_l2`` is not given).
        step_l2: instead of ``alpha``, the L2 size of every step.
        eps: radius of the ball around ``x`` the iterates stay in (``None``:
            only the box).
        ball: the norm of that ball (inf or 2).
        max_iter: steps at most.
        stop_on_success: samples that reach the goal leave the batch; if
            False every sample takes ``max_iter`` steps (for trajectories).
        trace: record per iteration ``[max_iter + 1, N]`` tensors (NaN where a
            sample had left): softmax and logit of the original label and of
            ``label``, the L2 norm of the loss gradient and of the perturbation.

    Returns:
        :class:`AttackResult`; ``iterations`` is the step at which a sample
        first met the goal (``max_iter`` if never); ``success`` is judged on
        the returned ``x_adv``.

    Example::

        res = ifgs(model, x, t, targeted=True, loss=losses.logit, step_l2=0.1)
        res.iterations.float().mean()
    """
    check_inputs(x, clip)
    if alpha is not None and step_l2 is not None:
        raise ValueError("give alpha (equal multiplier) or step_l2 (equal perturbation), not both")
    if alpha is None and step_l2 is None:
        alpha = 1 / 255  # Kurakin et al.: one grey level per step
    size = alpha if alpha is not None else step_l2
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"the step size must be a finite number > 0, got {size!r}")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be None or a finite number > 0, got {eps!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    n = x.shape[0]

    with attacking(model):
        label = check_labels(label, x, num_classes(model, x), "targets" if targeted else "labels")
        x_adv = x.detach().clone()
        iterations = torch.full((n,), max_iter, dtype=torch.long, device=x.device)
        reached = torch.zeros(n, dtype=torch.bool, device=x.device)
        label_adv = torch.empty_like(label)
        records = {}
        if trace:
            names = ("prob_orig", "prob_label", "logit_orig", "logit_label", "grad_norm", "perturbation_norm")
            records = {k: torch.full((max_iter + 1, n), math.nan, dtype=x.dtype, device=x.device) for k in names}
        active = torch.arange(n, device=x.device)

        bar = tqdm(total=max_iter, desc=f"IFGS {loss.name}", disable=not progress, leave=False)
        for i in range(max_iter + 1):
            logits, grad = _loss_gradient(model, x_adv[active], label[active], loss, targeted)
            pred = logits.argmax(1)
            if i == 0:
                label_orig = pred.clone()  # every sample is active at step 0
            label_adv[active] = pred
            met = _goal(pred, label[active], targeted)
            first = met & ~reached[active]
            iterations[active[first]] = i
            reached[active[first]] = True
            if trace:
                _record(records, i, active, logits, label_orig[active], label[active], grad, x_adv[active] - x[active])
            keep = ~met if stop_on_success else torch.ones_like(met)
            if i == max_iter or not keep.any():
                break
            d = loss.direction(grad[keep])
            if step_l2 is not None:
                d = d / norms.lp_norm(d, 2).clamp_min(torch.finfo(d.dtype).tiny).reshape(-1, *([1] * (d.dim() - 1)))
            active = active[keep]
            delta = x_adv[active] - size * d - x[active]
            if eps is not None:
                delta = norms.project_ball(delta, ball, eps)
            x_adv[active] = project_box(x[active] + delta, clip)
            bar.update(1)
        bar.close()

    success = _goal(label_adv, label, targeted)
    return AttackResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=success,
        iterations=iterations,
        label_orig=label_orig,
        label_adv=label_adv,
        target=label if targeted else None,
        trace=records,
    )


def _record(records, i, idx, logits, orig, label, grad, delta) -> None:
    prob = logits.softmax(1)
    records["prob_orig"][i, idx] = prob.gather(1, orig[:, None]).squeeze(1)
    records["prob_label"][i, idx] = prob.gather(1, label[:, None]).squeeze(1)
    records["logit_orig"][i, idx] = logits.gather(1, orig[:, None]).squeeze(1)
    records["logit_label"][i, idx] = logits.gather(1, label[:, None]).squeeze(1)
    records["grad_norm"][i, idx] = norms.lp_norm(grad, 2)
    records["perturbation_norm"][i, idx] = norms.lp_norm(delta, 2)
