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


def _scan(alpha: Tensor, c: Tensor, domain: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The plain search over all pairs (increasing case, ``c = -beta``):
    rows in blocks of ``chunk``, ``[B, chunk, n]``, and a running maximum.
    Returns ``p, q`` and the best score, ``-inf`` if no pair is admissible;
    ties go to the first pair in row-major order, as a full ``argmax`` gives."""
    b, n = alpha.shape
    best = torch.full((b,), -math.inf, dtype=alpha.dtype, device=alpha.device)
    best_idx = torch.zeros(b, dtype=torch.long, device=alpha.device)
    cols = torch.arange(n, device=alpha.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        a = alpha[:, s:e, None] + alpha[:, None, :]
        cc = c[:, s:e, None] + c[:, None, :]
        valid = (a > 0) & (cc > 0) & domain[:, s:e, None] & domain[:, None, :] & (cols[s:e, None] != cols)
        score = torch.where(valid, a * cc, torch.full_like(a, -math.inf)).flatten(1)
        arg = score.argmax(dim=1)
        val = score.gather(1, arg[:, None]).squeeze(1)
        better = val > best  # strict: an earlier block keeps its ties
        best = torch.where(better, val, best)
        best_idx = torch.where(better, s * n + arg, best_idx)
    return best_idx // n, best_idx % n, best


def _positive_scores(a_rows: Tensor, c_rows: Tensor, a_cols: Tensor, c_cols: Tensor) -> Tensor:
    """``max(A, 0) * max(C, 0)`` for the pairs of ``k`` row and ``m`` column
    features, ``[B, k, m]`` (``A = alpha_p + alpha_q``, ``C = c_p + c_q``):
    the saliency where the pair is admissible, 0 where not (a feature outside
    the domain carries ``alpha = c = -inf``)."""
    a = (a_rows[:, :, None] + a_cols[:, None, :]).clamp_(min=0)
    return a.mul_((c_rows[:, :, None] + c_cols[:, None, :]).clamp_(min=0))


def _layers(alpha: Tensor, c: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
    """The first two Pareto layers (bool ``[B, n]`` each) of the domain's
    points ``(alpha_q, c_q)``. With the features ordered by ``alpha``
    descending (ties by position), ``q`` dominates ``p`` when it comes
    earlier and ``c_q >= c_p`` (so ``alpha_q >= alpha_p`` too): the first
    layer is the undominated features, the second those the rest leaves
    undominated."""
    minus_inf = torch.full_like(c[:, :1], -math.inf)
    perm = alpha.masked_fill(~domain, -math.inf).sort(dim=1, descending=True, stable=True).indices
    in_domain = domain.gather(1, perm)
    c_sorted = c.gather(1, perm)

    def undominated(present: Tensor) -> Tensor:
        seen = c_sorted.masked_fill(~present, -math.inf).cummax(dim=1).values
        return present & (c_sorted > torch.cat([minus_inf, seen[:, :-1]], dim=1))

    first = undominated(in_domain)
    second = undominated(in_domain & ~first)
    unsort = torch.zeros_like(domain)
    return unsort.scatter(1, perm, first), unsort.scatter(1, perm, second)


def _gather(mask: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """The positions of ``mask``'s features in their order, ``[B, f]`` for
    ``f`` the largest count (shorter rows padded with other positions), each
    of ``values`` there, and whether the position is in ``mask``."""
    f = int(mask.sum(1).max())
    at = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :f]
    return (at, *(v.gather(1, at) for v in values), mask.gather(1, at))


def _best_pair(alpha: Tensor, beta: Tensor, domain: Tensor, increase: bool, chunk: int):
    """The saliency map's best pair for each row of ``alpha, beta`` ``[B, n]``
    (finite).

    Over pairs ``p != q`` of the search ``domain`` (bool ``[B, n]``), with
    ``A = alpha_p + alpha_q`` and ``B = beta_p + beta_q``, maximise
    ``A * |B|`` subject to ``A > 0, B < 0`` (``increase``), or ``|A| * B``
    subject to ``A < 0, B > 0`` (decrease). The answer is exactly a full
    ``argmax``'s over the ``n x n`` map, ties included (the first pair in
    row-major order), without its ``O(n^2)`` work:

    In the increasing case, with ``c = -beta``, the score ``(alpha_p +
    alpha_q) * (c_p + c_q)`` of an admissible pair does not decrease when
    ``q`` is replaced by a ``q'`` of larger or equal ``alpha`` and ``c``
    (rounding is monotone, so this holds for the computed scores too). So
    each feature ``p``'s best score is reached on the first Pareto layer of
    the points ``(alpha_q, c_q)`` (:func:`_layers`), or, for ``p`` on that
    layer (whose dominated features may be dominated by ``p`` alone), on the
    first two layers without ``p``. The layers hold few features (the first
    about 15, the two about 30 of 784 on the book's networks). The row of the
    best pair is the first whose best score is the maximum; its partner, the
    first best over all features. A row whose best score is not positive
    (no admissible pair, or scores that underflow to 0) is settled by the
    plain search (:func:`_scan`).

    Time ``O(B * n * f)`` for ``f`` features on the first layer (``O(B * n^2)``
    at worst, when every point is on it: ``beta = alpha + const``); memory
    ``O(B * chunk * n)``, the layer taken ``chunk`` features at a time.

    Returns ``p, q`` (long ``[B]``) and ``found`` (bool ``[B]``: some pair
    satisfies the sign conditions).
    """
    if not increase:
        alpha, beta = -alpha, -beta
    c = -beta
    first, second = _layers(alpha, c, domain)
    a_all, c_all = alpha.masked_fill(~domain, -math.inf), c.masked_fill(~domain, -math.inf)
    # Every feature's best partner on the first layer, [B, chunk, n] at a time (padding scores 0)...
    i1, a1, c1, on1 = _gather(first, a_all, c_all)
    a1 = a1.masked_fill(~on1, -math.inf)
    best_of = torch.zeros_like(alpha)
    for s in range(0, a1.shape[1], chunk):
        block = _positive_scores(a1[:, s : s + chunk], c1[:, s : s + chunk], a_all, c_all)
        best_of = torch.maximum(best_of, block.amax(dim=1))
    # ... and, for the first layer's own features, on both layers but themselves.
    if first.any():
        i2, a2, c2, on2 = _gather(first | second, a_all, c_all)
        a2 = a2.masked_fill(~on2, -math.inf)
        own = torch.zeros_like(a1)
        for s in range(0, a2.shape[1], chunk):
            block = _positive_scores(a2[:, s : s + chunk], c2[:, s : s + chunk], a1, c1)
            block.masked_fill_(i2[:, s : s + chunk, None] == i1[:, None, :], 0)  # p != q
            own = torch.maximum(own, block.amax(dim=1))
        best_of.scatter_(1, i1, torch.where(on1, own, best_of.gather(1, i1)))
    p = best_of.argmax(dim=1)  # the first maximal one
    best = best_of.gather(1, p[:, None]).squeeze(1)
    at = p[:, None]
    row = _positive_scores(a_all.gather(1, at), c_all.gather(1, at), a_all, c_all).squeeze(1)
    q = row.scatter_(1, at, 0).argmax(dim=1)
    rest = best == 0
    if rest.any():
        p[rest], q[rest], best[rest] = _scan(alpha[rest], c[rest], domain[rest], chunk)
    return p, q, torch.isfinite(best)


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

    The pair search (:func:`_best_pair`) is exact, the pair a full ``argmax``
    over the ``n x n`` saliency map would pick, ties included, but never
    forms that map: only the features on the first two Pareto layers of the
    points ``(alpha_q, -beta_q)`` can be a best partner, and they are few
    (about 30 of 784 on the book's networks), so an iteration costs
    ``O(batch * n * f)`` for ``f`` features on the first layer,
    ``O(batch * n^2)`` only when every feature is on it. Peak memory is ``O(batch * chunk * n)``: measured by
    ``benchmarks/jsma_memory.py`` at 3x64x64 (n = 12288), batch 8: +35 to +51 MB
    (over runs) for the attack on a small convolutional network, +126 to +128 MB
    for the pair search at its worst case (1.3 kB per feature and sample; see
    benchmarks/README.md for the other sizes).

    ART's ``SaliencyMapMethod`` is a different, simpler rule: it takes the two
    features of largest ``grad_x Z_t`` (the target's logit, or whatever the
    model returns), with no ``beta`` and no sign condition, and stops a
    sample only once more than ``gamma * n`` features changed (80 of 784 at
    ``gamma = 0.1``, against 78 here). On probabilities the rule here reduces to nearly that one
    (``beta = -alpha``: the two features of largest ``grad_x p_t``), but on
    the softmax's gradient.

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
        chunk: features of the pair search per block (memory ``batch * chunk * n``).
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
