"""What every attack shares: input checks, the result type, and the guard that
keeps the attacked model exactly as the caller handed it over."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from ..norms import lp_norm

Box = tuple[float, float] | None


@dataclass
class AttackResult:
    """What an attack returns, per sample of the batch.

    ``perturbation`` is always ``x_adv - x`` and ``success`` is judged on the
    returned (clipped) ``x_adv``: a sample counts only if the model's label of
    ``x_adv`` equals ``target`` (targeted attacks), differs from the true label
    the caller passed (untargeted attacks given labels: FGSM, IFGS), or
    differs from ``label_orig`` (attacks that need no label: DeepFool).
    ``iterations`` counts the gradient steps a sample took.
    """

    x_adv: Tensor
    perturbation: Tensor
    success: Tensor  # bool [N]
    iterations: Tensor  # long [N]
    label_orig: Tensor  # the model's label of x, long [N]
    label_adv: Tensor  # the model's label of x_adv, long [N]
    target: Tensor | None = None  # long [N] for targeted attacks
    trace: dict[str, Tensor] = field(default_factory=dict)  # per-iteration records, [steps, N]

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item()

    def norms(self, p: float = 2) -> Tensor:
        """Per-sample Lp norm of the perturbation."""
        return lp_norm(self.perturbation, p)


def check_box(clip: Box) -> None:
    if clip is None:
        return
    if len(clip) != 2 or not all(math.isfinite(v) for v in clip) or not clip[0] < clip[1]:
        raise ValueError(f"clip must be None or (low, high) with finite low < high, got {clip!r}")


def check_inputs(x: Tensor, clip: Box) -> None:
    """Reject, with a message that names the problem, what would give a wrong number."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (inputs in [0, 1]), got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch [N, ...] with at least 2 dimensions, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    check_box(clip)
    if clip is not None:
        lo, hi = clip
        if x.min().item() < lo or x.max().item() > hi:
            raise ValueError(
                f"x lies outside clip={clip}: min {x.min().item():.4g}, max {x.max().item():.4g} "
                "(scale the inputs to the box, or pass clip=None to attack without a box)"
            )


def check_labels(labels: Tensor, x: Tensor, num_classes: int, what: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{what} must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{what} must have shape [N] = [{x.shape[0]}] to match x, got {tuple(labels.shape)}")
    if labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes - 1}] for a model with {num_classes} classes, "
            f"got values in [{labels.min().item()}, {labels.max().item()}]"
        )
    return labels.to(device=x.device, dtype=torch.long)


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """The model's logits as [N, C], C >= 2.

    A binary model with a single logit ``f`` is read as the two logits
    ``(0, f)``: its label is ``f > 0``, cross-entropy on these logits is the
    logistic loss, and DeepFool's multiclass step on them is exactly
    Algorithm 1 of the paper. One code path serves both cases.
    """
    out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape [N, classes] = [{x.shape[0]}, C], got {shape}")
    if out.shape[1] == 1:
        out = torch.cat([torch.zeros_like(out), out], dim=1)
    return out


def num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return logits_of(model, x[:1]).shape[1]


@contextlib.contextmanager
def attacking(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` as deployed (eval mode, no parameter gradients) for
    the duration of an attack, then restore every module's train flag and
    every parameter's ``requires_grad`` exactly as they were.

    Eval mode also keeps BatchNorm statistics from being updated by the
    attack's forward passes, and switching parameter gradients off means the
    backward passes compute input gradients only.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def project_box(x: Tensor, clip: Box) -> Tensor:
    return x if clip is None else x.clamp(*clip)


@torch.no_grad()
def judged(
    model: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    *,
    label_orig: Tensor,
    iterations: Tensor,
    target: Tensor | None = None,
    label: Tensor | None = None,
    trace: dict[str, Tensor] | None = None,
) -> AttackResult:
    """The result of an attack, its success judged by one more forward pass on
    the ``x_adv`` returned: equal to ``target`` if given, else different from
    the true ``label`` if given, else different from ``label_orig``."""
    label_adv = logits_of(model, x_adv).argmax(dim=1)
    if target is not None:
        success = label_adv == target
    else:
        success = label_adv != (label if label is not None else label_orig)
    return AttackResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=success,
        iterations=iterations,
        label_orig=label_orig,
        label_adv=label_adv,
        target=target,
        trace=trace if trace is not None else {},
    )


def check_best_of(best_of: int | None, target: Tensor | None) -> None:
    if best_of is None:
        return
    if target is not None:
        raise ValueError("best_of is for untargeted attacks: pass target=None")
    if isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1:
        raise ValueError(f"best_of must be None or an integer >= 1, got {best_of!r}")


@torch.no_grad()
def best_of_targets(targeted_attack, model: nn.Module, x: Tensor, best_of: int) -> AttackResult:
    """An untargeted attack made of targeted ones: each of the ``best_of``
    classes of highest logit after the model's label is a target, all in one
    batch of ``best_of * N`` samples, and each sample keeps its smallest
    successful L2 perturbation (Carlini & Wagner's "best case").

    ``targeted_attack(x, target)`` runs the attack; ``iterations`` sums the
    runs a sample took part in, and ``trace["target_norm"]`` ``[best_of, N]``
    holds the L2 norm reached towards each target (inf where it failed)."""
    with attacking(model):
        logits0 = logits_of(model, x)
    if best_of > logits0.shape[1] - 1:
        raise ValueError(f"best_of must be at most classes - 1 = {logits0.shape[1] - 1}, got {best_of}")
    label_orig = logits0.argmax(dim=1)
    n = x.shape[0]
    others = logits0.scatter(1, label_orig[:, None], float("-inf")).topk(best_of, dim=1).indices  # [N, m]
    with torch.enable_grad():
        res = targeted_attack(x.repeat(best_of, *([1] * (x.dim() - 1))), others.T.reshape(-1))
    norm = res.norms().masked_fill(~res.success, math.inf).view(best_of, n)
    pick = norm.argmin(dim=0)
    rows = pick * n + torch.arange(n, device=x.device)
    with attacking(model):
        return judged(
            model, x, res.x_adv[rows], label_orig=label_orig,
            iterations=res.iterations.view(best_of, n).sum(dim=0), trace={"target_norm": norm},
        )
