"""DeepFool's geometry (the paper's Figures 2-5) on classifiers of the plane.

Four classifiers, where every region can be drawn:

- two affine ones set by hand, in float64, whose minimal perturbation is
  known in closed form (Figure 2: one logit ``f(x) = w.x + b``; Figure 4:
  four classes, class 0 owning a triangle);
- two one-hidden-layer ReLU networks (``models.mlp2d``) trained on toy sets
  of the plane (Figure 3: ``circles``, two classes; Figure 5: three noisy
  concentric rings, :func:`rings`).

:func:`run` attacks them with :func:`advlib.attacks.deepfool` and returns the
closed forms beside DeepFool's answers, the iterates of one attack per
network (``trace=True``: the attack's own iterates, not re-runs) with the
network's linearisation at each, the statistics over the test sets, and the
claims. The networks are attacked as in the paper: overshoot ``eta``, no box.

Example::

    toy = toy_sets(n_points=1000, noise=0.03, seed=0)
    nets = networks(toy, hidden=24, epochs=300, lr=0.05, seed=0)
    results = run(nets=nets, toy=toy)
    results["claims"]["affine_binary_exact"]["holds"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import checks, data, published, train
from ..attacks import deepfool
from . import _shared

RADII = (0.12, 0.26, 0.40)
"""The three rings' radii around (0.5, 0.5), one class each."""

RING_CLASSES = ("inner disc", "middle ring", "outer ring")

BINARY_AFFINE = {"weight": [[1.0, 0.6]], "bias": [-0.8]}
"""Figure 2's classifier: one logit, label ``f(x) > 0``."""

# Class 0 has w = 0 and b = 0. Each other row is the outward normal of one side
# of the triangle (0.12, 0.18), (0.85, 0.30), (0.40, 0.85), so class 0 wins
# exactly inside it, where every f_k - f_0 = w_k . x + b_k is negative.
MULTI_AFFINE = {
    "weight": [[0.0, 0.0], [0.12, -0.73], [0.55, 0.45], [-0.67, 0.28]],
    "bias": [0.0, 0.117, -0.6025, 0.03],
}
"""Figure 4's classifier: four classes, class 0 owning a triangle."""

X0 = {"binary": (0.25, 0.35), "multiclass": (0.45, 0.40)}
"""The starting points of the two affine pictures."""

EXACT = dict(overshoot=0.0, step_margin=0.0, clip=None)
"""DeepFool with no overshoot and no margin: one step is the closed form on an affine model."""

EXACT_TOLERANCE = 1e-12  # float64 rounding of one projection
PROJECTION_TOLERANCE = 1e-5  # float32 networks: rounding of the first step's length
MAX_ITER = 50


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {"circles"}  # the rings are made here


# ---------------------------------------------------------------- the classifiers


def affine(weight, bias) -> nn.Linear:
    """A float64 ``nn.Linear`` with these weights (``[C, d]``) and bias (``[C]``)."""
    layer = nn.Linear(len(weight[0]), len(weight), dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return layer.eval()


def affine_models() -> dict[str, nn.Linear]:
    """Figures 2 and 4's classifiers: ``{"binary", "multiclass"}``."""
    return {"binary": affine(**BINARY_AFFINE), "multiclass": affine(**MULTI_AFFINE)}


def rings(split: str, *, n_points: int = 1000, noise: float = 0.03, seed: int = 0) -> data.Dataset:
    """Three noisy concentric rings around (0.5, 0.5), one class each
    (radii :data:`RADII`), clipped into the unit square; the first 75% of
    the ``n_points`` are the training split, the rest the test split."""
    checks.choice(split, "split", data.SPLITS)
    n_points = checks.integer(n_points, "n_points", low=4)
    noise = checks.number(noise, "noise", low=0)
    checks.integer(seed, "seed", low=0)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(RADII), n_points)
    angle = rng.uniform(0, 2 * np.pi, n_points)
    radius = np.asarray(RADII)[label] + rng.normal(0, noise, n_points)
    x = 0.5 + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    cut = 3 * n_points // 4
    part = slice(0, cut) if split == "train" else slice(cut, n_points)
    return data.Dataset(
        x=torch.tensor(x[part].clip(0, 1), dtype=torch.float32),
        y=torch.tensor(label[part], dtype=torch.long),
        name="rings",
        split=split,
        classes=RING_CLASSES,
        source="three noisy concentric rings (advlib.experiments.deepfool_geometry.rings)",
        options={"n_points": n_points, "noise": noise, "seed": seed, "radii": list(RADII)},
    )


def toy_sets(*, n_points: int = 1000, noise: float = 0.03, seed: int = 0) -> dict[str, dict[str, data.Dataset]]:
    """``{"circles": {"train", "test"}, "rings": {"train", "test"}}``."""
    circles = dict(n_samples=n_points, noise=noise, seed=seed)
    return {
        "circles": {s: data.load("circles", s, **circles) for s in data.SPLITS},
        "rings": {s: rings(s, n_points=n_points, noise=noise, seed=seed) for s in data.SPLITS},
    }


def network(train_set: data.Dataset, *, hidden: int = 24, **options: Any) -> nn.Module:
    """This chapter's 2-D network: :func:`advlib.train.plane_network` with 24 hidden units by default."""
    return train.plane_network(train_set, hidden=hidden, **options)


def networks(toy: Mapping[str, Mapping[str, data.Dataset]], **options: Any) -> dict[str, nn.Module]:
    """Figures 3 and 5's networks, :func:`network` on each toy training set."""
    return {name: network(splits["train"], **options) for name, splits in toy.items()}


# ---------------------------------------------------------------- the geometry


def linearisation(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The logits ``f(x)`` ``[P, C]`` and their gradients ``[P, C, d]`` at the
    points ``x`` ``[P, d]``: the first-order expansion DeepFool steps on. A
    model with one logit is read as the two logits ``(0, f)``, as the attack reads it."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = model(x)
        if f.shape[1] == 1:
            f = torch.cat([torch.zeros_like(f), f], dim=1)
        grads = [torch.autograd.grad(f[:, k].sum(), x, retain_graph=True)[0] for k in range(f.shape[1])]
    return f.detach(), torch.stack(grads, dim=1)


def longest_second_step(model: nn.Module, k0: int, n: int = 41, **options: Any) -> Tensor:
    """The point of an ``n`` x ``n`` grid inside the square, labelled ``k0``,
    whose second DeepFool step is the longest: where linearising misses the
    boundary most (``[1, 2]``)."""
    ticks = torch.linspace(0.05, 0.95, n)
    pts = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)
    pts = pts[train.predict(model, pts) == k0]
    if not len(pts):
        raise ValueError(f"no grid point is labelled {k0}")
    steps = deepfool(model, pts, max_iter=2, trace=True, **options).trace["x"]
    if len(steps) < 3:  # every point flipped at the first step
        return pts[:1]
    i = int((steps[2] - steps[1]).norm(dim=1).argmax())
    return pts[i : i + 1]


def _path(model: nn.Module, x0: Tensor, options: Mapping[str, Any]) -> dict[str, Any]:
    """One attack from ``x0``, with its iterates and the linearisation at each."""
    res = deepfool(model, x0, max_iter=MAX_ITER, trace=True, **options)
    path = res.trace["x"][: int(res.iterations[0]) + 1, 0]
    f, g = linearisation(model, path)
    return {
        "x0": x0[0], "path": path, "path_logits": f, "path_gradients": g,
        "iterations": int(res.iterations[0]), "success": bool(res.success[0]),
        "label_orig": int(res.label_orig[0]), "label_adv": int(res.label_adv[0]),
        "norm": res.norms()[0], "x_adv": res.x_adv[0],
    }


def _test_stats(model: nn.Module, test: data.Dataset, options: Mapping[str, Any]) -> dict[str, Any]:
    res = deepfool(model, test.x, max_iter=MAX_ITER, **options)
    counts = torch.bincount(res.iterations).tolist()
    return {
        "success_rate": res.success_rate,
        "mean_iterations": res.iterations.double().mean().item(),
        "max_iterations": int(res.iterations.max()),
        "iteration_counts": {str(k): c for k, c in enumerate(counts) if c},
        "n_points": len(test),
    }


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The ``toy`` sets (:func:`toy_sets`) and the ``nets`` trained on them
    (:func:`networks`), from the notebook's parameters."""
    toy = toy_sets(n_points=parameters["n_points"], noise=parameters["noise"], seed=parameters["seed"])
    nets = networks(toy, hidden=parameters["hidden"], epochs=parameters["epochs"], lr=parameters["lr"],
                    seed=parameters["seed"])
    return {"toy": toy, "nets": nets}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    return _shared.call(run, parameters, given or load(parameters))


def run(
    *,
    nets: Mapping[str, nn.Module],
    toy: Mapping[str, Mapping[str, data.Dataset]],
    overshoot: float = 0.02,
    start_grid: int = 41,
    progress: bool = False,
) -> dict[str, Any]:
    """The chapter's measurements.

    Args:
        nets: ``{"circles", "rings"}``, the trained networks (:func:`networks`).
        toy: their data, as :func:`toy_sets` returns it.
        overshoot: DeepFool's eta on the networks (the paper's 0.02).
        start_grid: points per side of the grid the drawn starting points are chosen from.
        progress: unused (every attack here takes milliseconds); kept for the common signature.

    Returns:
        A JSON-able dict: ``accuracy``; ``affine_binary`` and ``affine_multiclass``
        (DeepFool's one step beside the closed form); ``circles`` and ``rings``
        (over the test set: success, iterations; one drawn attack: its
        iterates ``path`` ``[steps + 1, 2]`` and the logits and gradients at
        each); ``claims``.
    """
    if set(nets) != {"circles", "rings"} or not set(nets) <= set(toy):
        raise ValueError(
            f"nets must be {{'circles', 'rings'}} with their data in toy, got {sorted(nets)}, {sorted(toy)}")
    overshoot = checks.number(overshoot, "overshoot", low=0)
    start_grid = checks.integer(start_grid, "start_grid", low=2)
    checks.flag(progress, "progress")
    options = dict(overshoot=overshoot, clip=None)
    affine_nets = affine_models()
    out: dict[str, Any] = {"overshoot": overshoot}
    out["accuracy"] = {
        name: {s: train.accuracy(nets[name], toy[name][s].x, toy[name][s].y) for s in ("train", "test")}
        for name in nets
    }

    # Figure 2: the projection on the hyperplane, r* = -f(x0) w / ||w||^2.
    binary = affine_nets["binary"]
    w, b = binary.weight.detach()[0], binary.bias.detach()[0]
    x0 = torch.tensor([X0["binary"]], dtype=torch.float64)
    r_star = -(x0[0] @ w + b) / (w @ w) * w
    step = deepfool(binary, x0, max_iter=1, **EXACT)
    out["affine_binary"] = {
        "x0": x0[0], "x_adv": step.x_adv[0], "r_star": r_star, "perturbation": step.perturbation[0],
        "r_star_norm": r_star.norm().item(), "deepfool_norm": step.norms()[0].item(),
        "difference_norm": (step.perturbation[0] - r_star).norm().item(), "success": bool(step.success[0]),
    }

    # Figure 4: the projection on the nearest face F_l of the polyhedron P.
    multi = affine_nets["multiclass"]
    W, B = multi.weight.detach(), multi.bias.detach()
    x0 = torch.tensor([X0["multiclass"]], dtype=torch.float64)
    with torch.no_grad():
        f0 = multi(x0)[0]
    k0 = int(f0.argmax())
    face = {k: ((f0[k] - f0[k0]).abs() / (W[k] - W[k0]).norm()).item() for k in range(len(B)) if k != k0}
    closest = min(face, key=face.get)
    w_l = W[closest] - W[k0]
    r_star = (f0[closest] - f0[k0]).abs() / w_l.norm() ** 2 * w_l
    step = deepfool(multi, x0, max_iter=1, **EXACT)
    with torch.no_grad():  # the face DeepFool landed on: the class that ties k0 there
        landed = multi(step.x_adv)[0]
    ties = {k: abs((landed[k] - landed[k0]).item()) for k in face}
    out["affine_multiclass"] = {
        "x0": x0[0], "x_adv": step.x_adv[0], "k0": k0, "closest": closest,
        "face_distances": {str(k): d for k, d in face.items()}, "landed_on": min(ties, key=ties.get),
        "r_star": r_star, "r_star_norm": r_star.norm().item(), "deepfool_norm": step.norms()[0].item(),
        "difference_norm": (step.perturbation[0] - r_star).norm().item(),
    }

    # Figures 3 and 5: the networks, one drawn attack each and the test sets.
    for name, k_start in (("circles", 0), ("rings", 1)):  # the outer circle; the middle ring
        net = nets[name]
        start = longest_second_step(net, k_start, start_grid, **options)
        out[name] = {**_test_stats(net, toy[name]["test"], options), "drawn": _path(net, start, options)}

    # Figure 5's first step: the projection on the nearest face of the linearised
    # polyhedron P~_0, lengthened by the margin 1e-4 and by (1 + overshoot).
    drawn = out["rings"]["drawn"]
    f, g, k0 = drawn["path_logits"][0], drawn["path_gradients"][0], drawn["label_orig"]
    nearest = min(((f[k] - f[k0]).abs() / (g[k] - g[k0]).norm()).item() for k in range(len(f)) if k != k0)
    first = (drawn["path"][1] - drawn["path"][0]).norm().item() if len(drawn["path"]) > 1 else float("nan")
    drawn["nearest_face_distance"] = nearest
    drawn["first_step"] = first
    drawn["first_step_vs_projection"] = abs(first / (1 + overshoot) - 1e-4 - nearest)

    ab, am = out["affine_binary"], out["affine_multiclass"]
    fewer_than = published.load("deepfool_geometry")["iterations"]["values"]["fewer_than"]  # the paper's "less than 3"
    mean_iter = {n: out[n]["mean_iterations"] for n in nets}
    success = {n: out[n]["success_rate"] for n in nets}
    out["claims"] = {
        "affine_binary_exact": _shared.claim(
            "on the affine binary classifier one DeepFool step is the orthogonal projection r* (float64)",
            ab["difference_norm"] <= EXACT_TOLERANCE,
            f"||r - r*|| = {ab['difference_norm']:.1e}", difference_norm=ab["difference_norm"],
            tolerance=EXACT_TOLERANCE),
        "affine_multiclass_exact": _shared.claim(
            "on the affine multiclass classifier one step is the projection on the nearest face F_l (float64)",
            am["difference_norm"] <= EXACT_TOLERANCE and am["landed_on"] == am["closest"],
            f"||r - r*|| = {am['difference_norm']:.1e}; nearest face {am['closest']}, landed on {am['landed_on']}",
            difference_norm=am["difference_norm"], tolerance=EXACT_TOLERANCE, closest=am["closest"],
            landed_on=am["landed_on"]),
        "first_step_is_projection": _shared.claim(
            "on the rings network the first step is the projection on the nearest face of P~_0",
            drawn["first_step_vs_projection"] <= PROJECTION_TOLERANCE,
            f"|step / (1 + eta) - margin - distance| = {drawn['first_step_vs_projection']:.1e}",
            error=drawn["first_step_vs_projection"], tolerance=PROJECTION_TOLERANCE),
        "fools_every_point": _shared.claim(
            "DeepFool changes the label of every test point of both networks",
            all(v == 1.0 for v in success.values()),
            ", ".join(f"{n}: {100 * v:.1f}%" for n, v in success.items()), success_rate=success),
        "few_iterations": _shared.claim(
            f"DeepFool needs fewer than {fewer_than} iterations on average",
            all(v < fewer_than for v in mean_iter.values()),
            ", ".join(f"{n}: {v:.2f}" for n, v in mean_iter.items()), mean_iterations=mean_iter,
            below=fewer_than),
    }
    return _shared.jsonable(out)


def record_data(run: Any, toy: Mapping[str, Mapping[str, Any]]) -> None:
    """Name every split of the toy data sets in the provenance ``run``: "train (circles)", ...."""
    for name, splits in toy.items():
        for split, dataset in splits.items():
            run.data(f"{split} ({name})", dataset)


def texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The numbers the prose quotes, formatted: glue name -> text."""
    ab, am = results["affine_binary"], results["affine_multiclass"]
    c, r = results["circles"], results["rings"]
    out = {
        "binary_r_norm": f"{ab['r_star_norm']:.4f}",
        "binary_err": f"{ab['difference_norm']:.1e}",
        "multi_l": f"{am['closest']}",
        "multi_err": f"{am['difference_norm']:.1e}",
        "circles_steps": f"{c['drawn']['iterations']}",
        "circles_success": f"{100 * c['success_rate']:.0f}%",
        "circles_mean_iter": f"{c['mean_iterations']:.2f}",
        "circles_max_iter": f"{c['max_iterations']}",
        "rings_steps": f"{r['drawn']['iterations']}",
        "rings_step_err": f"{r['drawn']['first_step_vs_projection']:.0e}",
        "rings_success": f"{100 * r['success_rate']:.0f}%",
        "rings_mean_iter": f"{r['mean_iterations']:.2f}",
        "rings_max_iter": f"{r['max_iterations']}",
        "n_holding": _shared.n_holding(results["claims"]),
    }
    out.update(_shared.verdicts(results["claims"]))
    return out


def accuracy_table(results: Mapping[str, Any]):
    """Train and test accuracy of the two networks."""
    import pandas as pd

    names = {"circles": "circles (2 classes)", "rings": "rings (3 classes)"}
    return pd.DataFrame({names[n]: {"train accuracy": a["train"], "test accuracy": a["test"]}
                         for n, a in results["accuracy"].items()}).T


def face_table(results: Mapping[str, Any]):
    """Figure 4: the distance from x0 to each hyperplane F_k."""
    import pandas as pd

    faces = results["affine_multiclass"]["face_distances"]
    return pd.DataFrame({"distance from x0": {int(k): v for k, v in faces.items()}}).rename_axis("face k")

