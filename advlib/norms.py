"""The threat model, kept apart from the attack loops: Lp norms, their duals,
the steepest-ascent direction of unit Lp norm, and projections on Lp balls.

Every function works per sample on a batch ``[N, ...]``; ``p`` is a float in
[1, inf] (``float("inf")`` for L-inf).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import checks

INF = math.inf


def check_p(p: float, name: str = "p") -> float:
    """A norm's order in [1, inf] (:func:`advlib.checks.norm_order`)."""
    return checks.norm_order(p, name)


def dual(p: float) -> float:
    """The Hoelder conjugate q, 1/p + 1/q = 1 (q = inf for p = 1, q = 1 for p = inf)."""
    p = check_p(p)
    if p == 1:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1)


def norm(v: Tensor, p: float, dim: int = -1) -> Tensor:
    """The Lp norm of ``v`` along ``dim``. For p = 1 and inf, ``|v|`` summed or
    maximised: torch's ``vector_norm`` computes those several times slower
    (measured: 3x for p = 1 on a [9, 500, 784] batch of gradients)."""
    p = check_p(p)
    if p == 1:
        return v.abs().sum(dim)
    if p == INF:
        return v.abs().amax(dim)
    return torch.linalg.vector_norm(v, ord=p, dim=dim)


def lp_norm(v: Tensor, p: float) -> Tensor:
    """Per-sample Lp norm of ``v`` [N, ...] -> [N]."""
    return norm(v.flatten(1), p, dim=1)


def per_sample(s: Tensor, like: Tensor) -> Tensor:
    """A per-sample value ``s`` [N] shaped to broadcast against ``like`` [N, ...]."""
    return s.reshape(-1, *([1] * (like.dim() - 1)))


def steepest(w: Tensor, p: float) -> Tensor:
    """The direction ``u`` of unit Lp norm that maximises ``<u, w>`` (then
    ``<u, w> = ||w||_q``): ``w / ||w||_2`` for p = 2, ``sign(w)`` for p = inf,
    the signed unit vector of the largest ``|w_j|`` for p = 1, and
    ``sign(w) |w|^(q-1) / ||w||_q^(q-1)`` in between (DeepFool Sec. 3.3).

    Samples with ``w = 0`` get ``u = 0``.
    """
    p = check_p(p)
    flat = w.flatten(1)
    if p == INF:
        u = flat.sign()
    elif p == 1:
        j = flat.abs().argmax(dim=1, keepdim=True)
        u = torch.zeros_like(flat).scatter_(1, j, flat.gather(1, j).sign())
    else:
        q = dual(p)
        # Scale by max|w| first: |w|^(q-1) under- or overflows for q far from 2.
        scale = flat.abs().amax(dim=1, keepdim=True)
        wn = flat / scale.clamp_min(torch.finfo(w.dtype).tiny)
        if p == 2:
            u = wn / torch.linalg.vector_norm(wn, dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        else:
            mag = wn.abs().pow(q - 1)
            u = wn.sign() * mag / torch.linalg.vector_norm(mag, ord=p, dim=1, keepdim=True).clamp_min(
                torch.finfo(w.dtype).tiny
            )
    return u.reshape(w.shape)


def unit(v: Tensor, p: float) -> Tensor:
    """``v`` rescaled per sample to unit Lp norm (a sample with ``v = 0`` stays 0)."""
    p = check_p(p)
    return v / per_sample(lp_norm(v, p).clamp_min(torch.finfo(v.dtype).tiny), v)


def project_ball(delta: Tensor, p: float, eps: float) -> Tensor:
    """Project each sample of ``delta`` on the Lp ball of radius ``eps``
    (exact for p = 2 and inf; for other p, rescaling, which stays inside the ball)."""
    p = check_p(p)
    if p == INF:
        return delta.clamp(-eps, eps)
    n = lp_norm(delta, p)
    factor = (eps / n.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)
    return delta * per_sample(factor, delta)
