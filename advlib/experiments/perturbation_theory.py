"""Ozbulak et al.'s three subspaces and Theorem IV.2, in the plane (their
supplementary Figure 6): ``make_circles``, a one-hidden-layer ReLU network,
points of the outer class B attacked towards the inner class R.

:func:`network` trains the network; :func:`run` measures, over a grid of the
unit square, the subspace of every point towards R, the step each loss takes
there (``theory.loss_gradient`` then ``loss.direction``), Theorem IV.2's error
in float64 against autograd, and the paths ``ifgs`` takes with each loss from
a few outer test points. :func:`texts` formats what the prose quotes.

Example::

    train_set, test_set = (data.load("circles", s) for s in ("train", "test"))
    net = network(train_set, hidden=32, epochs=300, lr=0.05, seed=0)
    results = run(model=net, train=train_set, test=test_set, grid=100)
    results["claims"]["ce_vanishes_in_s3"]["holds"]
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .. import checks, data, losses, theory
from ..train import accuracy, plane_network
from ..attacks import ifgs
from . import _shared

OUTER, INNER = 0, 1  # advlib.data's circles labels: 0 the outer circle (B), 1 the inner one (R)
TARGET = INNER
LOSS_NAMES = ("CE", "CE-sign", "logit")  # the supplement's three panels
BOUND_TOLERANCE = 1e-12  # float64 rounding on top of the proven bound 2 (1 - sigma_d)
MAX_SCATTER = 3000  # grid points kept for the error-versus-bound figure
MAP_POINTS = 100  # points per side of the heat maps saved for the figures (every k-th grid point)


def datasets(parameters: dict) -> set[str]:
    return {"circles"}


def network(train_set: data.Dataset, *, hidden: int = 32, **options: Any) -> nn.Module:
    """This chapter's 2-D network: :func:`advlib.train.plane_network` with 32 hidden units by default."""
    return plane_network(train_set, hidden=hidden, **options)


def _grid(n: int) -> tuple[Tensor, Tensor]:
    axis = torch.linspace(0.0, 1.0, n)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")  # row i is y = axis[i], as matplotlib draws it
    return axis, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _rounded(values: Tensor, shape: tuple[int, ...], digits: int = 4) -> list:
    """For a figure: ``values`` to ``digits`` significant digits, as nested
    lists of ``shape`` (the JSON stays small; the claims rest on exact numbers)."""
    flat = [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in values.double().reshape(-1).tolist()]
    return np.array(flat, dtype=object).reshape(shape).tolist()


def _path_starts(test_set: data.Dataset, n_paths: int) -> Tensor:
    """The outer test points nearest ``n_paths`` evenly spaced angles around the centre."""
    outer = test_set.x[test_set.y == OUTER]
    if len(outer) < n_paths:
        raise ValueError(f"n_paths={n_paths}, but the test set has only {len(outer)} outer points")
    angle = torch.atan2(outer[:, 1] - 0.5, outer[:, 0] - 0.5)
    starts = []
    for a in np.linspace(-np.pi, np.pi, n_paths, endpoint=False) + np.pi / n_paths:
        starts.append(int(torch.remainder(angle - a + np.pi, 2 * np.pi).sub(np.pi).abs().argmin()))
    return outer[starts]


def _paths(model, x0: Tensor, sources: dict[str, losses.Loss], steps: int, alpha: float, alpha_sign: float):
    """Every iterate of targeted ``ifgs`` from ``x0`` towards R with each loss.

    Without an L-inf ball the update depends only on the current point, so the
    iterates are the points ``ifgs`` returns after one step, started from the
    previous one; the last is checked against one uninterrupted run, which
    also gives the per-iteration trace."""
    target = torch.full((len(x0),), TARGET, dtype=torch.long)
    size = {name: dict(alpha=alpha_sign if loss.sign else alpha) for name, loss in sources.items()}
    iterates, traces, summary = {}, {}, {}
    for name, loss in sources.items():
        options = dict(target=target, loss=loss, stop_on_success=False, **size[name])
        path = [x0]
        for _ in range(steps):
            path.append(ifgs(model, path[-1], max_iter=1, **options).x_adv)
        full = ifgs(model, x0, max_iter=steps, trace=True, **options)
        retrace_error = (full.x_adv - path[-1]).abs().max().item()
        if retrace_error > 1e-6:
            raise RuntimeError(f"{name}: the one-step runs of ifgs do not retrace the attack ({retrace_error:.1e})")
        path = torch.stack(path)  # [steps + 1, n_paths, 2]
        tr = full.trace
        last = path[-11:]  # the last ten steps
        iterates[name] = path
        traces[name] = {"prob_target": tr["prob_label"], "grad_norm": tr["grad_norm"]}
        summary[name] = {
            "reached_target": full.success.double().mean().item(),
            "first_success_iteration_median": full.iterations.double().median().item(),
            "final_prob_target_median": tr["prob_label"][-1].double().median().item(),
            "final_logit_gap_median": (tr["logit_label"][-1] - tr["logit_orig"][-1]).double().median().item(),
            "final_grad_norm_median": tr["grad_norm"][-1].double().median().item(),
            "last_10_steps_length_median": last.diff(dim=0).norm(dim=2).sum(0).double().median().item(),
            "retrace_error": retrace_error,
        }
    return size, iterates, traces, summary


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``train`` and ``test`` (make_circles with the notebook's ``n_samples``,
    ``noise``, ``factor``, ``seed``) and the trained ``model`` (:func:`network`)."""
    circles = {k: parameters[k] for k in ("n_samples", "noise", "factor", "seed")}
    train_set, test_set = (data.load("circles", split, **circles) for split in ("train", "test"))
    model = network(train_set, hidden=parameters["hidden"], epochs=parameters["epochs"], lr=parameters["lr"],
                    seed=parameters["seed"])
    return {"model": model, "train": train_set, "test": test_set}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    return _shared.call(run, parameters, given or load(parameters))


def run(
    *,
    model: nn.Module,
    train: data.Dataset,
    test: data.Dataset,
    confident: float = theory.DEFAULT_CONFIDENT,
    grid: int = 200,
    n_paths: int = 6,
    path_steps: int = 60,
    path_alpha: float = 0.0005,
    path_alpha_sign: float = 0.01,
    progress: bool = False,
) -> dict[str, Any]:
    """The chapter's measurements on the trained 2-D ``model``.

    Args:
        model: a two-class network on points of the unit square (:func:`network`).
        train, test: the circles' splits (accuracy; the paths start from test points of B).
        confident: the softmax from which a prediction is "high confidence" (Definition IV.1), in (0.5, 1).
        grid: points per side of the lattice over [0, 1]^2.
        n_paths: outer test points attacked towards R.
        path_steps: iterations of every path (``stop_on_success=False``).
        path_alpha: the multiplier of the gradient for CE and logit (equal multiplier).
        path_alpha_sign: the L-inf size of a CE-sign step.
        progress: unused (every step here takes milliseconds); kept for the common signature.

    Returns:
        A JSON-able dict: ``accuracy``, ``subspace_share``, ``gradient_magnitude``
        (per loss and subspace: n, median, 90th percentile), ``approximation``
        (Theorem IV.2's errors per subspace, the bound, a sample of points for
        the figure), ``paths``, ``maps`` (at most ``MAP_POINTS`` x ``MAP_POINTS`` of the grid's
        points, rounded, for the heat maps),
        and ``claims``.
    """
    # (0.5, 1): at most one class can be confident, so the three subspaces partition the plane.
    confident = checks.number(confident, "confident", low=0.5, high=1, low_open=True, high_open=True)
    grid = checks.integer(grid, "grid", low=2)
    n_paths = checks.integer(n_paths, "n_paths", low=1)
    path_steps = checks.integer(path_steps, "path_steps", low=11)  # the summary measures the last ten steps
    path_alpha = checks.number(path_alpha, "path_alpha", low=0, low_open=True)
    path_alpha_sign = checks.number(path_alpha_sign, "path_alpha_sign", low=0, low_open=True)
    checks.flag(progress, "progress")
    model.eval()
    sources = _shared.loss_sources(names=LOSS_NAMES)

    # The gradients over the plane, exactly as the attacks take them (float32).
    axis, points = _grid(grid)
    target = torch.full((len(points),), TARGET, dtype=torch.long)
    magnitude = {}
    for name, loss in sources.items():
        logits, grad = theory.loss_gradient(model, points, target, loss)
        magnitude[name] = loss.direction(grad).norm(dim=1)
    where = theory.subspace(logits, target, confident=confident)
    prob_target = logits.softmax(1)[:, TARGET]
    gap = logits[:, TARGET] - logits[:, OUTER]
    share = {theory.NAMES[k]: (where == k).double().mean().item() for k in theory.NAMES}
    magnitudes = {name: theory.summarize(m, where) for name, m in magnitude.items()}

    # Theorem IV.2 in float64, so that rounding does not hide the approximation's error.
    net64 = copy.deepcopy(model).double()
    points64 = points.double()
    logits64, jacobian = theory.logit_jacobian(net64, points64)
    _, exact = theory.loss_gradient(net64, points64, target, losses.ce)
    scale = jacobian.flatten(2).norm(dim=2).amax(1)
    decomposition_error = ((theory.ce_gradient(jacobian, logits64, target) - exact).norm(dim=1) / scale).max().item()
    error = theory.approximation_error(jacobian, logits64, target, exact=exact, confident=confident)
    sub64 = error["subspace"]
    confident_points = (sub64 != theory.S2) & (error["bound"] > 1e-12)
    ratio = (error["scaled"] / error["bound"])[confident_points]
    relative = theory.summarize(error["relative"], sub64)
    scaled = theory.summarize(error["scaled"], sub64)
    largest_bound = {theory.NAMES[k]: error["bound"][sub64 == k].max().item() if (sub64 == k).any() else math.nan
                     for k in theory.NAMES}
    excess = (error["scaled"] - error["bound"]).max().item()
    shown = torch.nonzero(confident_points & (error["scaled"] > 0)).squeeze(1)
    shown = shown[:: max(1, math.ceil(len(shown) / MAX_SCATTER))]

    x0 = _path_starts(test, n_paths)
    steps, iterates, traces, path_summary = _paths(model, x0, sources, path_steps, path_alpha, path_alpha_sign)

    ce, sign, logit = (magnitude[n] for n in LOSS_NAMES)
    ce_med = {s: magnitudes["CE"][s]["q50"] for s in ("S1", "S2", "S3")}
    in_s1, in_s3 = where == theory.S1, where == theory.S3
    ce_over_logit_s1 = (ce / logit)[in_s1].double().median().item() if in_s1.any() else math.nan
    sign_zero_s3 = (sign[in_s3] == 0).double().mean().item() if in_s3.any() else math.nan
    gaps = {n: path_summary[n]["final_logit_gap_median"] for n in LOSS_NAMES}
    claims = {
        "ce_vanishes_in_s3": _shared.claim(
            "CE's gradient is smallest in S3 (median over the grid)", ce_med["S3"] < min(ce_med["S1"], ce_med["S2"]),
            f"median ||grad CE||: S1 {ce_med['S1']:.3g}, S2 {ce_med['S2']:.3g}, S3 {ce_med['S3']:.3g}",
            median_s1=ce_med["S1"], median_s2=ce_med["S2"], median_s3=ce_med["S3"]),
        "logit_gradient_everywhere": _shared.claim(
            "the logit loss keeps a gradient at every grid point", logit.min().item() > 0,
            f"smallest ||grad g_R|| on the grid: {logit.min().item():.3g}",
            smallest=logit.min().item(), zero_share=(logit == 0).double().mean().item()),
        "ce_larger_than_logit_in_s1": _shared.claim(
            "in S1 the CE gradient is larger than the logit gradient (median ratio)", ce_over_logit_s1 > 1,
            f"median ||grad CE|| / ||grad g_R|| in S1: {ce_over_logit_s1:.3g}", median_ratio=ce_over_logit_s1),
        "theorem_within_bound": _shared.claim(
            "Theorem IV.2's error is within 2 (1 - sigma_d) at every grid point (float64)", excess <= BOUND_TOLERANCE,
            f"largest scaled error minus bound: {excess:.1e}; error / bound in S1 and S3: "
            f"{ratio.min().item() if len(ratio) else math.nan:.3f} to {ratio.max().item() if len(ratio) else math.nan:.3f}",
            largest_excess=excess, tolerance=BOUND_TOLERANCE),
        "ce_stalls_short_of_logit": _shared.claim(
            "along the paths CE ends less deep in R than logit (median final logit gap g_R - g_B)",
            gaps["CE"] < gaps["logit"], f"final gap: CE {gaps['CE']:.3g}, logit {gaps['logit']:.3g}",
            gap_ce=gaps["CE"], gap_logit=gaps["logit"]),
        "ce_sign_vanishes_in_s3": _shared.claim(
            "CE-sign's step vanishes in S3 (on at least half of its grid points)", sign_zero_s3 >= 0.5,
            f"share of S3 points where the sign step is 0: {sign_zero_s3:.1%}",
            zero_share_s3=sign_zero_s3, n_s3=int(in_s3.sum())),
    }
    # The figures' maps: every k-th grid point, at most MAP_POINTS per side (the JSON stays small).
    k = math.ceil(grid / MAP_POINTS)
    shape = (len(axis[::k]),) * 2

    def on_map(values):
        return values.reshape(grid, grid)[::k, ::k]

    return _shared.jsonable({
        "target": TARGET,
        "confident": confident,
        "accuracy": {"train": accuracy(model, train.x, train.y), "test": accuracy(model, test.x, test.y)},
        "subspace_share": share,
        "gradient_magnitude": magnitudes,
        "extremes": {"ce_min": ce.min().item(), "logit_min": logit.min().item(), "max_target_gap": gap.max().item(),
                     "sign_zero_share": (sign == 0).double().mean().item()},
        "approximation": {
            "relative": relative, "scaled": scaled, "largest_bound": largest_bound,
            "largest_excess": excess, "error_over_bound_min": ratio.min().item() if len(ratio) else math.nan,
            "error_over_bound_max": ratio.max().item() if len(ratio) else math.nan,
            "decomposition_error": decomposition_error,
            "subspace_disagreement": int((sub64 != where).sum()),  # float32 and float64 near a border
            "scatter": {"bound": error["bound"][shown], "scaled": error["scaled"][shown], "subspace": sub64[shown]},
        },
        "paths": {"x0": x0, "steps": steps, "iterates": iterates, "trace": traces, "summary": path_summary},
        "maps": {"axis": axis[::k], "prob_target": _rounded(on_map(prob_target), shape),
                 "subspace": on_map(where), "magnitude": {n: _rounded(on_map(m), shape) for n, m in magnitude.items()}},
        "claims": claims,
    })


def texts(results: dict[str, Any]) -> dict[str, str]:
    """The numbers the prose quotes, formatted: glue name -> text."""
    results = _shared.nan_for_none(results)
    m, share, ext = results["gradient_magnitude"], results["subspace_share"], results["extremes"]
    ap, paths = results["approximation"], results["paths"]["summary"]
    c = results["claims"]
    out = {
        "test_accuracy": f"{100 * results['accuracy']['test']:.1f}%",
        "ce_s1": f"{m['CE']['S1']['q50']:.3g}",
        "ce_s2": f"{m['CE']['S2']['q50']:.3g}",
        "ce_s3": f"{m['CE']['S3']['q50']:.2g}",
        "ce_s3_ratio": f"{m['CE']['S1']['q50'] / m['CE']['S3']['q50']:.0f}",
        "ce_min": f"{ext['ce_min']:.1e}",
        "logit_s3": f"{m['logit']['S3']['q50']:.3g}",
        "logit_min": f"{ext['logit_min']:.3g}",
        "sign_zero": f"{100 * ext['sign_zero_share']:.0f}%",
        "sign_zero_s3": f"{100 * c['ce_sign_vanishes_in_s3']['zero_share_s3']:.0f}%",
        "ce_logit_s1": f"{c['ce_larger_than_logit_in_s1']['median_ratio']:.2f}",
        "max_gap": f"{ext['max_target_gap']:.1f}",
        "decomposition_error": f"{ap['decomposition_error']:.0e}",
        "s1_rel_median": f"{ap['relative']['S1']['q50']:.1e}",
        "s1_rel_p90": f"{ap['relative']['S1']['q90']:.1e}",
        "s3_scaled_median": f"{ap['scaled']['S3']['q50']:.1e}",
        "s3_scaled_p90": f"{ap['scaled']['S3']['q90']:.1e}",
        "bound_max": f"{2 * (1 - results['confident']):.2g}",
        "within_bound": "every" if c["theorem_within_bound"]["holds"] else "NOT every",
        "ratio_min": f"{ap['error_over_bound_min']:.3f}",
        "ratio_max": f"{ap['error_over_bound_max']:.3f}",
        "n_replicated": _shared.n_holding(c),
    }
    for s in ("S1", "S2", "S3"):
        out[f"share_{s.lower()}"] = f"{100 * share[s]:.0f}%"
    for name in LOSS_NAMES:
        short = {"CE": "ce", "CE-sign": "sign", "logit": "logit"}[name]
        out[f"path_{short}_moved"] = f"{paths[name]['last_10_steps_length_median']:.2g}"
        out[f"path_{short}_grad"] = f"{paths[name]['final_grad_norm_median']:.2g}"
        out[f"path_{short}_gap"] = f"{paths[name]['final_logit_gap_median']:.1f}"
    out.update(_shared.verdicts(c))
    return out


def magnitude_table(results: dict[str, Any]):
    """Per subspace: its share of the grid and the median and 90th percentile
    of each loss's step magnitude there."""
    import pandas as pd

    results = _shared.nan_for_none(results)
    table = pd.DataFrame({f"{name} {q}": {s: row[q] for s, row in summary.items()}
                          for name, summary in results["gradient_magnitude"].items() for q in ("q50", "q90")})
    table.insert(0, "share", pd.Series(results["subspace_share"]))
    return table.rename_axis("subspace")


def theorem_table(results: dict[str, Any]):
    """Theorem IV.2's error per subspace (float64): relative and scaled, median
    and 90th percentile, and the largest bound 2 (1 - sigma_d)."""
    import pandas as pd

    ap = _shared.nan_for_none(results["approximation"])
    rel, sc = ap["relative"], ap["scaled"]
    return pd.DataFrame({
        "points": {s: rel[s]["n"] for s in rel},
        "relative, median": {s: rel[s]["q50"] for s in rel},
        "relative, 90th pct": {s: rel[s]["q90"] for s in rel},
        "scaled, median": {s: sc[s]["q50"] for s in sc},
        "scaled, 90th pct": {s: sc[s]["q90"] for s in sc},
        "largest bound": ap["largest_bound"],
    }).rename_axis("subspace")


def path_table(results: dict[str, Any]):
    """Per loss, the paths' outcome (medians over the paths)."""
    import pandas as pd

    table = pd.DataFrame(_shared.nan_for_none(results["paths"]["summary"])).T.drop(columns="retrace_error")
    return table.rename(columns=lambda c: c.replace("_median", "").replace("_", " "))
