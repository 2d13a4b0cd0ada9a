"""The JSMA and defensive-distillation chapter's figures, drawn from
:func:`advlib.experiments.blog_jsma_distillation.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..experiments import _shared

PAPER_HIGH_T_SUCCESS = 0.005
"""Papernot et al.'s JSMA success at a high temperature on MNIST ("under 0.5%"), drawn as a line."""


def _rows(results) -> pd.DataFrame:
    return pd.DataFrame(_shared.nan_for_none(results["rows"]))


def saliency(results):
    """One test image's saliency map towards its least likely class, at T = 1 and the largest T."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    classes, shape, sal = results["classes"], results["image_shape"], results["saliency"]
    x0 = np.asarray(sal["x"], dtype=float)[0]
    fig, axes = plt.subplots(2, 4, figsize=(8.4, 5.2))
    for row, at in zip(axes, sal["at"]):
        alpha = np.asarray(at["alpha"], dtype=float)[0]
        s_map = np.asarray(at["saliency"], dtype=float)[0]
        scale = np.abs(alpha).max() or 1.0
        row[0].imshow(x0, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"T = {at['temperature']:g}\n{classes[sal['label']]}", fontsize=8)
        row[1].imshow(alpha, cmap="RdBu_r", vmin=-scale, vmax=scale)
        row[1].set_title(f"dF_t/dx, t = {classes[sal['target']]}\n{at['alpha_zero_fraction']:.0%} exactly 0", fontsize=8)
        row[2].imshow(s_map, cmap="magma", vmin=0, vmax=s_map.max() or 1.0)
        for f in at["first_pair"]:
            row[2].scatter([f % shape[-1]], [f // shape[-1]], s=60, facecolors="none", edgecolors="cyan")
        row[2].set_title("saliency map, first pair", fontsize=8)
        adv = np.dstack([x0] * 3)
        for f in at["changed"]:
            adv[f // shape[-1], f % shape[-1]] = (1.0, 0.1, 0.1)
        row[3].imshow(adv)
        verdict = "reached" if at["success"] else "failed"
        row[3].set_title(f"{len(at['changed'])} pixels changed\n-> {classes[at['label_adv']]} ({verdict})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def grid(results):
    """The first attacked image of each class (rows) towards every class (columns), T = 1."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    classes = results["classes"]
    cells = {(c["row"], c["target"]): c for c in results["grid"]["cells"]}
    k = len(classes)
    fig, axes = plt.subplots(k, k, figsize=(1.0 * k, 1.1 * k))
    grid_x = np.asarray(results["grid"]["x"], dtype=float)
    for r in range(k):
        for c in range(k):
            ax = axes[r, c]
            img = grid_x[r, 0].copy()
            title, color = classes[r], "black"
            if r != c:  # the adversarial: the image with the attack's changed features
                cell = cells[(r, c)]
                img.reshape(-1)[cell["features"]] = cell["values"]
                title, color = classes[cell["label_adv"]], ("black" if cell["success"] else "red")
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title[:9], fontsize=6, color=color, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    return fig


def temperature(results, paper_undistilled_success: float):
    """Accuracy, JSMA success, softmax gradient and L0 against T; the paper's success levels dashed."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    rows = _rows(results)
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.8))
    panels = [("accuracy", "(a) test accuracy"), ("jsma_success", "(b) JSMA success"),
              ("grad_log10_mean", "(c) log10 mean |dF/dx|"), ("jsma_l0_mean", "(d) mean L0 (successful)")]
    for ax, (key, title) in zip(axes, panels):
        ax.plot(rows["temperature"], rows[key], "o-", color="#4C72B0")
        ax.set(xscale="log", xlabel="T", title=title)
    axes[2].plot(rows["temperature"], rows["grad_log10_median"], "o:", color="#4C72B0")
    axes[2].legend(["all images", "median image"], fontsize=7)
    axes[0].set_ylim(max(0.0, rows["accuracy"].min() - 0.1), 1.0)
    axes[1].axhline(paper_undistilled_success, ls="--", color="0.5", lw=1)
    axes[1].axhline(PAPER_HIGH_T_SUCCESS, ls="--", color="0.5", lw=1)
    axes[1].set_ylim(-0.03, 1.03)
    fig.tight_layout()
    return fig


def logits(results):
    """Success and rho_adv against T of the attacks on the logits, beside JSMA on the probabilities."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    rows = _rows(results)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for key, label, color in [("deepfool", "DeepFool (logits)", "#55A868"), ("cw", "C&W L2 (logits)", "#C44E52")]:
        axes[0].plot(rows["temperature"], rows[f"{key}_success"], "o-", color=color, label=label)
        axes[1].plot(rows["temperature"], rows[f"{key}_rho"], "o-", color=color, label=label)
    if results["settings"]["jsma_logits"]:
        axes[0].plot(rows["temperature"], rows["jsma_logits_success"], "s-", color="#8172B2", label="JSMA (logits)")
    axes[0].plot(rows["temperature"], rows["jsma_success"], "s--", color="#4C72B0", label="JSMA (probabilities)")
    axes[0].set(xscale="log", xlabel="T", ylabel="success rate", ylim=(-0.03, 1.03), title="(a) success")
    axes[1].set(xscale="log", xlabel="T", ylabel="rho_adv", ylim=(0, None), title="(b) rho_adv")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
