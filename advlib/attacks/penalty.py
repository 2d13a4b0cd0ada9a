"""The per-sample search on the penalty weight ``c`` shared by L-BFGS and C&W.

Both attacks minimise ``distance + c * loss`` for a sequence of ``c`` per
sample. A run that succeeds at ``c`` makes ``c`` an upper bound (a smaller
``c`` weighs the distance more and may still succeed, closer); a run that
fails makes it a lower bound. Until some run succeeds, ``c`` grows by
``factor``; then the bracket is bisected: arithmetically as in Carlini &
Wagner's code (``(lo + hi) / 2``, so ``hi / 2`` while no failure is known), or
geometrically for a weight known only to within orders of magnitude
(``sqrt(lo * hi)``, and ``hi / factor`` while no failure is known).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class PenaltySearch:
    """The state of the search for ``n`` samples: ``c``, and the bracket
    ``lo`` (largest failing ``c``, 0 if none) and ``hi`` (smallest succeeding, inf if none)."""

    def __init__(self, n: int, c_init: float, *, geometric: bool, device: torch.device, factor: float = 10.0):
        self.c = torch.full((n,), float(c_init), dtype=torch.float64, device=device)
        self.lo = torch.zeros(n, dtype=torch.float64, device=device)
        self.hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        self.geometric = geometric
        self.factor = factor

    def update(self, idx: Tensor, ok: Tensor) -> None:
        """Record the outcome ``ok`` (bool) of the runs of samples ``idx`` at
        their current ``c``, and choose their next ``c``."""
        c = self.c[idx]
        hi = torch.where(ok, torch.minimum(self.hi[idx], c), self.hi[idx])
        lo = torch.where(ok, self.lo[idx], torch.maximum(self.lo[idx], c))
        if self.geometric:
            mid = torch.where(lo > 0, (lo * hi).sqrt(), hi / self.factor)
        else:
            mid = (lo + hi) / 2
        self.lo[idx], self.hi[idx] = lo, hi
        self.c[idx] = torch.where(torch.isfinite(hi), mid, c * self.factor)

    def use_upper_bound(self) -> None:
        """Set ``c`` to the smallest succeeding ``c`` where one is known
        (Carlini & Wagner's last run of a long search)."""
        self.c = torch.where(torch.isfinite(self.hi), self.hi, self.c)
