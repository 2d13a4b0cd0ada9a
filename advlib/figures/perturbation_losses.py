"""The perturbation-losses chapter's figures (Ozbulak et al.'s Figures 1 to 4),
drawn from :func:`advlib.experiments.perturbation_losses.run`'s results."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..experiments import _shared

COLOR, LOSSES = _shared.COLORS, _shared.LOSS_NAMES


def _band(ax, curve, color, label, ls="-", stat="mean"):
    """A curve over the iterations with its interquartile band."""
    values = np.asarray(curve[stat], dtype=float)
    steps = np.arange(len(values))
    ax.plot(steps, values, color=color, ls=ls, lw=1.5, label=label)
    ax.fill_between(steps, np.asarray(curve["q25"], dtype=float), np.asarray(curve["q75"], dtype=float),
                    color=color, alpha=0.15, lw=0)


def _trajectories(axes, curves):
    """(a) softmax and (b) logit of the original (dashed) and target (solid) class, every loss."""
    for name in LOSSES:
        c = curves[name]
        _band(axes[0], c["prob_label"], COLOR[name], name)
        _band(axes[0], c["prob_orig"], COLOR[name], None, ls="--")
        _band(axes[1], c["logit_label"], COLOR[name], name)
        _band(axes[1], c["logit_orig"], COLOR[name], None, ls="--")
    axes[0].set(title="(a) softmax", xlabel="iteration", ylabel="probability", ylim=(-0.02, 1.02))
    axes[1].set(title="(b) logit", xlabel="iteration", ylabel="logit")
    axes[0].legend(title="solid: target\ndashed: original", fontsize=8, title_fontsize=8)


def _least_boxes(axes, measured):
    """(c) the least L2 and L-inf perturbation that reaches the target, per loss."""
    for ax, norm, title in ((axes[0], "least_l2", "(c) least $L_2$"), (axes[1], "least_linf", r"(c) least $L_\infty$")):
        values = {n: np.asarray(measured[n][norm], dtype=float) for n in LOSSES}
        names = [n for n in LOSSES if np.isfinite(values[n]).any()]
        if names:
            bp = ax.boxplot([values[n][np.isfinite(values[n])] for n in names], patch_artist=True, showfliers=True,
                            flierprops=dict(markersize=2), medianprops=dict(color="k"))
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30)
            for patch, n in zip(bp["boxes"], names):
                patch.set_facecolor(COLOR[n])
                patch.set_alpha(0.6)
        missing = [n for n in LOSSES if n not in names]
        if missing:
            ax.text(0.02, 0.98, "never reached: " + ", ".join(missing), transform=ax.transAxes, va="top", fontsize=7)
        ax.set(title=title)


def ifgs(results, setting: str):
    """Figure 1: CE-sign's softmax of the original and the target class over the iterations."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    curve = results["curves"][setting]["CE-sign"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    _band(ax, curve["prob_orig"], "0.3", "original class", ls="--")
    _band(ax, curve["prob_label"], COLOR["CE-sign"], "target class")
    ax.set(xlabel="iteration", ylabel="softmax probability", ylim=(-0.02, 1.02))
    ax.legend()
    return fig


def setting(results, name: str):
    """Figures 2 and 3: one setting's trajectories of every loss and its least perturbations."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3), gridspec_kw=dict(width_ratios=[1.3, 1.3, 1, 1]))
    _trajectories(axes[:2], results["curves"][name])
    _least_boxes(axes[2:], results["measured"][name])
    fig.tight_layout()
    return fig


def gradients(results, setting: str):
    """Figure 4: the loss gradient's L2 norm over the iterations, every loss."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name in LOSSES:
        _band(ax, results["curves"][setting][name]["grad_norm"], COLOR[name], name, stat="median")
    ax.axhline(math.sqrt(results["settings"]["n_pixels"]), color=COLOR["CE-sign"], ls=":", lw=1.2,
               label=r"$\|\mathrm{sign}\|_2 = \sqrt{n}$")
    ax.set(yscale="log", xlabel="iteration", ylabel=r"$\|\nabla_x \mathrm{loss}\|_2$")
    ax.legend(fontsize=8)
    return fig
