"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks, norms
from ._common import AttackResult, Box, attacking, check_inputs, finite_rows, judged, logits_of, start

# A stale candidate whose estimated distance is within this factor of the nearest
# recomputed one is recomputed too. 1 would trust the estimates exactly; 1.25 gave
# the points of refresh=None on small random networks as often as refresh=2 did
# (1 fell a few percent short), for about 2% more samples forwarded on the book's
# LeNet and FC500-150-10.
_SLACK = 1.25


def deepfool(
    model: nn.Module,
    x: Tensor,
    *,
    label: Tensor | None = None,
    p: float = 2,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int = 10,
    clip: Box = (0.0, 1.0),
    step_margin: float = 1e-4,
    min_progress: float = 0.5,
    refresh: int | None = 1,
    trace: bool = False,
    progress: bool = False,
) -> AttackResult:
    """DeepFool: the smallest Lp perturbation that changes the model's label,
    found by repeatedly projecting on the closest face of the linearised
    decision region (Algorithm 2; Algorithm 1 for a model with one logit).
    Untargeted only.

    Minimises ``||r||_p`` for any ``p`` in [1, inf] (Sec. 3.3): at iterate
    ``x_i``, for each candidate ``k``, ``w'_k = grad(f_k - f_k0)`` and
    ``f'_k = f_k - f_k0``; the step goes to the face ``l = argmin |f'_k| / ||w'_k||_q``
    (``q`` the dual of ``p``) along the steepest unit-Lp direction of ``w'_l``.

    Args:
        model: classifier returning logits ``[N, C]`` (``[N, 1]`` for a binary
            model, whose label is ``f > 0``). It is evaluated in eval mode and
            handed back unchanged.
        x: inputs ``[N, ...]``, floating point, inside ``clip``.
        label: ``[N]`` the class ``k0`` to move away from (default: the
            model's label of ``x``, ``argmax`` of its logits). A sample whose
            model label already differs from it is returned unchanged, a success.
        p: the norm minimised; ``float("inf")`` for L-inf (Table 2), 1 allowed.
        overshoot: ``eta`` >= 0, finite; the iterate is ``x + (1 + eta) * sum(r_i)``
            and is tested for success as it will be returned (the authors' code).
        max_iter: steps at most; a sample still not flipped is ``success=False``.
        candidates: the ``K`` classes of highest original logit considered
            (``label`` included), fixed from ``f(x)``.
        clip: the input box ``(low, high)``, or ``None`` for no box (the
            authors' code). With a box each iterate is clipped, linearised where
            it is, and tested for success there (as Foolbox 3 does).
        step_margin: >= 0, finite, added to each step's Lp length (the
            authors' 1e-4) so an iterate does not stall exactly on the boundary.
        min_progress: with a box, the pixels that sit on it cannot move
            outwards, so a clipped step may close only part of the linearised
            distance to the boundary. A step that would close less than this
            fraction is solved within the pixels that can move instead: the
            nearest face by the distance within them, and a step that closes
            this fraction of it. ``0`` keeps the plain clipped steps (Foolbox 3's
            DeepFool), which creep towards the boundary when the gradient lies
            mostly on saturated pixels and may never reach it (the DeepFool
            chapter of the book measures both; its NIN on zero-padded images
            is such a case). Where the clipped steps close at least
            half of the distance anyway, as on MNIST-like images, the default's
            result is theirs. ``1`` takes every step the box touches within the
            free pixels: fewer, longer steps, and perturbations a few percent
            larger (the linearisation is trusted further).
        refresh: after the first iteration, recompute the gradients of only
            this many candidates: those nearest by their estimated distance,
            ``|f'_k|`` at the iterate over ``||w'_k||_q`` from when it was last
            computed, and, for the samples where some other candidate's
            estimate comes within 25% of the nearest recomputed distance, those
            candidates too (one more forward pass of just those samples). The
            class chosen at a step rarely changes along a sample's path, and
            the backward passes are the cost of an iteration, so this makes
            later iterations several times cheaper. ``None`` recomputes all
            ``K - 1`` at every iteration (Algorithm 2 to the letter); on affine
            models the two are identical, and on the book's LeNet and
            FC500-150-10 the default returned the very points of ``None`` on
            all of 500 images (the peers chapter measures it in every build).
        trace: also return the iterates, ``trace["x"]`` ``[steps + 1, N, ...]``
            (``x`` first; ``steps`` the largest ``iterations``); the rows after a
            sample finished repeat its returned point.
        progress: show a tqdm bar of the samples flipped.

    Returns:
        :class:`AttackResult`; ``perturbation = x_adv - x = (1 + eta) sum(r_i)``
        (after the box). ``iterations`` as in :class:`AttackResult`: here one
        iteration is one linearise-and-step, and a sample's count is the steps
        it took until its label changed (``max_iter`` if it never did).
        ``success`` is judged by one forward pass on the returned batch (a
        sample seen flipped inside a smaller batch but not there, exactly on
        the boundary, is ``success=False``). A sample whose iterate or logits
        become NaN or inf stops there and is returned at ``x``, ``success=False``.

    Cost per iteration, for the samples not yet flipped only (flipped samples
    leave the batch): one forward pass, and ``K - 1`` backward passes at the
    first iteration, ``refresh`` at the later ones (and a forward and backward
    pass of the few samples whose estimates call for more); one more forward
    pass of the whole batch judges the result.

    Example::

        res = deepfool(model, x, p=float("inf"))
        rho = metrics.rho_adv(x, res.perturbation, p=float("inf"))
    """
    p = norms.check_p(p)
    x, clip = check_inputs(x, clip)
    overshoot = checks.number(overshoot, "overshoot", low=0)
    max_iter = checks.integer(max_iter, "max_iter", low=1)
    candidates = checks.integer(candidates, "candidates", low=2)
    step_margin = checks.number(step_margin, "step_margin", low=0)
    min_progress = checks.number(min_progress, "min_progress", low=0, high=1)
    refresh = checks.integer(refresh, "refresh", low=1, none=True)
    trace = checks.flag(trace, "trace")
    progress = checks.flag(progress, "progress")
    n = x.shape[0]
    scale = 1.0 + overshoot
    bar = tqdm(total=n, desc=f"DeepFool L{p:g}", disable=not progress, leave=False)

    with attacking(model):
        x_adv = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        failed = torch.zeros(n, dtype=torch.bool, device=x.device)
        # The samples not flipped yet, and their state: iterate, candidates, and
        # each candidate's ||w'_k||_q from when it was last computed. Flipped
        # samples are written out and dropped.
        active = torch.arange(n, device=x.device)
        xi = x
        rows = [x] if trace else None
        for i in range(max_iter + 1):
            xa = xi.detach().requires_grad_(True)
            logits = logits_of(model, xa)
            if i == 0:
                label_orig, label, _ = start(logits, x, label=label, target=None)
                # The candidates are fixed by the original logits (the authors'
                # code); column 0 is the label moved away from, first even
                # where logits tie (topk's order among ties is unspecified).
                k = min(candidates, logits.shape[1])
                cand = logits.detach().scatter(1, label[:, None], math.inf).topk(k, dim=1).indices
                wnorm = torch.zeros(n, k - 1, dtype=logits.dtype, device=x.device)
            xi = xa.detach()
            pred = logits.argmax(dim=1).detach()
            flipped = pred != cand[:, 0]
            # A NaN or inf iterate or logit ends the sample's attack, a failure.
            broken = ~(finite_rows(logits.detach()) & finite_rows(xi))
            if broken.any():
                failed[active[broken]] = True
                flipped &= ~broken
                xi = torch.where(norms.per_sample(broken, xi), x[active], xi)
            done_now = flipped | broken
            if trace and i > 0:
                row = rows[-1].clone()
                row[active] = xi
                rows.append(row)
            bar.update(int(flipped.sum()))
            if i == max_iter or done_now.all():
                break
            # One forward pass serves both the success test and the gradients;
            # the samples that finished now are left out of the next one.
            step, wnorm = _step(
                model, logits, xa, cand, wnorm, p=p, clip=clip, margin=step_margin,
                min_progress=min_progress, refresh=None if i == 0 else refresh,
            )
            if done_now.any():
                done = active[done_now]
                x_adv[done], iterations[done] = xi[done_now], i
                keep = ~done_now
                active, xi, cand, wnorm, step = (t[keep] for t in (active, xi, cand, wnorm, step))
            # x_{i+1} = x + (1 + eta) sum(r_j), clipped, is x_i + (1 + eta) r_i: the
            # sum restarts from the clipped point each time, so the next step starts
            # from the point it was linearised at. Written in place into the fresh step.
            xi = step.mul_(scale).add_(xi)
            if clip is not None:
                xi.clamp_(*clip)
        x_adv[active], iterations[active] = xi, i
    bar.close()

    with attacking(model):
        return judged(
            model, x, x_adv, clip=clip, label_orig=label_orig, label=label, iterations=iterations, failed=failed,
            trace={"x": torch.stack(rows)} if trace else None,
        )


def _step(
    model: nn.Module,
    logits: Tensor,
    xa: Tensor,
    cand: Tensor,
    stale: Tensor,
    *,
    p: float,
    clip: Box,
    margin: float,
    min_progress: float,
    refresh: int | None,
) -> tuple[Tensor, Tensor]:
    """One DeepFool step ``r_i`` for each sample of ``xa`` [A, ...].

    ``stale`` [A, K-1] holds each candidate's ``||w'||_q`` from when it was
    last computed; returns the step and ``stale`` updated with the norms
    computed now."""
    a, k = cand.shape
    f = (logits.gather(1, cand[:, 1:]) - logits.gather(1, cand[:, :1])).detach()  # [A, K-1], <= 0
    q = norms.dual(p)
    if refresh is None or refresh >= k - 1:
        cols = torch.arange(k - 1, device=xa.device).expand(a, -1)
        guess = None
    else:
        guess = _distance(f.abs(), stale)
        cols = guess.topk(refresh, dim=1, largest=False).indices
    w, wn = _gradients(logits, xa, cand, cols, q)  # J x [A, ...], [A, J]
    fresh = stale.scatter(1, cols, wn)
    gap = f.gather(1, cols).abs()
    step = _face_step(w, gap, wn, xa, p=p, clip=clip, margin=margin, min_progress=min_progress)
    if guess is not None:
        # A candidate left stale may yet be the nearest: where its distance estimated
        # with its last norm comes within _SLACK of the nearest recomputed one, it is
        # recomputed too, for those samples only (one more forward pass of just their
        # rows), and their step is chosen again among all the candidates recomputed.
        est = guess.scatter(1, cols, math.inf)
        need = est < _distance(gap, wn).min(dim=1).values[:, None] * _SLACK
        some = need.any(dim=1).nonzero().squeeze(1)
        if len(some):
            m = int(need[some].sum(dim=1).max())
            more = est[some].topk(m, dim=1, largest=False).indices  # [S, m]
            xs = xa.detach()[some].requires_grad_(True)
            w_more, wn_more = _gradients(logits_of(model, xs), xs, cand[some], more, q)  # m x [S, ...], [S, m]
            fresh[some] = fresh[some].scatter(1, more, wn_more)
            step[some] = _face_step(
                [g[some] for g in w] + w_more, torch.cat([gap[some], f[some].gather(1, more).abs()], dim=1),
                torch.cat([wn[some], wn_more], dim=1), xs.detach(), p=p, clip=clip, margin=margin,
                min_progress=min_progress,
            )
    return step, fresh


def _face_step(
    w: list[Tensor], gap: Tensor, wn: Tensor, xa: Tensor, *, p: float, clip: Box, margin: float, min_progress: float
) -> Tensor:
    """The step to the nearest of the linearised faces whose gradients ``w``
    (J tensors [A, ...]) were computed (``gap`` [A, J] their ``|f'_k|``, ``wn``
    their ``||w'_k||_q``), from the iterate ``xa`` [A, ...]."""
    rows = torch.arange(xa.shape[0], device=xa.device)
    best, l = _distance(gap, wn).min(dim=1)  # [A]
    w_l = _pick(w, l)
    u = norms.steepest(w_l, p)
    # A sample with no usable gradient (all candidates flat: w_l = u = 0) does not move.
    step = norms.per_sample(torch.where(torch.isfinite(best), best + margin, 0.0), xa) * u
    if clip is not None and min_progress > 0:
        # The clipped step gains <w', u> = ||w'||_q less what the pixels the box
        # blocks would have given.
        out = _outward(xa.detach(), clip)
        slow = (_blocked(w_l, u, out, p) > (1 - min_progress) * wn[rows, l]).nonzero().squeeze(1)
        if len(slow):
            step[slow] = _free_step(torch.stack([g[slow] for g in w], dim=1), gap[slow], out[slow], p, margin, min_progress)
    return step


def _distance(gap: Tensor, norm: Tensor) -> Tensor:
    """``|f'_k| / ||w'_k||_q``, the distance to face ``k`` of the linearised region; inf for a flat candidate."""
    return torch.where(norm > 0, gap / norm, torch.full_like(norm, math.inf))


def _pick(w: list[Tensor], l: Tensor) -> Tensor:
    """Row ``a`` of ``w[l[a]]``, for J gradients [A, ...]: copies one row per sample
    (stacking the J gradients would copy all of them)."""
    out = w[0].clone()
    for j in range(1, len(w)):
        at = (l == j).nonzero().squeeze(1)
        if len(at):
            out[at] = w[j][at]
    return out


def _gradients(logits: Tensor, xa: Tensor, cand: Tensor, cols: Tensor, q: float) -> tuple[list[Tensor], Tensor]:
    """``grad(f_k - f_k0)``, J tensors [A, ...], for the candidates ``cols`` [A, J]
    (columns of ``cand[:, 1:]``; ``k0 = cand[:, 0]``) of every sample, and their
    ``||.||_q`` [A, J]: one backward pass each through the graph of the forward
    pass (as fast as a vmap over the seeds, measured, and it works with any model,
    in-place operations included). Each norm is taken as soon as its gradient
    is computed, while it is still in the cache: measured on nine [500, 784]
    gradients, it then costs next to nothing, against 3.6 ms after all nine."""
    a = xa.shape[0]
    rows = torch.arange(a, device=xa.device)
    classes = cand.gather(1, cols + 1)  # [A, J]
    jn = classes.shape[1]
    seeds = torch.zeros(jn, a, logits.shape[1], dtype=logits.dtype, device=logits.device)
    seeds[torch.arange(jn, device=xa.device)[:, None], rows, classes.T] = 1.0
    seeds[:, rows, cand[:, 0]] = -1.0
    w, wn = [], torch.empty(a, jn, dtype=logits.dtype, device=logits.device)
    for j in range(jn):
        w.append(torch.autograd.grad(logits, xa, grad_outputs=seeds[j], retain_graph=j < jn - 1)[0].detach())
        wn[:, j] = norms.norm(w[j].flatten(1), q, dim=1)
    return w, wn


def _outward(x: Tensor, clip: tuple[float, float]) -> Tensor:
    """+1 on the pixels of ``x`` (inside the box) at the box's top, -1 at its
    bottom, 0 inside: the way they cannot move. As ``sign(x - low) - sign(high - x)``,
    exact (a difference of floats is 0 only where they are equal) and in
    float arithmetic throughout, twice as fast as comparisons cast to floats."""
    out = (x - clip[0]).sign_()
    return out.sub_((clip[1] - x).sign_())


def _blocked(w: Tensor, u: Tensor, outward: Tensor, p: float) -> Tensor:
    """The part of ``<w, u>`` (``u`` a steepest direction of ``w``, so
    ``w_i u_i >= 0``) carried by the pixels that ``w`` pushes out of the box."""
    pushed = (w * outward).clamp_min_(0)
    if p != math.inf:  # for L-inf |u| = 1 wherever w != 0
        pushed.mul_(u.abs())
    return pushed.flatten(1).sum(1)


def _free_step(w: Tensor, gap: Tensor, outward: Tensor, p: float, margin: float, fraction: float) -> Tensor:
    """The step solved within the pixels that can move, for samples whose
    clipped step the box cuts short: the nearest face by the distance within
    them, ``|f'_k| / ||w'_k,free||_q``, and a step that closes ``fraction`` of it.

    ``w`` [S, J, ...] the candidates' gradients, ``gap`` [S, J] their ``|f'_k|``,
    ``outward`` [S, ...] from :func:`_outward`."""
    # w less its blocked entries, w_i where w_i * outward_i > 0 (exactly 0 there).
    outward = outward.unsqueeze(1)
    free = w - (w * outward).clamp_min_(0).mul_(outward)
    reach, l = _distance(gap, norms.norm(free.flatten(2), norms.dual(p), dim=2)).min(dim=1)
    w_l = free[torch.arange(len(l), device=w.device), l]
    step = norms.per_sample(fraction * (reach + margin), w_l) * norms.steepest(w_l, p)
    # Nothing can move (every pixel blocked for every face): no step.
    return torch.where(norms.per_sample(torch.isfinite(reach), w_l), step, torch.zeros_like(step))
