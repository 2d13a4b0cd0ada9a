"""The 2-D perturbation-theory chapter's figures (the paper's supplementary
Figure 6), drawn from :func:`advlib.experiments.perturbation_theory.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm

from .. import theory
from ..experiments import _shared
from ..experiments.perturbation_theory import INNER, LOSS_NAMES, OUTER

B_COLOR, R_COLOR, PATH_COLOR = "#333333", "#C44E52", "white"
SUB_COLORS = {theory.S1: "#9DB4D6", theory.S2: "#F2E3A0", theory.S3: "#E8A6A1"}


def _maps(results):
    axis = np.asarray(results["maps"]["axis"])
    gx, gy = np.meshgrid(axis, axis)
    return gx, gy, np.array(results["maps"]["prob_target"], dtype=float)


def _subspaces(ax, results, confident: float):
    """The decision boundary (solid) and the S1/S2 and S2/S3 borders (dashed, dotted)."""
    gx, gy, prob = _maps(results)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.4)
    ax.contour(gx, gy, prob, levels=[1 - confident], colors="k", linewidths=0.9, linestyles="--")
    ax.contour(gx, gy, prob, levels=[confident], colors="k", linewidths=0.9, linestyles=":")


def _square(ax):
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xticks=[], yticks=[])


def circles(results, train_set, *, confident: float):
    """Figure 6(a): the training points, the boundary and the three subspaces towards R."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    gx, gy, _ = _maps(results)
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    where = np.array(results["maps"]["subspace"], dtype=float)
    ax.contourf(gx, gy, where, levels=[0.5, 1.5, 2.5, 3.5], colors=list(SUB_COLORS.values()))
    _subspaces(ax, results, confident)
    pts, lab = train_set.x.numpy(), train_set.y.numpy()
    ax.scatter(*pts[lab == OUTER].T, s=5, color=B_COLOR, label="B (outer)")
    ax.scatter(*pts[lab == INNER].T, s=5, color=R_COLOR, label="R (inner, target)")
    for k, name in theory.NAMES.items():
        ax.scatter([], [], marker="s", s=40, color=SUB_COLORS[k], label=f"${name[0]}_{name[1]}$")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.9, ncol=2)
    _square(ax)
    return fig


def heatmaps(results, *, confident: float):
    """Figure 6(b)-(d): each loss's step magnitude over the plane, with the attack paths."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    gx, gy, _ = _maps(results)
    magnitude = {name: np.array(m, dtype=float) for name, m in results["maps"]["magnitude"].items()}
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 4.5), constrained_layout=True)
    positive = np.concatenate([m[m > 0] for name, m in magnitude.items() if name != "CE-sign"])
    norm = LogNorm(vmin=max(positive.min(), 1e-12), vmax=positive.max())
    titles = {"CE": r"CE: $\|\nabla_x \mathrm{CE}\|_2$", "CE-sign": r"CE-sign: $\|\mathrm{sign}(\nabla_x \mathrm{CE})\|_2$",
              "logit": r"logit: $\|\nabla_x g_R\|_2$"}
    for ax, name in zip(axes, LOSS_NAMES):
        m = magnitude[name]
        if name == "CE-sign":  # three values only: 0, 1 and sqrt(2)
            cmap = ListedColormap(["#222222", "#777777", "#F2C14E"])
            im_sign = ax.pcolormesh(gx, gy, np.searchsorted([0.0, 1.0, np.sqrt(2)], m - 1e-3), cmap=cmap,
                                    vmin=-0.5, vmax=2.5, shading="auto")
        else:
            im = ax.pcolormesh(gx, gy, np.where(m > 0, m, np.nan), norm=norm, cmap="viridis", shading="auto")
        _subspaces(ax, results, confident)
        path = np.asarray(results["paths"]["iterates"][name])
        for i in range(path.shape[1]):
            ax.plot(path[:, i, 0], path[:, i, 1], color=PATH_COLOR, lw=1.0, alpha=0.9)
            ax.scatter(*path[0, i], s=16, facecolors="none", edgecolors=PATH_COLOR, zorder=5)
            ax.scatter(*path[-1, i], s=20, marker="x", color=PATH_COLOR, zorder=5)
        _square(ax)
        ax.set_title(titles[name])
    for ax in (axes[0], axes[2]):
        fig.colorbar(im, ax=ax, shrink=0.9, label="L2 norm (log scale, shared)", location="bottom")
    bar = fig.colorbar(im_sign, ax=axes[1], shrink=0.9, ticks=[0, 1, 2], label="L2 norm of the sign", location="bottom")
    bar.ax.set_xticklabels(["0", "1", r"$\sqrt{2}$"])
    return fig


def iterations(results, *, confident: float):
    """The paths over the iterations: the target's softmax and the gradient norm (median, range)."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    fig, (ax_p, ax_g) = plt.subplots(1, 2, figsize=(9.6, 3.6), constrained_layout=True)
    for name, trace in results["paths"]["trace"].items():
        for ax, key in ((ax_p, "prob_target"), (ax_g, "grad_norm")):
            v = np.asarray(trace[key], dtype=float)
            steps = np.arange(len(v))
            ax.plot(steps, np.median(v, axis=1), color=_shared.COLORS[name], label=name)
            ax.fill_between(steps, v.min(axis=1), v.max(axis=1), color=_shared.COLORS[name], alpha=0.15, lw=0)
    ax_p.axhline(confident, color="k", ls=":", lw=0.9)
    ax_p.set(xlabel="iteration", ylabel=r"$\sigma_R$", ylim=(-0.02, 1.02))
    ax_g.set(xlabel="iteration", ylabel="gradient L2 norm", yscale="log")
    ax_p.legend()
    return fig


def bound(results, *, confident: float):
    """Theorem IV.2's scaled error against its bound ``2 (1 - sigma_d)`` in S1 and S3."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    scatter = {k: np.asarray(v, dtype=float) for k, v in results["approximation"]["scatter"].items()}
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    for k, color in ((theory.S1, "#4C72B0"), (theory.S3, "#C44E52")):
        sel = scatter["subspace"] == k
        ax.scatter(scatter["bound"][sel], scatter["scaled"][sel], s=2, alpha=0.3, color=color,
                   label=f"${theory.NAMES[k][0]}_{theory.NAMES[k][1]}$", rasterized=True)
    lims = np.array([scatter["bound"].min(), 2 * (1 - confident)])
    ax.plot(lims, lims, "k--", lw=0.9)
    ax.set(xscale="log", yscale="log", xlabel=r"bound $2(1 - \sigma_d)$", ylabel="scaled error")
    ax.legend(markerscale=5)
    return fig
