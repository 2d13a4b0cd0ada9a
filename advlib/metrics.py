"""What the papers measure: rho_adv, per-sample norms, success rate, time."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .norms import lp_norm


def norms(r: Tensor, p: float = 2) -> Tensor:
    """Per-sample Lp norm of perturbations ``r`` [N, ...] -> [N]."""
    return lp_norm(r, p)


def relative_norms(x: Tensor, r: Tensor, p: float = 2) -> Tensor:
    """Per-sample ``||r||_p / ||x||_p``: the quantity rho_adv averages."""
    if x.shape != r.shape:
        raise ValueError(f"x and r must have the same shape, got {tuple(x.shape)} and {tuple(r.shape)}")
    nx = lp_norm(x, p)
    if (nx == 0).any():
        raise ValueError("rho_adv is undefined for an input of norm 0")
    return lp_norm(r, p) / nx


def rho_adv(x: Tensor, r: Tensor, p: float = 2) -> float:
    """DeepFool's robustness estimate: mean over samples of ``||r||_p / ||x||_p``."""
    return relative_norms(x, r, p).mean().item()


def success_rate(success: Tensor) -> float:
    if success.dtype != torch.bool:
        raise TypeError(f"success must be a bool tensor, got {success.dtype}")
    return success.float().mean().item()


@dataclass
class Timer:
    """Wall time of a block: ``with Timer() as t: ...; t.seconds``."""

    seconds: float = float("nan")

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
