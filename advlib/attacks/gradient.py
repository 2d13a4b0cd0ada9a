"""One-step and iterative gradient attacks: FGSM (Goodfellow et al. 2015) and
the basic iterative method IFGS (Kurakin et al. 2017), driven by any of the
four perturbation sources of :mod:`advlib.losses`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks, norms
from .. import losses as _losses
from ._common import (
    AttackResult, Box, attacking, begin, check_inputs, finite_rows, judged, logits_of, project_box, start,
)


def _loss_gradient(
    model: nn.Module, x: Tensor, goal: Tensor, loss: _losses.Loss, targeted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at ``x``, the gradient of the per-sample loss value (samples
    are independent in eval mode, so the gradient of the sum is per sample),
    and which samples have finite logits and gradient."""
    xg = x.detach().requires_grad_(True)
    logits = logits_of(model, xg)
    return (logits.detach(), *_gradient(xg, logits, goal, loss, targeted))


def _gradient(xg: Tensor, logits: Tensor, goal: Tensor, loss: _losses.Loss, targeted: bool) -> tuple[Tensor, Tensor]:
    """:func:`_loss_gradient` after the forward pass ``logits = model(xg)``: the gradient and which samples are finite."""
    (grad,) = torch.autograd.grad(loss.value(logits, goal, targeted=targeted).sum(), xg)
    return grad, finite_rows(logits.detach()) & finite_rows(grad)


def fgsm(
    model: nn.Module,
    x: Tensor,
    *,
    label: Tensor | None = None,
    target: Tensor | None = None,
    eps: float,
    p: float = math.inf,
    loss: _losses.Loss = _losses.ce,
    clip: Box = (0.0, 1.0),
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of Lp size
    ``eps`` along the steepest direction of the loss.

    ``r = eps * sign(grad_x CE(f(x), label))`` for ``p = inf`` (the paper's
    method); for other ``p`` the step is ``eps`` times the unit-Lp steepest
    direction (``p = 2``: the normalised gradient, the "fast gradient
    method"). With a sign loss (``losses.ce_sign``) the step is
    ``sign(grad)`` rescaled to Lp size ``eps``, for every ``p``: the sign is
    kept (:meth:`advlib.losses.Loss.direction`, the one place it is taken).

    Args:
        model: classifier returning logits ``[N, C]``.
        x: inputs ``[N, ...]`` inside ``clip``.
        label: untargeted, ``[N]`` the labels to move away from (default: the
            model's labels of ``x``); for the papers' protocol, the true labels.
        target: ``[N]`` classes to move towards (a targeted step); not with ``label``.
        eps: the Lp size of the step (finite, >= 0), before clipping to the box.
        p: the norm of the step, in [1, inf].
        loss: the perturbation source, a :class:`advlib.losses.Loss` (default
            cross-entropy).
        clip: the input box, or ``None``.

    Returns:
        :class:`AttackResult`; ``success`` is judged on the clipped ``x_adv``:
        its label differs from ``label`` (untargeted) or equals ``target``.
        ``iterations`` as in :class:`AttackResult`: one iteration is the one
        gradient step, so 1 for every sample. A sample whose gradient or
        logits are NaN or inf is returned at ``x``, ``success=False``.

    Example::

        res = fgsm(model, x, label=y, eps=0.1)
        print(res.success_rate)
    """
    x, clip = check_inputs(x, clip)
    eps = checks.number(eps, "eps", low=0)
    p = norms.check_p(p)
    loss = _losses.check(loss)
    with attacking(model):
        # One forward pass gives both the labels to start from and the gradient.
        xg = x.detach().requires_grad_(True)
        logits = logits_of(model, xg)
        label_orig, label, target = start(logits, x, label=label, target=target)
        targeted = target is not None
        grad, ok = _gradient(xg, logits, target if targeted else label, loss, targeted)
        x_adv = x - eps * loss.direction(grad.masked_fill(~norms.per_sample(ok, grad), 0.0), p)
        return judged(
            model, x, x_adv, clip=clip, label_orig=label_orig, iterations=torch.ones_like(label_orig),
            target=target, label=label, failed=~ok,
        )


def fgsm_min_eps(
    model: nn.Module,
    x: Tensor,
    *,
    label: Tensor | None = None,
    fraction: float = 0.9,
    p: float = math.inf,
    clip: Box = (0.0, 1.0),
    rtol: float = 1e-3,
    batch_size: int | None = None,
) -> tuple[float, AttackResult]:
    """The DeepFool paper's protocol for fast gradient sign: the smallest
    ``eps`` for which at least ``fraction`` of the batch is misclassified
    (label differs from ``label``, the true labels in the protocol; default
    the model's labels of ``x``).

    The FGSM direction (cross-entropy, steepest for ``p``) does not depend on
    ``eps``, so it is computed once; ``eps`` is then bracketed by doubling and
    bisected to relative precision ``rtol`` (in (0, 1): bisection to an
    exact point never ends), each trial costing one forward pass of the
    batch. The returned ``eps`` always reaches ``fraction`` (the bracket's
    upper end); if the misclassification rate is not monotone in ``eps`` it is
    the smallest such value the bisection saw.

    A sample whose gradient at ``x`` is NaN or inf, or whose logits at
    ``x - eps d`` are, counts as NOT misclassified at that ``eps`` (a NaN is
    no label), and the result returns it at ``x`` with ``success=False``.

    ``batch_size`` splits every pass into chunks (the whole test set of a
    large model does not fit in memory at once); the result is the same.

    Returns:
        ``(eps, result)`` with ``result`` what ``fgsm(model, x, label=label,
        eps=eps, p=p, clip=clip)`` returns (``iterations``: 1 for every sample).

    Raises:
        ValueError: if ``fraction`` is not reached even when the step covers
            the whole box.
    """
    x, clip = check_inputs(x, clip)
    fraction = checks.number(fraction, "fraction", low=0, high=1, low_open=True)
    p = norms.check_p(p)
    rtol = checks.number(rtol, "rtol", low=0, high=1, low_open=True, high_open=True)
    batch_size = checks.integer(batch_size, "batch_size", low=1, none=True)
    size = batch_size or x.shape[0]
    chunks = range(0, x.shape[0], size)
    with attacking(model):
        with torch.no_grad():
            logits0 = torch.cat([logits_of(model, x[i : i + size]) for i in chunks])
        label_orig, label, _ = start(logits0, x, label=label, target=None)
        grads = [_loss_gradient(model, x[i : i + size], label[i : i + size], _losses.ce, False) for i in chunks]
        ok = torch.cat([g[2] for g in grads])
        grad = torch.cat([g[1] for g in grads]).masked_fill(~norms.per_sample(ok, x), 0.0)
        direction = _losses.ce.direction(grad, p)
        del grads

        @torch.no_grad()
        def rate(eps: float) -> float:
            x_eps = project_box(x - eps * direction, clip)
            logits = torch.cat([logits_of(model, x_eps[i : i + size]) for i in chunks])
            wrong = (logits.argmax(1) != label) & finite_rows(logits) & ok
            return wrong.float().mean().item()

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
        return hi, judged(
            model, x, x - hi * direction, clip=clip, label_orig=label_orig, label=label,
            iterations=torch.ones_like(label_orig), failed=~ok, batch_size=batch_size,
        )


def ifgs(
    model: nn.Module,
    x: Tensor,
    *,
    label: Tensor | None = None,
    target: Tensor | None = None,
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
    perturbation), where ``d_i`` is :meth:`advlib.losses.Loss.direction` of
    ``grad_x loss.value(x_i)``: the sign of the CE gradient for
    ``losses.ce_sign`` (the classic method), the gradient itself for ``ce``,
    ``logit`` and ``m_logit``.

    Args:
        model: classifier returning logits ``[N, C]``.
        x: inputs ``[N, ...]`` inside ``clip``.
        label: untargeted, ``[N]`` the labels to move away from (default: the
            model's labels of ``x``).
        target: ``[N]`` classes to move towards (targeted); not with ``label``.
        loss: the perturbation source, a :class:`advlib.losses.Loss`.
        alpha: the multiplier of every step (default Kurakin's 1/255 when
            ``step_l2`` is not given); finite, > 0.
        step_l2: instead of ``alpha``, the L2 size of every step; finite, > 0.
        eps: radius (finite, > 0) of the ball around ``x`` the iterates stay
            in (``None``: only the box).
        ball: the norm of that ball, an order in [1, inf] (exact projection
            for inf and 2; rescaling, which stays inside, for the others).
        max_iter: steps at most (>= 1).
        stop_on_success: samples that reach the goal leave the batch; if
            False every sample takes ``max_iter`` steps (for trajectories).
        trace: record per iteration ``[max_iter + 1, N]`` tensors (NaN where a
            sample had left): softmax and logit of the original label
            (``prob_orig``, ``logit_orig``) and of the goal, ``target`` or
            ``label`` (``prob_label``, ``logit_label``), the L2 norm of the
            loss gradient (``grad_norm``) and of the perturbation
            (``perturbation_norm``).
        progress: show a tqdm bar over iterations.

    Returns:
        :class:`AttackResult`; ``iterations`` as in :class:`AttackResult`:
        one iteration is one gradient step, and a sample's count is the step
        at which it first met the goal (``max_iter`` if never), also with
        ``stop_on_success=False``, whose later steps only continue the
        trajectory. ``success`` is judged on the returned ``x_adv``. A sample
        whose gradient or logits become NaN or inf leaves there and is
        returned at ``x``, ``success=False``.

    Example::

        res = ifgs(model, x, target=t, loss=losses.logit, step_l2=0.1)
        res.iterations.float().mean()
    """
    x, clip = check_inputs(x, clip)
    loss = _losses.check(loss)
    if alpha is not None and step_l2 is not None:
        raise ValueError("give alpha (equal multiplier) or step_l2 (equal perturbation), not both")
    alpha = checks.number(alpha, "alpha", low=0, low_open=True, none=True)
    step_l2 = checks.number(step_l2, "step_l2", low=0, low_open=True, none=True)
    if alpha is None and step_l2 is None:
        alpha = 1 / 255  # Kurakin et al.: one grey level per step
    size = alpha if alpha is not None else step_l2
    eps = checks.number(eps, "eps", low=0, low_open=True, none=True)
    ball = checks.norm_order(ball, "ball")
    max_iter = checks.integer(max_iter, "max_iter", low=1)
    stop_on_success = checks.flag(stop_on_success, "stop_on_success")
    trace = checks.flag(trace, "trace")
    progress = checks.flag(progress, "progress")
    n = x.shape[0]

    with attacking(model):
        _, label_orig, label, target = begin(model, x, label=label, target=target)
        targeted = target is not None
        goal = target if targeted else label
        x_adv = x.clone()
        iterations = torch.full((n,), max_iter, dtype=torch.long, device=x.device)
        reached = torch.zeros(n, dtype=torch.bool, device=x.device)
        failed = torch.zeros(n, dtype=torch.bool, device=x.device)
        records = {}
        if trace:
            names = ("prob_orig", "prob_label", "logit_orig", "logit_label", "grad_norm", "perturbation_norm")
            records = {k: torch.full((max_iter + 1, n), math.nan, dtype=x.dtype, device=x.device) for k in names}
        active = torch.arange(n, device=x.device)

        bar = tqdm(total=max_iter, desc=f"IFGS {loss.name}", disable=not progress, leave=False)
        for i in range(max_iter + 1):
            logits, grad, ok = _loss_gradient(model, x_adv[active], goal[active], loss, targeted)
            if not ok.all():
                # NaN or inf: the sample fails alone, and leaves.
                failed[active[~ok]] = True
                iterations[active[~ok]] = i
                active, logits, grad = active[ok], logits[ok], grad[ok]
            pred = logits.argmax(1)
            met = pred == goal[active] if targeted else pred != goal[active]
            first = met & ~reached[active]
            iterations[active[first]] = i
            reached[active[first]] = True
            if trace:
                _record(records, i, active, logits, label_orig[active], goal[active], grad, x_adv[active] - x[active])
            keep = ~met if stop_on_success else torch.ones_like(met)
            if i == max_iter or not keep.any():
                break
            d = loss.direction(grad[keep], None if step_l2 is None else 2)
            active = active[keep]
            delta = x_adv[active] - size * d - x[active]
            if eps is not None:
                delta = norms.project_ball(delta, ball, eps)
            x_adv[active] = project_box(x[active] + delta, clip)
            bar.update(1)
        bar.close()
        return judged(
            model, x, x_adv, clip=clip, label_orig=label_orig, iterations=iterations, target=target, label=label,
            failed=failed, trace=records,
        )


def _record(records, i, idx, logits, orig, label, grad, delta) -> None:
    prob = logits.softmax(1)
    records["prob_orig"][i, idx] = prob.gather(1, orig[:, None]).squeeze(1)
    records["prob_label"][i, idx] = prob.gather(1, label[:, None]).squeeze(1)
    records["logit_orig"][i, idx] = logits.gather(1, orig[:, None]).squeeze(1)
    records["logit_label"][i, idx] = logits.gather(1, label[:, None]).squeeze(1)
    records["grad_norm"][i, idx] = norms.lp_norm(grad, 2)
    records["perturbation_norm"][i, idx] = norms.lp_norm(delta, 2)
