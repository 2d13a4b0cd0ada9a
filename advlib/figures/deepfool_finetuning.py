"""The fine-tuning chapter's figures (DeepFool Sec. 4.3, Figures 6 to 9), drawn
from :func:`advlib.experiments.deepfool_finetuning.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..experiments.deepfool_finetuning import RUN_NAMES

COLORS = {"deepfool": "#4C72B0", "fgsm": "#C44E52", "clean": "#7F7F7F"}
"""One colour per fine-tuning set: DeepFool's, fast gradient sign's, clean images."""


def _data_title(results, row: str) -> str:
    return f"{row} on {results['rows'][row]['dataset']}"


def figure6(results):
    """rho_adv after each extra epoch of fine-tuning, one panel per network."""
    rows = results["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.7), squeeze=False)
    for ax, (label, row) in zip(axes[0], rows.items()):
        for attack, curve in row["runs"].items():
            ax.plot(curve["epochs"], curve["rho_deepfool"], marker="o", ms=3, color=COLORS[attack], label=RUN_NAMES[attack])
        ax.set_title(f"{label}\non {row['dataset']}" if row["stands_in_for"] else label, fontsize=8)
        ax.set_xlabel("extra epochs")
        ax.set_xticks(row["runs"]["deepfool"]["epochs"])
    axes[0][0].set_ylabel(r"$\hat\rho_{adv}$ (DeepFool)")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def figure7(results):
    """rho_adv after fine-tuning on DeepFool's perturbations magnified by each alpha."""
    f7 = results["figure7"]
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    for (alpha, curve), color in zip(f7["runs"].items(), ("#4C72B0", "#DD8452", "#C44E52", "#8172B3")):
        ax.plot(curve["epochs"], curve["rho_deepfool"], marker="o", ms=3, color=color, label=fr"$\alpha$ = {alpha}")
    ax.set_xlabel("extra epochs")
    ax.set_ylabel(r"$\hat\rho_{adv}$ (DeepFool)")
    ax.set_title(_data_title(results, f7["row"]), fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def figure8(results):
    """The images magnified perturbations move into another class: originals above, perturbed below."""
    examples = results["figure8"]["examples"]
    cols = max(len(examples), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols, 3.4), squeeze=False)
    for col, ex in enumerate(examples):
        for row_index, key in enumerate(("image", "perturbed")):
            img = np.asarray(ex[key])
            axes[row_index][col].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[0][col].set_title(ex["true"], fontsize=8)
        axes[1][col].set_xlabel(f"{ex['referee_reads']}\n({ex['network_reads']})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel(r"$\alpha$ = 3", fontsize=8)
    fig.tight_layout()
    return fig


def figure9(results):
    """rho_adv relative to the original network's, measured by DeepFool and by fast
    gradient sign; a cross where fast gradient sign fools too few images to measure."""
    f9 = results["figure9"]
    epochs_axis = f9["run"]["epochs"]
    by_fgsm = np.array([np.nan if v is None else v for v in f9["relative_fgsm"]])
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    ax.plot(epochs_axis, f9["relative_deepfool"], marker="o", ms=3, color="#4C72B0", label="DeepFool")
    ax.plot(epochs_axis, by_fgsm, marker="o", ms=3, color="#C44E52", label="fast gradient sign")
    top = np.nanmax(np.r_[by_fgsm, f9["relative_deepfool"]]) * 1.1
    for e, v in zip(epochs_axis, by_fgsm):
        if np.isnan(v):
            ax.plot(e, top, marker="x", color="#C44E52")
    ax.axhline(1.0, color="0.7", lw=0.8)
    ax.set_xlabel("extra epochs")
    ax.set_ylabel(r"$\hat\rho_{adv}$ / original")
    ax.set_title(_data_title(results, f9["row"]), fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
