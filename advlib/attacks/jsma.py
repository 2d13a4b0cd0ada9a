"""The Jacobian-based saliency map attack (Papernot, McDaniel, Jha, Fredrikson,
Celik, Swami, "The limitations of deep learning in adversarial settings",
EuroS&P 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks
from ._common import AttackResult, Box, attacking, begin, check_inputs, finite_rows, judged, logits_of

SPACES = ("logits", "probs")


def forward_derivatives(logits: Tensor, x: Tensor, target: Tensor, space: str) -> tuple[Tensor, Tensor]:
    """The forward derivative the saliency map is made of, per sample of the
    graph ``logits = f(x)``: ``alpha = grad_x F_t`` and ``beta = grad_x
    sum_{j != t} F_j``, with ``F`` the logits (``space="logits"``) or the
    softmax probabilities (``"probs"``, Papernot et al.'s setting). Two
    batched backward calls for the whole batch.

    On probabilities ``sum_j F_j = 1``, so ``beta = -alpha`` (up to rounding)
    and the saliency of a pair is ``alpha_pq^2`` where ``alpha_pq > 0``; and a
    saturated softmax (defensive distillation) makes ``alpha`` vanish."""
    out = logits.softmax(dim=1) if space == "probs" else logits
    f_t = out.gather(1, target[:, None]).squeeze(1)
    f_rest = out.sum(dim=1) - f_t
    (alpha,) = torch.autograd.grad(f_t.sum(), x, retain_graph=True)
    (beta,) = torch.autograd.grad(f_rest.sum(), x)
    return alpha, beta


def _best_pair(alpha: Tensor, beta: Tensor, domain: Tensor, increase: bool, chunk: int):
    """The saliency map's best pair for each row of ``alpha, beta`` ``[B, n]``.

    Over pairs ``p != q`` of the search ``domain`` (bool ``[B, n]``), with
    ``A = alpha_p + alpha_q`` and ``B = beta_p + beta_q``, maximise
    ``A * |B|`` subject to ``A > 0, B < 0`` (``increase``), or ``|A| * B``
    subject to ``A < 0, B > 0`` (decrease). The ``n x n`` score matrix is
    never formed: rows ``p`` are taken ``chunk`` at a time, ``[B, chunk, n]``,
    and a running maximum kept, so memory is ``O(B * chunk * n)``. Ties go to
    the first pair in row-major order, as a full ``argmax`` would give.

    Returns ``p, q`` (long ``[B]``) and ``found`` (bool ``[B]``: some pair
    satisfies the sign conditions).
    """
    if not increase:
        alpha, beta = -alpha, -beta
    b, n = alpha.shape
    best = torch.full((b,), -math.inf, dtype=alpha.dtype, device=alpha.device)
    best_idx = torch.zeros(b, dtype=torch.long, device=alpha.device)
    cols = torch.arange(n, device=alpha.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        a = alpha[:, s:e, None] + alpha[:, None, :]  # [B, k, n]
        bb = beta[:, s:e, None] + beta[:, None, :]
        valid = (a > 0) & (bb < 0) & domain[:, s:e, None] & domain[:, None, :]
        valid &= cols[s:e, None] != cols[None, :]  # p != q
        score = torch.where(valid, a * -bb, torch.full_like(a, -math.inf)).flatten(1)
        arg = score.argmax(dim=1)
        val = score.gather(1, arg[:, None]).squeeze(1)
        better = val > best  # strict: an earlier block keeps its ties
        best = torch.where(better, val, best)
        best_idx = torch.where(better, s * n + arg, best_idx)
    return best_idx // n, best_idx % n, torch.isfinite(best)


def jsma(
    model: nn.Module,
    x: Tensor,
    *,
    target: Tensor,
    theta: float = 1.0,
    gamma: float = 0.1,
    space: str = "logits",
    clip: Box = (0.0, 1.0),
    chunk: int = 64,
    progress: bool = False,
) -> AttackResult:
    """Papernot et al.'s Jacobian saliency map attack (JSMA), targeted, L0.

    Changes few input features, two at a time, towards ``target``. At each
    iteration, from the forward derivative of ``F``, the logits or the
    softmax probabilities (``space``): ``alpha = grad_x F_t`` and
    ``beta = grad_x sum_{j != t} F_j`` (:func:`forward_derivatives`); the pair ``(p, q)`` of the search
    domain maximising ``alpha_pq * |beta_pq|`` with ``alpha_pq > 0`` and
    ``beta_pq < 0`` (``alpha_pq = alpha_p + alpha_q``, likewise ``beta``) is
    changed by ``theta`` (clipped to the box) and removed from the domain.
    For ``theta < 0`` the mirror conditions ``alpha_pq < 0, beta_pq > 0`` and
    the score ``|alpha_pq| * beta_pq`` apply. The domain starts as the
    features that can move in ``theta``'s direction (below the box's top for
    ``theta > 0``). A sample stops when it reaches ``target``, when its next
    pair would change more than ``gamma * n`` features (at most
    ``floor(gamma * n / 2)`` pair updates, as in the paper's Algorithm 3), or
    when no pair meets the sign conditions; finished samples leave the batch.

    The pair search never forms the ``n x n`` saliency map: it takes rows in
    blocks of ``chunk`` and keeps a running maximum, so its memory is
    ``O(batch * chunk * n)``, not ``O(batch * n^2)``; its time is
    ``O(batch * n^2)`` per iteration.

    Args:
        model: classifier returning logits ``[N, C]`` (``[N, 1]`` for a binary
            model). Evaluated in eval mode and handed back unchanged.
        x: inputs ``[N, ...]``, floating point, inside ``clip``; the ``n``
            features are the entries of one sample (pixels times channels).
        target: ``[N]`` target classes.
        theta: change of a selected feature (paper: +1, i.e. set to the top
            of the box; negative values decrease features).
        gamma: the largest fraction of features changed, in (0, 1]
            (cleverhans: 0.1; the paper reports 14.5% on MNIST).
        space: ``"logits"``: the saliency map of the logits (cleverhans'
            default, robust to a saturated softmax); ``"probs"``: of the
            softmax probabilities, Papernot et al.'s setting, which defensive
            distillation defeats (its trained network's softmax saturates, so
            the probabilities' gradients vanish).
        clip: the box ``(lo, hi)``, or ``None`` (then every feature starts in
            the domain and nothing is clipped).
        chunk: rows of the pair search per block (memory ``batch * chunk * n``).
        progress: show a tqdm bar over iterations.

    Returns:
        :class:`AttackResult`; ``x_adv`` ``[N, ...]`` differs from ``x`` in at
        most ``2 * iterations <= gamma * n`` features; ``iterations`` as in
        :class:`AttackResult`: one iteration is one pair update, counted until
        the sample reached its target or stopped. A sample whose label
        already is ``target`` is returned unchanged with ``success = True``
        (0 iterations); one whose logits or derivatives become NaN or inf
        stops there and is returned at ``x``, ``success = False``.

    Example::

        res = jsma(model, x, target=attacks.least_likely(model, x))
        changed = (res.perturbation != 0).flatten(1).sum(1)
    """
    x, clip = check_inputs(x, clip)
    theta = checks.number(theta, "theta")
    if theta == 0:
        raise ValueError("theta must be a finite non-zero number (the change of a feature), got 0.0")
    gamma = checks.number(gamma, "gamma", low=0, high=1, low_open=True)
    space = checks.choice(space, "space", SPACES)
    chunk = checks.integer(chunk, "chunk", low=1)
    progress = checks.flag(progress, "progress")
    n, shape = x.shape[0], x.shape[1:]
    n_feat = x[0].numel()
    max_iter = math.floor(gamma * n_feat / 2)
    if max_iter < 1:
        raise ValueError(
            f"gamma * n = {gamma:g} * {n_feat} allows no pair of features to change: raise gamma"
        )
    increase = theta > 0

    with attacking(model):
        _, label_orig, _, target = begin(model, x, label=None, target=target, targeted_only=True)

        x_adv = x.flatten(1).clone()
        failed = torch.zeros(n, dtype=torch.bool, device=x.device)
        if clip is None:
            domain = torch.ones_like(x_adv, dtype=torch.bool)
        else:
            domain = x_adv < clip[1] if increase else x_adv > clip[0]
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        active = (label_orig != target).nonzero().squeeze(1)

        bar = tqdm(total=max_iter, desc="JSMA", disable=not progress, leave=False)
        for i in range(max_iter + 1):
            if active.numel() == 0:
                break
            xa = x_adv[active].view(-1, *shape).requires_grad_(True)
            logits = logits_of(model, xa)
            todo = logits.argmax(dim=1) != target[active]
            sick = ~finite_rows(logits.detach())
            if i == max_iter or not (todo & ~sick).any():
                failed[active[sick]] = True
                break
            # Only the rows still on their way: the others' gradients are not needed.
            alpha, beta = forward_derivatives(logits[todo], xa, target[active][todo], space)
            alpha, beta = alpha[todo], beta[todo]
            idx = active[todo]
            # NaN or inf: the sample stops, a failure.
            sick = ~(finite_rows(logits.detach()[todo]) & finite_rows(alpha) & finite_rows(beta))
            if sick.any():
                failed[idx[sick]] = True
                idx, alpha, beta = idx[~sick], alpha[~sick], beta[~sick]
            p, q, found = _best_pair(alpha.flatten(1), beta.flatten(1), domain[idx], increase, chunk)
            # A sample with no admissible pair cannot go on: it leaves, unfinished.
            idx, p, q = idx[found], p[found], q[found]
            for feat in (p, q):
                v = x_adv[idx, feat] + theta
                if clip is not None:
                    v = v.clamp(*clip)
                x_adv[idx, feat] = v
                domain[idx, feat] = False
            iterations[idx] += 1
            active = idx
            bar.update(1)
        bar.close()

        return judged(
            model, x, x_adv.view_as(x), clip=clip, label_orig=label_orig, iterations=iterations, target=target,
            failed=failed,
        )
