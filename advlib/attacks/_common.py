"""What every attack shares: input checks, the labels an attack starts from,
the result type and the one rule that judges it, and the guard that keeps the
attacked model exactly as the caller handed it over."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from .. import checks
from ..norms import lp_norm

Box = tuple[float, float] | None


@dataclass
class AttackResult:
    """What an attack returns, per sample of the batch.

    - ``x_adv`` ``[N, ...]``: the returned points, inside the box; detached
      from any graph the input carried.
    - ``perturbation``: always ``x_adv - x``.
    - ``success`` (bool ``[N]``): judged by ONE forward pass of the model on
      the returned batch ``x_adv``: its label equals ``target`` (targeted), or
      differs from ``label`` (untargeted; ``label`` defaults to ``label_orig``).
    - ``iterations`` (long ``[N]``): how many iterations the attack ran for the
      sample before its result was settled: until the sample first met its
      goal, for the attacks that stop a sample there (DeepFool, IFGS, JSMA;
      the iteration cap if it never did), or over the whole search otherwise
      (L-BFGS, C&W: summed over the runs of the penalty search it took part
      in; FGSM: its one step). 0 for a sample that met its goal at the start.
      Each attack's docstring says what one of its iterations is.
    - ``label_orig``: the model's label of ``x``, ``argmax`` of its logits
      (ties broken as ``torch.argmax`` breaks them: the first).
    - ``label_adv``: the model's label of ``x_adv``.
    - ``target``: long ``[N]`` for targeted attacks, else ``None``.
    - ``trace``: per-iteration records, ``[steps, N, ...]`` (sample on dim 1),
      documented by the attack that fills them.

    Non-finite numbers: logits that are NaN or inf at ``x`` are an error
    naming the samples (no label to start from). A sample whose iterate, loss
    gradient or logits become non-finite during the attack fails alone: it
    is returned at ``x`` (``perturbation = 0``) with ``success = False``, and
    the other samples are unaffected.
    """

    x_adv: Tensor
    perturbation: Tensor
    success: Tensor  # bool [N]
    iterations: Tensor  # long [N]
    label_orig: Tensor  # the model's label of x, long [N]
    label_adv: Tensor  # the model's label of x_adv, long [N]
    target: Tensor | None = None  # long [N] for targeted attacks
    trace: dict[str, Tensor] = field(default_factory=dict)  # per-iteration records, [steps, N, ...]

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item()

    def norms(self, p: float = 2) -> Tensor:
        """Per-sample Lp norm of the perturbation."""
        return lp_norm(self.perturbation, p)


def check_inputs(x: Tensor, clip: Box) -> tuple[Tensor, Box]:
    """Reject, with a message that names the problem, what would give a wrong
    number; return ``x`` detached from any graph it carries and the box as floats."""
    clip = checks.box(clip, "clip")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (inputs in [0, 1]), got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch [N, ...] with at least 2 dimensions, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0)")
    x = x.detach()
    if not torch.isfinite(x).all():
        raise ValueError(f"x contains NaN or inf (samples {_rows(~finite_rows(x))})")
    if clip is not None:
        lo, hi = clip
        if x.min().item() < lo or x.max().item() > hi:
            raise ValueError(
                f"x lies outside clip={clip}: min {x.min().item():.4g}, max {x.max().item():.4g} "
                "(scale the inputs to the box, or pass clip=None to attack without a box)"
            )
    return x, clip


def check_labels(labels: Tensor, x: Tensor, num_classes: int, what: str = "label") -> Tensor:
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
    return labels.detach().to(device=x.device, dtype=torch.long)


def finite_rows(t: Tensor) -> Tensor:
    """Per sample of ``t`` [N, ...]: are all its entries finite? (bool [N])

    A row whose sum is finite has no NaN or inf (both propagate through a sum),
    and a sum is one fast pass where ``isfinite`` is several (measured: 30x
    on a [500, 784] batch). Only the rows whose sum is not finite, which may
    merely have overflowed, are checked entry by entry."""
    flat = t.flatten(1)
    ok = torch.isfinite(flat.sum(dim=1))
    if not ok.all():
        doubt = (~ok).nonzero().squeeze(1)
        ok[doubt] = torch.isfinite(flat[doubt]).all(dim=1)
    return ok


def _rows(mask: Tensor, at_most: int = 10) -> str:
    idx = mask.nonzero().squeeze(1).tolist()
    return ", ".join(map(str, idx[:at_most])) + (f", ... ({len(idx)} in all)" if len(idx) > at_most else "")


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
    if out.shape[1] == 0:
        raise ValueError(
            f"the model must return logits of shape [N, classes] with at least one class, got {tuple(out.shape)}"
        )
    if out.shape[1] == 1:
        out = torch.cat([torch.zeros_like(out), out], dim=1)
    return out


def start(
    logits: Tensor, x: Tensor, *, label: Tensor | None, target: Tensor | None, targeted_only: bool = False,
    untargeted_only: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The labels an attack starts from, given the logits at ``x``:
    ``(label_orig, label, target)``. ``label_orig`` is ``argmax`` of the
    logits; untargeted, ``label`` defaults to it and ``target`` is ``None``;
    targeted, ``label`` is ``None``. Non-finite logits at ``x`` are an error."""
    logits = logits.detach()
    bad = ~finite_rows(logits)
    if bad.any():
        raise ValueError(
            f"the model's logits at x are NaN or inf for samples {_rows(bad)}: "
            "an attack cannot start there (remove those samples)"
        )
    if label is not None and target is not None:
        raise ValueError("give label (untargeted: move away from it) or target (targeted: move towards it), not both")
    if targeted_only and target is None:
        raise ValueError("this attack is targeted: pass target= (long [N])")
    if untargeted_only and target is not None:
        raise ValueError("this attack is untargeted: pass label= (or nothing), not target=")
    label_orig = logits.argmax(dim=1)
    c = logits.shape[1]
    if target is not None:
        return label_orig, None, check_labels(target, x, c, "target")
    return label_orig, label_orig if label is None else check_labels(label, x, c, "label"), None


def begin(
    model: nn.Module, x: Tensor, *, label: Tensor | None, target: Tensor | None, **only: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`start` after one forward pass at ``x``: ``(logits, label_orig, label, target)``."""
    with torch.no_grad():
        logits = logits_of(model, x)
    return (logits, *start(logits, x, label=label, target=target, **only))


@contextlib.contextmanager
def attacking(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` as deployed (eval mode, no parameter gradients) for
    the duration of an attack, then restore every module's train flag and
    every parameter's ``requires_grad`` exactly as they were.

    Eval mode also keeps BatchNorm statistics from being updated by the
    attack's forward passes, and switching parameter gradients off means the
    backward passes compute input gradients only.
    """
    checks.instance(model, "model", nn.Module, "a torch.nn.Module")
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
    clip: Box,
    label_orig: Tensor,
    iterations: Tensor,
    target: Tensor | None = None,
    label: Tensor | None = None,
    failed: Tensor | None = None,
    trace: dict[str, Tensor] | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """The result of an attack, judged by one forward pass on the returned,
    clipped batch: success is ``label_adv == target`` if a target is given,
    else ``label_adv != label`` (``label`` defaults to ``label_orig``).

    The samples marked ``failed``, and those whose point or logits there are
    not finite, are returned at ``x`` with ``success = False`` (the logits at
    ``x`` are finite: :func:`start` checked them, so their label is ``label_orig``).
    ``batch_size`` splits the forward pass (the result is the same)."""
    x = x.detach()
    x_adv = project_box(x_adv.detach(), clip).clone()
    bad = ~finite_rows(x_adv)
    if failed is not None:
        bad |= failed
    x_adv[bad] = x[bad]
    size = batch_size or x.shape[0]
    logits = torch.cat([logits_of(model, x_adv[i : i + size]) for i in range(0, x.shape[0], size)])
    broken = ~finite_rows(logits)
    x_adv[broken] = x[broken]
    label_adv = torch.where(broken, label_orig, logits.argmax(dim=1))
    if target is not None:
        success = label_adv == target
    else:
        success = label_adv != (label if label is not None else label_orig)
    success &= ~(bad | broken)
    return AttackResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=success,
        iterations=iterations.detach(),
        label_orig=label_orig,
        label_adv=label_adv,
        target=target,
        trace={k: v.detach() for k, v in (trace or {}).items()},
    )


def trace_row(n: int, idx: Tensor, values: Tensor) -> Tensor:
    """A per-run trace row [N] (float64): ``values`` at ``idx``, NaN for the samples that took no part."""
    return torch.full((n,), float("nan"), dtype=torch.float64, device=idx.device).index_put((idx,), values.double())


def stack_rows(rows: list[Tensor], n: int, device: torch.device) -> Tensor:
    """Trace rows as [runs, N] (an empty [0, N] if there was no run)."""
    return torch.stack(rows) if rows else torch.empty(0, n, dtype=torch.float64, device=device)


def check_best_of(best_of: int | None, target: Tensor | None) -> int | None:
    best_of = checks.integer(best_of, "best_of", low=1, none=True)
    if best_of is not None and target is not None:
        raise ValueError("best_of is for untargeted attacks: pass target=None")
    return best_of


@torch.no_grad()
def best_of_targets(
    targeted_attack, model: nn.Module, x: Tensor, best_of: int, *, label: Tensor | None, clip: Box
) -> AttackResult:
    """An untargeted attack made of targeted ones: each of the ``best_of``
    classes of highest logit other than ``label`` (default: the model's
    label) is a target, all in one batch of ``best_of * N`` samples, and each
    sample keeps its smallest successful L2 perturbation (Carlini & Wagner's
    "best case").

    ``targeted_attack(x, target)`` runs the attack; ``iterations`` sums the
    runs a sample took part in, and ``trace["target_norm"]`` ``[best_of, N]``
    holds the L2 norm reached towards each target (inf where it failed)."""
    with attacking(model):
        logits0, label_orig, label, _ = begin(model, x, label=label, target=None)
    if best_of > logits0.shape[1] - 1:
        raise ValueError(f"best_of must be at most classes - 1 = {logits0.shape[1] - 1}, got {best_of}")
    n = x.shape[0]
    others = logits0.scatter(1, label[:, None], float("-inf")).topk(best_of, dim=1).indices  # [N, m]
    with torch.enable_grad():
        res = targeted_attack(x.repeat(best_of, *([1] * (x.dim() - 1))), others.T.reshape(-1))
    norm = res.norms().masked_fill(~res.success, float("inf")).view(best_of, n)
    pick = norm.argmin(dim=0)
    rows = pick * n + torch.arange(n, device=x.device)
    with attacking(model):
        return judged(
            model, x, res.x_adv[rows], clip=clip, label_orig=label_orig, label=label,
            iterations=res.iterations.view(best_of, n).sum(dim=0), trace={"target_norm": norm},
        )
