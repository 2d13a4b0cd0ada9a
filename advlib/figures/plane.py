"""Drawing on the unit square: decision regions, lines, attack paths."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import ListedColormap

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
"""One colour per class of the 2-D figures."""


def arr(value) -> np.ndarray:
    return np.asarray(value, dtype=float)


def grid_points(lo=(0.0, 0.0), hi=(1.0, 1.0), n: int = 300):
    """``gx, gy`` (``n x n``) over the box ``[lo, hi]``, and the points ``[n * n, 2]``."""
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1)


def logits_on(model, pts) -> np.ndarray:
    """The model's logits at ``pts``; a single logit ``f`` is read as ``(0, f)``, as advlib does."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model(torch.tensor(pts, dtype=dtype)).numpy()
    if out.shape[1] == 1:
        out = np.concatenate([np.zeros_like(out), out], axis=1)
    return out


def draw_regions(ax, model, lo=(0, 0), hi=(1, 1), *, n: int = 300, alpha: float = 0.25, lines: bool = True):
    """The model's decision regions, and the boundaries between them."""
    gx, gy, pts = grid_points(lo, hi, n)
    labels = logits_on(model, pts).argmax(axis=1).reshape(gx.shape)
    ax.contourf(gx, gy, labels, levels=np.arange(-0.5, len(COLORS)), cmap=ListedColormap(COLORS), alpha=alpha)
    levels = np.arange(labels.min() + 0.5, labels.max())
    if lines and len(levels):
        ax.contour(gx, gy, labels, levels=levels, colors="k", linewidths=1.2)


def draw_line(ax, a, c, lo, hi, **style):
    """The line ``a . x + c = 0`` across the box ``[lo, hi]``."""
    a = np.asarray(a, dtype=float)
    if abs(a[1]) > abs(a[0]):
        xs = np.array([lo[0], hi[0]])
        ys = -(a[0] * xs + c) / a[1]
    else:
        ys = np.array([lo[1], hi[1]])
        xs = -(a[1] * ys + c) / a[0]
    ax.plot(xs, ys, **style)


def draw_path(ax, path, color: str = "k"):
    """An attack's iterates ``x_0, x_1, ...`` as arrows, labelled."""
    path = np.asarray(path)
    for p, q in zip(path[:-1], path[1:]):
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, shrinkA=0, shrinkB=0))
    ax.scatter(path[:, 0], path[:, 1], s=18, color=color, zorder=5)
    for i, p in enumerate(path):
        ax.annotate(f"$x_{i}$", p, textcoords="offset points", xytext=(5, 4), fontsize=9)


def box(ax, lo=(0, 0), hi=(1, 1)):
    """The axes set to the box ``[lo, hi]``, square, without ticks."""
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def zoom_box(path, pad: float = 0.6, minimum: float = 0.12):
    """A square around the path, with some room on each side."""
    path = np.asarray(path)
    centre = (path.min(axis=0) + path.max(axis=0)) / 2
    span = (path.max(axis=0) - path.min(axis=0)).max()
    half = max(span * (0.5 + pad), minimum / 2)
    return tuple(centre - half), tuple(centre + half)
