"""How close to optimal are the attacks? The exact minimal perturbations of a
small ReLU network (:mod:`advlib.exact`) beside what the attacks find.

The network is a fully connected 64-32-32-10 ReLU network (``models.mlp``)
trained on scikit-learn's 8x8 digits; its first correctly classified test
images are attacked in the L-inf and the L1 norm by

- DeepFool (``p = inf`` and ``p = 1``, the paper's overshoot), its returned
  point and the same point scaled back to its own boundary: the smallest
  ``t`` in (0, 1] for which ``x + t r`` is still adversarial, found by
  bisection along the ray, which removes the overshoot;
- fast gradient sign at each image's own smallest fooling ``eps``
  (:func:`advlib.attacks.fgsm_min_eps` on that image alone);
- IFGS (the basic iterative method, projected on the L-inf ball: PGD without
  a random start) at each image's smallest fooling ``eps``, found by
  bisection;
- Foolbox 3's L-inf DeepFool, where Foolbox is installed;

and the exact minimum of each norm is computed by mixed-integer programming,
starting from the best point the attacks found (which only prunes: the
solver's lower bound does not depend on it). The L-inf minimum is solved
before IFGS runs, whose bisection then starts from its certified lower bound
(no smaller eps can fool the image, so trying one would only cost time). Every attack's size is then a
ratio to the exact minimum, on the images the solver proved optimal.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks, data, exact, metrics, norms, peers, train
from ..attacks import deepfool, fgsm_min_eps, ifgs
from ..attacks._common import attacking, logits_of
from . import _shared

NORMS = {"linf": math.inf, "l1": 1.0}
"""The two norms the exact solver states, by their key in the results."""

METHODS = {
    "linf": ("deepfool", "deepfool_scaled", "fgsm", "ifgs", "foolbox_deepfool"),
    "l1": ("deepfool", "deepfool_scaled"),
}
"""The attacks measured in each norm, by their key in the results."""

LABELS = {
    "deepfool": "DeepFool (returned point)",
    "deepfool_scaled": "DeepFool (scaled back to its boundary)",
    "fgsm": "fast gradient sign (smallest fooling eps)",
    "ifgs": "IFGS / PGD (smallest fooling eps)",
    "foolbox_deepfool": "Foolbox 3 DeepFool",
}
"""How tables and figures name the attacks."""

RECIPE = dict(epochs=60, lr=0.01, optimizer="adam", batch_size=128)
"""The training recipe of the network (about 97% test accuracy on the digits)."""


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {"digits"}


def config(*, seed: int = 0, hidden: int = 32, depth: int = 2, epochs: int = 60, lr: float = 0.01) -> train.TrainConfig:
    """The network's recipe: ``models.mlp`` (``depth`` hidden layers of
    ``hidden`` ReLU units) on the 8x8 digits, Adam."""
    recipe = {**RECIPE, "epochs": epochs, "lr": lr}
    return train.TrainConfig("mlp", "digits", seed=seed, model_options={"hidden": hidden, "depth": depth}, **recipe)


def network(*, progress: bool = False, **recipe: Any) -> tuple[nn.Module, dict]:
    """The trained network (from the training cache when it is there)."""
    return train.trained(config(**recipe), progress=progress)


# ------------------------------------------------------------ the attacks


@torch.no_grad()
def scaled_to_boundary(model: nn.Module, x: Tensor, x_adv: Tensor, label: Tensor, *, steps: int = 30) -> Tensor:
    """``x + t r`` (``r = x_adv - x``) for the smallest ``t`` in (0, 1] that is
    still adversarial, by bisection along the ray (``steps`` halvings, all
    images at once): an attack's point without its overshoot. Points that
    are not adversarial are returned unchanged."""
    with attacking(model):
        r = x_adv - x
        shape = (-1,) + (1,) * (x.dim() - 1)
        lo = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        hi = torch.ones_like(lo)
        for _ in range(steps):
            mid = (lo + hi) / 2
            fooled = logits_of(model, x + mid.view(shape) * r).argmax(1) != label
            hi, lo = torch.where(fooled, mid, hi), torch.where(fooled, lo, mid)
        return x + hi.view(shape) * r


def _fgsm_smallest(model: nn.Module, x: Tensor, label: Tensor, rtol: float) -> Tensor:
    """Each image's fast gradient sign point at its own smallest fooling eps
    (the DeepFool paper's protocol with ``fraction=1`` on one image); ``x``
    where no eps fools it."""
    points = x.clone()
    for i in range(len(x)):
        try:
            _, res = fgsm_min_eps(model, x[i : i + 1], label=label[i : i + 1], fraction=1.0, rtol=rtol)
        except ValueError:  # fast gradient sign cannot fool this image at any eps
            continue
        points[i] = res.x_adv[0]
    return points


def _ifgs_smallest(
    model: nn.Module, x: Tensor, label: Tensor, start: Tensor, lower: Tensor, *, steps: int, rtol: float, progress: bool
) -> Tensor:
    """Each image's IFGS point at its own smallest fooling eps: eps doubled
    from ``start`` until the attack fools the image, then bisected down to
    relative precision ``rtol`` from ``lower``, a certified lower bound of
    the minimal perturbation (no eps below it can fool the image, so the
    bisection need not try one). The attack's success need not be monotone
    in eps: this is the smallest the bisection saw. Steps of ``eps / 8``."""
    points = x.clone()

    def attack(i: int, eps: float):
        res = ifgs(model, x[i : i + 1], label=label[i : i + 1], eps=eps, alpha=eps / 8, max_iter=steps)
        return res.x_adv[0] if bool(res.success[0]) else None

    for i in tqdm(range(len(x)), desc="IFGS eps", disable=not progress, leave=False):
        hi = float(start[i])
        found = attack(i, hi)
        while found is None and hi < 1.0:
            hi = min(2 * hi, 1.0)
            found = attack(i, hi)
        if found is None:
            continue
        lo = min(float(lower[i]), hi)
        while hi - lo > rtol * hi:
            mid = (lo + hi) / 2
            point = attack(i, mid)
            lo, hi, found = (lo, mid, point) if point is not None else (mid, hi, found)
        points[i] = found
    return points


def _foolbox_deepfool(model: nn.Module, x: Tensor, label: Tensor) -> tuple[Tensor | None, str]:
    """Foolbox 3's L-inf DeepFool (the peers chapter's settings), or why not."""
    try:
        return peers.runner("Foolbox 3", "deepfool_linf")(model, x, label, None), "ran"
    except peers.NotInstalled:
        return None, "not installed"


@torch.no_grad()
def _measure(model: nn.Module, x: Tensor, points: Tensor, label: Tensor) -> dict[str, list]:
    """Per image: whether ``points`` is adversarial (one forward pass) and its
    size in each norm (None where it is not)."""
    with attacking(model):
        success = logits_of(model, points).argmax(1) != label
    out: dict[str, list] = {"success": success.tolist()}
    for key, p in NORMS.items():
        size = norms.lp_norm((points - x).double(), p)
        out[key] = [float(s) if hit else None for s, hit in zip(size, success)]
    return out


# ------------------------------------------------------------ the numbers


def ratios(sizes: list, distance: list, status: list) -> list:
    """``size / exact minimum`` per image, None where the attack failed or the
    solver did not prove its minimum."""
    return [
        s / d if s is not None and st == "optimal" and d is not None and d > 0 else None
        for s, d, st in zip(sizes, distance, status)
    ]


def summary(values: list) -> dict[str, Any]:
    """Median, mean, min, max of the ratios that exist, and the shares of
    them within 1% and 5% of optimal (ratio at most 1.01, 1.05)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None, "within_1pct": None, "within_5pct": None}
    return {
        "n": len(got),
        "median": statistics.median(got),
        "mean": statistics.fmean(got),
        "min": min(got),
        "max": max(got),
        "within_1pct": sum(v <= 1.01 for v in got) / len(got),
        "within_5pct": sum(v <= 1.05 for v in got) / len(got),
    }


def claims(results: Mapping[str, Any], *, tolerance: float, near: float) -> dict[str, Any]:
    """The chapter's claims, each verdict computed from the per-image numbers
    in ``results`` (the claims test recomputes them the same way)."""
    worst_bound, lowest, compared = 0.0, math.inf, 0
    for key in NORMS:
        lower = results["exact"][key]["lower_bound"]
        for method, entry in results["attacks"][key].items():
            if not entry["ran"]:
                continue
            for size, lb in zip(entry["size"], lower):
                if size is not None and size > 0:
                    worst_bound, compared = max(worst_bound, lb / size), compared + 1
            got = [v for v in results["ratios"][key][method] if v is not None]
            lowest = min([lowest, *got])
    table = results["summary"]
    df_inf, df_1 = table["linf"]["deepfool"]["median"], table["l1"]["deepfool"]["median"]
    fgsm_inf = table["linf"]["fgsm"]["median"]
    solved = {key: results["exact"][key]["status"].count("optimal") for key in NORMS}
    n = results["n_images"]
    return {
        "lower_bound_below_every_attack": _shared.claim(
            f"no attack finds a perturbation smaller than the solver's certified lower bound (up to {tolerance:g}, the solver's tolerance)",
            compared > 0 and worst_bound <= 1 + tolerance,
            f"largest lower bound / attack size: {worst_bound:.6f} ({compared} points)",
            worst=worst_bound, compared=compared,
        ),
        "ratios_at_least_one": _shared.claim(
            f"every attack's size is at least the exact minimum (ratio >= 1 - {tolerance:g}, the solver's tolerance)",
            math.isfinite(lowest) and lowest >= 1 - tolerance,
            f"smallest ratio: {lowest:.6f}",
            smallest=lowest, tolerance=tolerance,
        ),
        "deepfool_nearly_minimal": _shared.claim(
            f"DeepFool finds nearly minimal perturbations: its median L-inf ratio to the exact minimum is at most {1 + near:g}",
            df_inf is not None and df_inf <= 1 + near,
            f"median ratio {df_inf:.3f} (L-inf), {df_1:.3f} (L1)" if df_inf is not None and df_1 is not None else "no ratio",
            median_linf=df_inf, median_l1=df_1, threshold=1 + near,
        ),
        "deepfool_closer_than_fgsm": _shared.claim(
            "DeepFool's perturbations are closer to the minimum than fast gradient sign's (median L-inf ratios)",
            df_inf is not None and fgsm_inf is not None and df_inf < fgsm_inf,
            f"median ratio {df_inf:.3f} (DeepFool) vs {fgsm_inf:.3f} (fast gradient sign)"
            if df_inf is not None and fgsm_inf is not None else "no ratio",
            deepfool=df_inf, fgsm=fgsm_inf,
        ),
        "every_image_solved": _shared.claim(
            "the solver proves the minimum of every image within its time limit, in both norms",
            all(v == n for v in solved.values()),
            f"proved optimal: {solved['linf']} of {n} (L-inf), {solved['l1']} of {n} (L1)",
            solved=solved, n=n,
        ),
    }


# ------------------------------------------------------------ the protocol


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters`` (``given``: more of run's
    arguments, e.g. networks already loaded)."""
    return run(**_shared.arguments(run, parameters), **given)


def run(
    *,
    seed: int = 0,
    hidden: int = 32,
    depth: int = 2,
    epochs: int = 60,
    lr: float = 0.01,
    n_images: int = 40,
    overshoot: float = 0.02,
    ifgs_steps: int = 50,
    rtol: float = 1e-3,
    time_limit: float = 20.0,
    mip_rel_gap: float = 1e-4,
    tolerance: float = 1e-3,
    near: float = 0.05,
    model: nn.Module | None = None,
    info: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The chapter's protocol (see the module docstring).

    Args:
        seed, hidden, depth, epochs, lr: the network's recipe (:func:`config`),
            used when ``model`` is not given.
        n_images: the first correctly classified test images.
        overshoot: DeepFool's eta.
        ifgs_steps: IFGS iterations at each eps tried.
        rtol: relative precision of the smallest fooling eps (fast gradient
            sign and IFGS).
        time_limit: the solver's seconds per image and norm.
        mip_rel_gap: the solver's relative gap.
        tolerance: how far below 1 a ratio may be and count as 1 (the
            solver's gap and the margin of its point).
        near: DeepFool counts as nearly minimal if its median ratio is at most ``1 + near``.
        model, info: a trained network and its info (as :func:`network`
            returns them) instead of the recipe's.
        progress: tqdm bars (the solver's over images, IFGS's).

    Returns:
        ``{"model", "n_images", "index", "exact": {norm: {"distance",
        "lower_bound", "status", "seconds", "programs", "label_adv", "success",
        "x_adv"}}, "attacks":
        {norm: {method: {"ran", "size", "success", "seconds"}}}, "ratios",
        "summary", "solver", "claims"}`` (norm ``"linf"`` or ``"l1"``).
    """
    n_images = checks.integer(n_images, "n_images", low=1)
    overshoot = checks.number(overshoot, "overshoot", low=0)
    ifgs_steps = checks.integer(ifgs_steps, "ifgs_steps", low=1)
    rtol = checks.number(rtol, "rtol", low=0, low_open=True, high=1)
    tolerance = checks.number(tolerance, "tolerance", low=0, high=1)
    near = checks.number(near, "near", low=0)
    checks.flag(progress, "progress")
    if (model is None) != (info is None):
        raise ValueError("give both model and info (as network() returns them), or neither")
    if model is None:
        model, info = network(seed=seed, hidden=hidden, depth=depth, epochs=epochs, lr=lr, progress=progress)
    model.eval()
    images = data.first_correct(model, data.load("digits", "test"), n_images)
    x, y = images.x, images.y

    points: dict[str, dict[str, Tensor]] = {"linf": {}, "l1": {}}
    seconds: dict[str, dict[str, float]] = {"linf": {}, "l1": {}}
    for key, p in NORMS.items():
        with metrics.Timer() as t:
            found = deepfool(model, x, label=y, p=p, overshoot=overshoot)
        points[key]["deepfool"], seconds[key]["deepfool"] = found.x_adv, t.seconds
        with metrics.Timer() as t:
            points[key]["deepfool_scaled"] = scaled_to_boundary(model, x, found.x_adv, y)
        seconds[key]["deepfool_scaled"] = seconds[key]["deepfool"] + t.seconds
    with metrics.Timer() as t:
        points["linf"]["fgsm"] = _fgsm_smallest(model, x, y, rtol)
    seconds["linf"]["fgsm"] = t.seconds
    with metrics.Timer() as t:
        foolbox, why = _foolbox_deepfool(model, x, y)
    if foolbox is not None:
        points["linf"]["foolbox_deepfool"], seconds["linf"]["foolbox_deepfool"] = foolbox, t.seconds

    def solve(key: str):
        # From the smallest adversarial point any attack found in this norm
        # (every attack's point counts, whatever norm it minimised).
        best, best_size = x.clone(), [math.inf] * len(x)
        for pts in (pts for where in NORMS for pts in points[where].values()):
            for i, size in enumerate(_measure(model, x, pts, y)[key]):
                if size is not None and size < best_size[i]:
                    best[i], best_size[i] = pts[i], size
        return exact.minimal_perturbation(
            model, x, p=NORMS[key], label=y, start=best, time_limit=time_limit, mip_rel_gap=mip_rel_gap,
            progress=progress,
        )

    solved = {"linf": solve("linf")}
    with metrics.Timer() as t:
        start = norms.lp_norm(points["linf"]["deepfool"] - x, math.inf).clamp_min(1e-3)
        points["linf"]["ifgs"] = _ifgs_smallest(
            model, x, y, start, solved["linf"].lower_bound, steps=ifgs_steps, rtol=rtol, progress=progress,
        )
    seconds["linf"]["ifgs"] = t.seconds
    solved["l1"] = solve("l1")

    results: dict[str, Any] = {
        "model": {"config": dict(info["config"]), "test_accuracy": info["test_accuracy"],
                  "layers": [int(x[0].numel())] + [w.shape[0] for w, _ in exact.affine_layers(model)]},
        "n_images": len(x),
        "index": images.index.tolist(),
        "exact": {},
        "attacks": {},
        "ratios": {},
        "summary": {},
        "solver": {},
    }
    for key in NORMS:
        res = solved[key]
        distance = [d if math.isfinite(d) else None for d in res.distance.tolist()]
        times = res.seconds.tolist()
        results["exact"][key] = {
            "distance": distance,
            "lower_bound": res.lower_bound.tolist(),
            "status": res.status,
            "seconds": times,
            "programs": res.iterations.tolist(),
            "label_adv": res.label_adv.tolist(),
            "success": res.success.tolist(),
            "x_adv": res.x_adv.flatten(1).tolist(),  # the exact points, to re-judge (64 values an image)
        }
        results["solver"][key] = {
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times), "max_s": max(times),
            "total_s": sum(times), "optimal": res.status.count("optimal"), "time_limit": res.status.count("time limit"),
        }
        results["attacks"][key], results["ratios"][key], results["summary"][key] = {}, {}, {}
        for m in METHODS[key]:
            if m not in points[key]:
                results["attacks"][key][m] = {"ran": False, "reason": why, "size": [], "success": []}
                results["ratios"][key][m] = []
                results["summary"][key][m] = summary([])
                continue
            got = _measure(model, x, points[key][m], y)
            results["attacks"][key][m] = {"ran": True, "size": got[key], "success": got["success"], "seconds": seconds[key][m]}
            results["ratios"][key][m] = ratios(got[key], distance, res.status)
            results["summary"][key][m] = summary(results["ratios"][key][m])
    results["claims"] = claims(results, tolerance=tolerance, near=near)
    return _shared.jsonable(results)


# ------------------------------------------------------------ the page


NORM_LABELS = {"linf": "L∞", "l1": "L1"}


def table(results: Mapping[str, Any]):
    """The ratios to the exact minimum, one row per norm and attack: how
    many images, median / mean / max ratio, the shares within 1% and 5% of
    optimal, and the attack's time for all the images (a DataFrame)."""
    import pandas as pd

    rows = {}
    for key in NORMS:
        for m in METHODS[key]:
            entry, s = results["attacks"][key][m], _shared.nan_for_none(results["summary"][key][m])
            name = (NORM_LABELS[key], LABELS[m])
            if not entry["ran"]:
                rows[name] = {"images": entry["reason"]}
                continue
            rows[name] = {
                "images": f"{s['n']}",
                "median": f"{s['median']:.4f}", "mean": f"{s['mean']:.4f}", "max": f"{s['max']:.4f}",
                "within 1%": f"{s['within_1pct']:.0%}", "within 5%": f"{s['within_5pct']:.0%}",
                "attack time (s)": f"{entry['seconds']:.2f}",
            }
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["norm", "attack"])
    return frame


def solver_table(results: Mapping[str, Any]):
    """The exact solver per norm: images proved optimal, stopped by the time
    limit, and its seconds per image (median, mean, max, total)."""
    import pandas as pd

    return pd.DataFrame({
        NORM_LABELS[key]: {
            "proved optimal": f"{s['optimal']} of {results['n_images']}",
            "stopped by the time limit": f"{s['time_limit']}",
            "median s / image": f"{s['median_s']:.2f}", "mean s / image": f"{s['mean_s']:.2f}",
            "max s / image": f"{s['max_s']:.2f}", "total s": f"{s['total_s']:.1f}",
        }
        for key, s in results["solver"].items()
    }).T


def texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The pre-formatted numbers the page's prose glues in."""
    def ratio(key: str, m: str, field: str = "median") -> str:
        value = results["summary"][key][m][field]
        if value is None:
            return results["attacks"][key][m].get("reason") or "no ratio"
        return f"{value:.0%}" if field.startswith("within") else f"{value:.3f}"

    n = results["n_images"]
    solver = results["solver"]
    out = {
        "opt_n": f"{n}",
        "opt_accuracy": f"{results['model']['test_accuracy']:.1%}",
        "opt_layers": "-".join(map(str, results["model"]["layers"])),
        "opt_solved": f"{solver['linf']['optimal']} of {n} (L∞) and {solver['l1']['optimal']} of {n} (L1)",
        "opt_solver_median": f"{solver['linf']['median_s']:.2f} s (L∞) and {solver['l1']['median_s']:.2f} s (L1)",
        "opt_solver_max": f"{max(s['max_s'] for s in solver.values()):.1f} s",
    }
    for key in NORMS:
        for m in METHODS[key]:
            for field in ("median", "max", "within_1pct", "within_5pct"):
                out[f"opt_{key}_{m}_{field}"] = ratio(key, m, field)
    out.update(_shared.verdicts(results["claims"]))
    out["opt_n_holding"] = _shared.n_holding(results["claims"])
    return out
