"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import norms
from ._common import AttackResult, Box, attacking, check_inputs, logits_of


def _check_options(overshoot: float, max_iter: int, candidates: int, step_margin: float) -> None:
    if not overshoot >= 0:
        raise ValueError(f"overshoot must be >= 0, got {overshoot!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
        raise ValueError(f"candidates must be an integer >= 2, got {candidates!r}")
    if not step_margin >= 0:
        raise ValueError(f"step_margin must be >= 0, got {step_margin!r}")


def deepfool(
    model: nn.Module,
    x: Tensor,
    *,
    p: float = 2,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int = 10,
    clip: Box = (0.0, 1.0),
    step_margin: float = 1e-4,
    skip_saturated: bool = True,
    progress: bool = False,
) -> AttackResult:
    """DeepFool: the smallest Lp perturbation that changes the model's label,
    found by repeatedly projecting on the closest face of the linearised
    decision region (Algorithm 2; Algorithm 1 for a model with one logit).

    Minimises ``||r||_p`` for any ``p`` in [1, inf] (Sec. 3.3): at iterate
    ``x_i``, for each candidate ``k``, ``w'_k = grad(f_k - f_k0)`` and
    ``f'_k = f_k - f_k0``; the step goes to the face ``l = argmin |f'_k| / ||w'_k||_q``
    (``q`` the dual of ``p``) along the steepest unit-Lp direction of ``w'_l``.

    Args:
        model: classifier returning logits ``[N, C]`` (``[N, 1]`` for a binary
            model, whose label is ``f > 0``). It is evaluated in eval mode and
            handed back unchanged.
        x: inputs ``[N, ...]``, floating point, inside ``clip``.
        p: the norm minimised; ``float("inf")`` for L-inf (Table 2), 1 allowed.
        overshoot: ``eta``; the iterate is ``x + (1 + eta) * sum(r_i)`` and is
            tested for success as it will be returned (the authors' code).
        max_iter: steps at most; a sample still not flipped is ``success=False``.
        candidates: the ``K`` classes of highest original logit considered
            (the original label included), fixed from ``f(x)``.
        clip: the input box ``(low, high)``, or ``None`` for no box (the
            authors' code). With a box the iterate is clipped and linearised
            where it is, and success is tested on that clipped point.
        step_margin: added to each step's Lp length (the authors' 1e-4) so an
            iterate does not stall exactly on the boundary.
        skip_saturated: with a box, leave out of a step every coordinate that
            sits on the box and that the step would push further out, so the
            linearised problem is solved for the pixels that can still move.
            On images with many saturated pixels (MNIST-like) this reaches
            the boundary in about 2 iterations instead of about 5, at the
            price of a slightly larger perturbation (a few percent: fewer,
            longer linear steps overshoot the curved boundary more; see
            ``benchmarks/``). ``False`` is the plain algorithm, whose clipped
            steps creep up to the boundary.
        progress: show a tqdm bar over iterations.

    Returns:
        :class:`AttackResult`; ``perturbation = x_adv - x = (1 + eta) sum(r_i)``
        (after the box).

    Cost per iteration: one forward pass of the samples not yet flipped and
    ``K - 1`` vector-Jacobian products batched into one backward call;
    flipped samples leave the batch.

    Example::

        res = deepfool(model, x, p=float("inf"))
        rho = metrics.rho_adv(x, res.perturbation, p=float("inf"))
    """
    p = norms.check_p(p)
    check_inputs(x, clip)
    _check_options(overshoot, max_iter, candidates, step_margin)
    n = x.shape[0]
    scale = 1.0 + overshoot

    with attacking(model):
        with torch.no_grad():
            logits0 = logits_of(model, x)
        k = min(candidates, logits0.shape[1])
        cand = logits0.topk(k, dim=1).indices  # [N, K]; column 0 is the original label
        label_orig = cand[:, 0].clone()

        x_adv = x.detach().clone()
        r_tot = torch.zeros_like(x)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        label_adv = label_orig.clone()
        active = torch.arange(n, device=x.device)

        bar = tqdm(total=n, desc=f"DeepFool L{p:g}", disable=not progress, leave=False)
        for i in range(max_iter + 1):
            xa = x_adv[active].requires_grad_(True)
            logits = logits_of(model, xa)
            pred = logits.argmax(dim=1)
            label_adv[active] = pred.detach()
            flipped = pred != label_orig[active]
            bar.update(int(flipped.sum()))
            if i == max_iter or flipped.all():
                break
            # One forward pass served both the success test and the gradients;
            # samples that flipped now are dropped from the step (and from the
            # next forward pass).
            step = _step(logits, xa, cand[active], p, clip if skip_saturated else None, step_margin)
            keep = ~flipped
            idx = active[keep]
            r_tot[idx] += step[keep]
            x_new = x[idx] + scale * r_tot[idx]
            if clip is not None:
                x_new = x_new.clamp(*clip)
                # Keep r_tot what the returned point says it is, so the next
                # step starts from the point it was linearised at.
                r_tot[idx] = (x_new - x[idx]) / scale
            x_adv[idx] = x_new
            iterations[idx] += 1
            active = idx
        bar.close()

    success = label_adv != label_orig
    return AttackResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=success,
        iterations=iterations,
        label_orig=label_orig,
        label_adv=label_adv,
    )


def _step(logits: Tensor, xa: Tensor, cand: Tensor, p: float, clip: Box, margin: float) -> Tensor:
    """One DeepFool step ``r_i`` for each sample of ``xa`` [A, ...]; coordinates
    on the box ``clip`` (if given) that the step would push out are left out."""
    a, k = cand.shape
    rows = torch.arange(a, device=xa.device)
    # grad(f_k - f_k0) for the K-1 candidates, in one batched backward call.
    seeds = torch.zeros(k - 1, a, logits.shape[1], dtype=logits.dtype, device=logits.device)
    seeds[torch.arange(k - 1)[:, None], rows[None, :], cand[:, 1:].T] = 1.0
    seeds[:, rows, cand[:, 0]] -= 1.0
    (w,) = torch.autograd.grad(logits, xa, grad_outputs=seeds, is_grads_batched=True)
    w = w.detach()  # [K-1, A, ...]
    f = (logits.gather(1, cand[:, 1:]) - logits.gather(1, cand[:, :1])).detach().T  # [K-1, A], <= 0

    if clip is not None:
        # A coordinate on the box cannot move outwards: leave it out of w'.
        x0 = xa.detach().unsqueeze(0)
        stuck = ((w > 0) & (x0 >= clip[1])) | ((w < 0) & (x0 <= clip[0]))
        w = w.masked_fill(stuck, 0.0)

    q = norms.dual(p)
    wnorm = torch.linalg.vector_norm(w.flatten(2), ord=q, dim=2)  # [K-1, A]
    dist = f.abs() / wnorm
    dist = torch.where(wnorm > 0, dist, torch.full_like(dist, float("inf")))
    best, l = dist.min(dim=0)  # [A]
    w_l = w[l, rows]
    step = (best + margin).reshape(-1, *([1] * (xa.dim() - 1))) * norms.steepest(w_l, p)
    # A sample with no usable gradient (all candidates flat) cannot move.
    return torch.where(torch.isfinite(best).reshape(-1, *([1] * (xa.dim() - 1))), step, torch.zeros_like(step))
