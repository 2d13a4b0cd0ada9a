"""The DeepFool geometry chapter's figures (the paper's Figures 2 to 5), drawn
from :func:`advlib.experiments.deepfool_geometry.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..experiments import _shared
from .plane import COLORS, arr, box, draw_line, draw_path, draw_regions, grid_points, zoom_box


def affine_binary(results, model, *, grid: int = 300):
    """Figure 2: one DeepFool step from ``x_0`` on the affine binary ``model``, with ``w``."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    w = model.weight.detach()[0].numpy()
    b = model.bias.detach()[0].item()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    draw_regions(ax, model, n=grid, lines=False)
    draw_line(ax, w, b, (0, 0), (1, 1), color="k", lw=1.5)
    p0, p1 = arr(results["affine_binary"]["x0"]), arr(results["affine_binary"]["x_adv"])
    draw_path(ax, [p0, p1])
    ax.annotate(r"$r_*(x_0)$", (p0 + p1) / 2, textcoords="offset points", xytext=(6, -12))
    tip = p1 + 0.15 * w / np.linalg.norm(w)
    ax.annotate("", xy=tip, xytext=p1, arrowprops=dict(arrowstyle="-|>", color="0.45", lw=1.2))
    ax.annotate("$w$", tip, textcoords="offset points", xytext=(3, 3), color="0.35")
    ax.annotate(r"$\mathscr{F}: f(x) = 0$", (0.72, 0.13))
    ax.annotate("$f(x) < 0$", (0.06, 0.9))
    ax.annotate("$f(x) > 0$", (0.75, 0.9))
    box(ax)
    return fig


def nonlinear_binary(results, model, test_set, *, grid: int = 300):
    """Figure 3: the circles network's regions and test points, and DeepFool's
    iterates with the zero set of each linearisation (zoomed)."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    drawn = results["circles"]["drawn"]
    path, f_at, g_at = arr(drawn["path"]), arr(drawn["path_logits"]), arr(drawn["path_gradients"])
    fig, (ax_all, ax_zoom) = plt.subplots(1, 2, figsize=(8.4, 4.2))
    draw_regions(ax_all, model, n=grid)
    pts = test_set.x.numpy()
    ax_all.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6, c=[COLORS[k] for k in test_set.y])
    ax_all.scatter(*path[0], s=30, color="k", zorder=5)
    box(ax_all)
    ax_all.set_title("decision regions and test points")

    lo, hi = zoom_box(path)
    draw_regions(ax_zoom, model, lo, hi, n=grid)
    for i in range(len(path) - 1):
        # The zero set of the linearisation of f = f_1 - f_0 at the iterate.
        a = g_at[i, 1] - g_at[i, 0]
        c = f_at[i, 1] - f_at[i, 0] - a @ path[i]
        draw_line(ax_zoom, a, c, lo, hi, color="0.25", lw=1, ls="--")
    draw_path(ax_zoom, path)
    box(ax_zoom, lo, hi)
    ax_zoom.set_title("DeepFool's iterates (zoom)")
    return fig


def affine_multiclass(results, model, *, grid: int = 300):
    """Figure 4: the polyhedron of ``k_0``, its hyperplanes, and the one DeepFool step."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    W, B = model.weight.detach().numpy(), model.bias.detach().numpy()
    k0 = results["affine_multiclass"]["k0"]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    draw_regions(ax, model, n=grid)
    p0 = arr(results["affine_multiclass"]["x0"])
    for k in range(len(B)):
        if k == k0:
            continue
        a, c = W[k] - W[k0], B[k] - B[k0]
        draw_line(ax, a, c, (0, 0), (1, 1), color="0.3", lw=1, ls="--")
        foot = p0 - (a @ p0 + c) / (a @ a) * a
        ax.annotate(rf"$\mathscr{{F}}_{k}$", foot, textcoords="offset points", xytext=(-14, 6), color="0.2")
    draw_path(ax, [p0, arr(results["affine_multiclass"]["x_adv"])])
    ax.annotate("$P$", (0.36, 0.58), fontsize=12)
    box(ax)
    return fig


def nonlinear_multiclass(results, model, *, grid: int = 300):
    """Figure 5: the rings network's regions, and at the first two iterates the
    linearised polyhedron of the original class and DeepFool's step."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    drawn = results["rings"]["drawn"]
    path, f_at, g_at = arr(drawn["path"]), arr(drawn["path_logits"]), arr(drawn["path_gradients"])
    k0 = drawn["label_orig"]
    panels = min(2, len(path) - 1)
    fig, axes = plt.subplots(1, 1 + panels, figsize=(4.2 * (1 + panels), 4.2))
    draw_regions(axes[0], model, n=grid)
    axes[0].scatter(*path[0], s=30, color="k", zorder=5)
    box(axes[0])
    axes[0].set_title("decision regions")
    lo, hi = zoom_box(path, pad=0.9, minimum=0.1)
    gx, gy, pts = grid_points(lo, hi, grid)
    for i, ax in enumerate(axes[1:]):
        draw_regions(ax, model, lo, hi, n=grid, alpha=0.18)
        f, g = f_at[i], g_at[i]
        lin = f + (pts - path[i]) @ g.T  # every logit's first-order expansion at x_i
        inside = (lin.argmax(axis=1) == k0).reshape(gx.shape)
        ax.contourf(gx, gy, inside, levels=[0.5, 1.5], colors="none", hatches=["///"])
        for k in range(len(f)):
            if k != k0:
                a = g[k] - g[k0]
                c = f[k] - f[k0] - a @ path[i]
                draw_line(ax, a, c, lo, hi, color="0.2", lw=1, ls="--")
        draw_path(ax, path[: i + 2])
        box(ax, lo, hi)
        ax.set_title(rf"$\tilde P_{i}$ and the step from $x_{i}$")
    return fig
