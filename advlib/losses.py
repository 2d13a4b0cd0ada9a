"""The four perturbation sources of Ozbulak et al. ("Perturbation analysis of
gradient-based adversarial attacks", 2020, Section 2).

A :class:`Loss` gives, per sample, the value an attack *decreases* to reach
its goal, and whether the attack steps along the gradient itself or only its
sign:

- ``ce``: cross-entropy (L-BFGS's loss); step ``-alpha * grad``.
- ``ce_sign``: the sign of the cross-entropy gradient (IFGS, the basic
  iterative method; also PGD).
- ``logit``: the target logit ``g_t`` (raised; the gradient never vanishes).
- ``m_logit``: Carlini & Wagner's ``max(max_{j != t} g_j - g_t, -kappa)``.

Targeted (towards ``t``) the value is the loss of the target; untargeted
(away from the true label ``y``) it is its natural opposite: ``-CE(y)``,
``g_y``, ``max(g_y - max_{j != y} g_j, -kappa)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks, norms


def _ce(logits: Tensor, label: Tensor, targeted: bool) -> Tensor:
    value = F.cross_entropy(logits, label, reduction="none")
    return value if targeted else -value


def _logit(logits: Tensor, label: Tensor, targeted: bool) -> Tensor:
    g = logits.gather(1, label[:, None]).squeeze(1)
    return -g if targeted else g


def margin(logits: Tensor, label: Tensor) -> Tensor:
    """``g_label - max_{j != label} g_j`` per sample: positive iff ``label`` wins."""
    g = logits.gather(1, label[:, None]).squeeze(1)
    others = logits.scatter(1, label[:, None], float("-inf")).amax(dim=1)
    return g - others


@dataclass(frozen=True)
class Loss:
    """A perturbation source: ``value(logits, label, targeted)`` per sample,
    to be decreased; ``sign`` says whether the step keeps only the gradient's sign."""

    name: str
    fn: Callable[[Tensor, Tensor, bool], Tensor]
    sign: bool = False

    def value(self, logits: Tensor, label: Tensor, *, targeted: bool) -> Tensor:
        return self.fn(logits, label, targeted)

    def direction(self, grad: Tensor, p: float | None = None) -> Tensor:
        """The direction an attack descends along, given the loss gradient
        ``grad`` [N, ...]: the one place where a step's sign is taken.

        ``p=None``: the raw direction of a step ``alpha * d`` (Ozbulak et al.'s
        equal multiplier): ``sign(grad)`` for a sign loss, ``grad`` itself otherwise.

        ``p`` given: a direction of unit Lp norm per sample, for a step of Lp
        size ``eps``: the steepest unit-Lp direction of ``grad``
        (:func:`advlib.norms.steepest`) for a gradient loss; for a sign loss
        ``sign(grad)`` rescaled to unit Lp norm, so the sign is kept for every
        ``p`` (for ``p = inf`` that is ``sign(grad)`` itself, the steepest L-inf
        direction; for ``p = 2``, ``sign(grad) / sqrt(#nonzero)``).
        """
        if self.sign:
            s = norms.steepest(grad, math.inf)  # sign(grad): the steepest L-inf direction
            return s if p is None or p == math.inf else norms.unit(s, p)
        return grad if p is None else norms.steepest(grad, p)


def m_logit_loss(kappa: float = 0.0) -> Loss:
    """Carlini & Wagner's M-logit loss with confidence ``kappa`` >= 0."""
    kappa = checks.number(kappa, "kappa", low=0)

    def fn(logits: Tensor, label: Tensor, targeted: bool) -> Tensor:
        m = margin(logits, label)
        return torch.clamp(-m if targeted else m, min=-kappa)

    return Loss("M-logit" if kappa == 0 else f"M-logit (kappa={kappa:g})", fn)


ce = Loss("CE", _ce)
ce_sign = Loss("CE-sign", _ce, sign=True)
logit = Loss("logit", _logit)
m_logit = m_logit_loss(0.0)

ALL = (ce, ce_sign, logit, m_logit)


def check(loss: object, name: str = "loss") -> Loss:
    """``loss`` if it is a :class:`Loss`, else a TypeError that lists the ones there are."""
    return checks.instance(
        loss, name, Loss, "an advlib.losses.Loss: losses.ce, losses.ce_sign, losses.logit, "
        "losses.m_logit or losses.m_logit_loss(kappa)",
    )
