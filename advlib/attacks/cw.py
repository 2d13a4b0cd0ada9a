"""Carlini & Wagner's L2 attack ("Towards evaluating the robustness of neural
networks", IEEE S&P 2017), with its M-logit loss (:func:`advlib.losses.m_logit_loss`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks
from ..losses import m_logit_loss, margin
from ._common import (
    AttackResult, Box, attacking, begin, best_of_targets, check_best_of, check_inputs, finite_rows, judged, logits_of,
    stack_rows, trace_row,
)
from .penalty import PenaltySearch

# The authors' constants: atanh is taken of the input shrunk by this factor so
# that pixels on the box edge map to a finite w; Adam's.
_SHRINK = 1.0 - 1e-6
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def cw_l2(
    model: nn.Module,
    x: Tensor,
    *,
    label: Tensor | None = None,
    target: Tensor | None = None,
    kappa: float = 0.0,
    c_init: float = 1e-3,
    search_steps: int = 9,
    max_iter: int = 1000,
    lr: float = 1e-2,
    clip: Box = (0.0, 1.0),
    abort_early: bool = True,
    warm_start: bool = False,
    best_of: int | None = None,
    progress: bool = False,
) -> AttackResult:
    """Carlini & Wagner's L2 attack.

    Minimises ``||x_adv - x||_2^2 + c * M-logit(x_adv)`` with Adam, in the
    change of variables ``x_adv = lo + (hi - lo) * (tanh(w) + 1) / 2`` that
    keeps ``x_adv`` inside the box ``clip = (lo, hi)`` without clipping. The
    M-logit loss (``losses.m_logit_loss(kappa)``) is
    ``max(max_{j != t} f_j - f_t, -kappa)`` towards ``target``, or
    ``max(f_y - max_{j != y} f_j, -kappa)`` away from ``y = label`` (default
    the model's label of ``x``). ``c`` is searched per sample as in the
    authors' code (:class:`~advlib.attacks.penalty.PenaltySearch`, shared with
    L-BFGS): start at ``c_init``, multiply by 10 until a run succeeds, then
    bisect between the largest failing and the smallest succeeding ``c``; every run restarts
    from ``w = atanh(x)`` with a fresh Adam state (``warm_start``: from where the
    sample's previous run stopped). Over all runs and all Adam
    steps, the successful iterate of smallest L2 distance is kept.

    An iterate counts as successful when its margin is positive (a tie on
    the boundary is not a label change) and reaches ``kappa``:
    ``f_t - max_{j != t} f_j`` (targeted), ``max_{j != y} f_j - f_y``
    (untargeted).

    For an affine model and ``kappa = 0`` the targeted problem is convex and
    ``c`` large enough makes its minimiser the exact minimal perturbation
    (the hinge is an exact penalty): the tests find it within 0.2%.
    Untargeted on a multiclass model the loss is not convex: the descent
    heads for the face of the runner-up class, which need not be the closest
    (up to 10% above the minimum on random affine models, 40-56% with more
    samples and classes). ``best_of`` makes it exact there: the targeted
    attack towards each class, the smallest result (the authors' "best case").

    Batched: all samples run together, each with its own ``c``; Adam is
    elementwise, so its state is kept per sample, and with ``abort_early``
    a sample leaves the run when its objective at Adam step ``j * k``
    (``k = max_iter // 10``, ``j >= 1``) is not 0.01% below the one at step
    ``(j - 1) * k``: the authors' schedule, but per sample (their code applies
    it to the batch's summed objective, a sample's own at its default batch
    size of 1; Foolbox 3 to the batch's). A sample's result thus does not depend
    on the batch it is in; the peers chapter measures what the steps saved cost
    in perturbation size.

    Args:
        model: classifier returning logits ``[N, C]`` (``[N, 1]`` for a binary
            model). Evaluated in eval mode and handed back unchanged.
        x: inputs ``[N, ...]``, floating point, inside ``clip``.
        label: untargeted, ``[N]`` the labels to move away from (default: the
            model's labels of ``x``).
        target: ``[N]`` class indices for a targeted attack (not with ``label``).
        kappa: confidence ``kappa >= 0`` (finite) of the M-logit loss (paper: 0).
        c_init: the first ``c`` (paper: 1e-3).
        search_steps: runs of the binary search on ``c`` (paper: 9). As in the
            authors' code, with 10 or more the last run uses the upper bound.
        max_iter: Adam steps per run (the authors' code: 10000; we default to
            1000, with ``abort_early`` most runs stop far sooner).
        lr: Adam's learning rate on ``w`` (paper: 1e-2).
        clip: the box ``(lo, hi)``; ``None`` drops the change of variables and
            optimises ``x_adv`` directly.
        abort_early: stop a sample's run once its objective stalls (see above).
        warm_start: start each run of the search from the ``w`` at which the
            sample's previous run stopped, not from ``x`` (still with a fresh
            Adam state). Not the authors' algorithm: the runs of small ``c``
            that fail still carry the iterate towards the boundary, so the run
            that succeeds starts closer to it, and a run after a success starts
            near an adversarial point; the peers chapter measures its passes,
            success and sizes beside the default's.
        best_of: untargeted only: run the targeted attack towards each of the
            ``best_of`` classes of highest logit other than ``label`` (all
            in one batch) and keep each sample's smallest successful
            perturbation; ``best_of = classes - 1`` tries every class. Costs
            ``best_of`` attacks. ``None``: the untargeted loss above.
        progress: show a tqdm bar over Adam steps.

    Returns:
        :class:`AttackResult`; ``x_adv`` ``[N, ...]`` is the best iterate
        found; a sample with no successful iterate is returned unchanged
        (``perturbation = 0``, ``success = False``). ``iterations`` as in
        :class:`AttackResult`: one iteration is one Adam step, summed over the
        runs the sample took part in. ``trace["c"]`` ``[runs, N]`` is the ``c``
        of each run (NaN for a sample that took no part). A sample whose
        objective or gradient becomes NaN or inf leaves the search, is
        returned at ``x`` with ``success = False``.

    Example::

        res = cw_l2(model, x, target=attacks.least_likely(model, x))
        print(res.success_rate, res.norms().mean())
    """
    x, clip = check_inputs(x, clip)
    kappa = checks.number(kappa, "kappa", low=0)
    c_init = checks.number(c_init, "c_init", low=0, low_open=True)
    search_steps = checks.integer(search_steps, "search_steps", low=1)
    max_iter = checks.integer(max_iter, "max_iter", low=1)
    lr = checks.number(lr, "lr", low=0, low_open=True)
    abort_early = checks.flag(abort_early, "abort_early")
    warm_start = checks.flag(warm_start, "warm_start")
    progress = checks.flag(progress, "progress")
    best_of = check_best_of(best_of, target)
    if best_of is not None:
        def towards(xs: Tensor, ts: Tensor) -> AttackResult:
            return cw_l2(model, xs, target=ts, kappa=kappa, c_init=c_init, search_steps=search_steps,
                         max_iter=max_iter, lr=lr, clip=clip, abort_early=abort_early, warm_start=warm_start,
                         progress=progress)

        return best_of_targets(towards, model, x, best_of, label=label, clip=clip)
    n = x.shape[0]
    device, dtype = x.device, x.dtype
    loss_fn = m_logit_loss(kappa)
    b1, b2 = _ADAM_BETAS

    if clip is None:
        mid, half = 0.0, 1.0
        w_start = x.detach().clone()
    else:
        mid, half = (clip[0] + clip[1]) / 2, (clip[1] - clip[0]) / 2
        # atanh(+-1) is infinite: pixels on the box edge start at a finite w.
        w_start = torch.atanh((x.detach() - mid) / half * _SHRINK)
    # Each sample's last w, where its next run starts with warm_start.
    w_last = w_start.clone()

    with attacking(model):
        logits0, label_orig, label, target = begin(model, x, label=label, target=target)
        targeted = target is not None
        goal = target if targeted else label

        def reached(logits: Tensor, goal: Tensor) -> Tensor:
            # Strict margin: a tie on the boundary is not a label change.
            m = margin(logits, goal)
            if targeted:
                return (m > 0) & (m >= kappa)
            return (m < 0) & (-m >= kappa)

        best = x.clone()
        best_l2 = torch.full((n,), math.inf, dtype=dtype, device=device)
        search = PenaltySearch(n, c_init, geometric=False, device=device)
        failed = torch.zeros(n, dtype=torch.bool, device=device)
        iterations = torch.zeros(n, dtype=torch.long, device=device)
        trace_c = []

        # A sample that already meets the goal (a given label the model does
        # not give it, or its target) needs no perturbation.
        already = reached(logits0, goal)
        best_l2[already] = 0.0
        pending = ~already

        check_every = max(max_iter // 10, 1)
        bar = tqdm(total=search_steps * max_iter, desc="C&W L2", disable=not progress, leave=False)
        for run in range(search_steps):
            runners = (pending & ~failed).nonzero().squeeze(1)
            if runners.numel() == 0:
                break
            if search_steps >= 10 and run == search_steps - 1:
                search.use_upper_bound()
            c = search.c
            trace_c.append(trace_row(n, runners, c[runners]))

            # The run's state is kept for its remaining samples only, and
            # compacted when some leave: no per-step scatter into [N, ...].
            # Every tensor below is updated in place without autograd: only
            # the model's part of the gradient goes through autograd, the
            # distance's and the change of variables' are written out (the
            # same floating-point operations autograd would do).
            act = runners
            w = (w_last if warm_start else w_start)[act]
            m1 = torch.zeros_like(w)
            m2 = torch.zeros_like(w)
            xr, gr, cr = x[act], goal[act], c[act].to(dtype)
            prev = torch.full((act.numel(),), math.inf, dtype=dtype, device=device)
            run_ok = torch.zeros(n, dtype=torch.bool, device=device)
            ok_run = torch.zeros(act.numel(), dtype=torch.bool, device=device)
            done = 0
            for i in range(max_iter):
                with torch.no_grad():
                    t, cut = None, None
                    if clip is None:
                        xa = w.clone()  # w is stepped in place below
                    else:
                        t = torch.tanh(w)
                        xa = (t * half).add_(mid)
                        # The clamp only removes rounding outside the box (and
                        # passes no gradient there): rare, so looked for first.
                        lo_hi = torch.aminmax(xa)
                        if lo_hi.min < clip[0] or lo_hi.max > clip[1]:
                            cut = (xa < clip[0]) | (xa > clip[1])
                            xa.clamp_(*clip)
                    d = xa - xr
                    l2 = (d * d).flatten(1).sum(dim=1)
                xa.requires_grad_(True)
                logits = logits_of(model, xa)
                loss = loss_fn.value(logits, gr, targeted=targeted)
                (g,) = torch.autograd.grad((cr * loss).sum(), xa)

                with torch.no_grad():
                    xa, logits = xa.detach(), logits.detach()
                    objective = l2 + cr * loss.detach()
                    # d(objective)/dw: the distance's gradient 2 d, then the
                    # change of variables: half * (1 - tanh^2), zero where the clamp acted.
                    g.add_(d, alpha=2)
                    if cut is not None:
                        g.masked_fill_(cut, 0.0)
                    if t is not None:
                        g.mul_(half).mul_(t.mul_(t).neg_().add_(1))
                    sick = ~(torch.isfinite(objective) & finite_rows(g))
                    if sick.any():
                        # NaN or inf: the sample leaves the search, a failure.
                        failed[act[sick]] = True
                        iterations[act[sick]] += i + 1
                        fine = ~sick
                        if not fine.any():
                            break
                        act, w, m1, m2, ok_run, prev = (t_[fine] for t_ in (act, w, m1, m2, ok_run, prev))
                        xr, gr, cr, xa, l2, logits, g, objective = (
                            t_[fine] for t_ in (xr, gr, cr, xa, l2, logits, g, objective)
                        )
                    # The iterate just evaluated is a candidate, before the step.
                    ok = reached(logits, gr)
                    ok_run |= ok
                    better = ok & (l2 < best_l2[act])
                    if better.any():
                        best[act[better]] = xa[better]
                        best_l2[act[better]] = l2[better]

                    # Adam (elementwise, so each sample has its own state).
                    step = i + 1
                    m1.mul_(b1).add_(g, alpha=1 - b1)
                    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
                    w.sub_((m1 / (1 - b1**step)).mul_(lr).div_((m2 / (1 - b2**step)).sqrt_().add_(_ADAM_EPS)))
                done = i + 1
                bar.update(1)

                if abort_early and i % check_every == 0:
                    # The authors' schedule: the objective at steps 0, k, 2k, ...
                    # (k = max_iter // 10), each compared with the previous one.
                    keep = objective <= prev * 0.9999
                    if not keep.all():
                        w_last[act[~keep]] = w[~keep]
                        iterations[act[~keep]] += done
                        run_ok[act[~keep]] = ok_run[~keep]
                        if not keep.any():
                            bar.update(max_iter - done)
                            break
                        act, w, m1, m2, ok_run = act[keep], w[keep], m1[keep], m2[keep], ok_run[keep]
                        xr, gr, cr, objective = xr[keep], gr[keep], cr[keep], objective[keep]
                    prev = objective
            else:
                iterations[act] += done
                run_ok[act] = ok_run
                w_last[act] = w

            # The authors' binary search: success -> lower the upper bound;
            # failure -> raise the lower bound, x10 while no success is known.
            search.update(runners, run_ok[runners])
            bar.set_postfix(success=int(torch.isfinite(best_l2).sum()))
        bar.close()

        return judged(
            model, x, best, clip=clip, label_orig=label_orig, iterations=iterations, target=target, label=label,
            failed=failed,
            trace={"c": stack_rows(trace_c, n, device)},
        )
