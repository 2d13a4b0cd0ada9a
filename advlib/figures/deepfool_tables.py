"""The DeepFool tables chapter's figures (the paper's Figure 1 and the
distribution of the perturbations), drawn from
:func:`advlib.experiments.deepfool_tables.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..experiments import table1


def _image(ax, img):
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.transpose(1, 2, 0).clip(0, 1))


def _perturbation(ax, r):
    """The perturbation averaged over the channels, on a symmetric scale that the label states."""
    r = r.mean(axis=0)
    scale = float(np.abs(r).max()) or 1.0
    ax.imshow(r / scale, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xlabel(f"±{scale:.2f}", fontsize=8)


def examples(results):
    """Figure 1: per network, an image, its DeepFool and fast gradient sign adversarials, and both perturbations."""
    shown = results["examples"]
    fig, axes = plt.subplots(len(shown), 5, figsize=(9.5, 2.1 * len(shown)), squeeze=False)
    for row_axes, (label, ex) in zip(axes, shown.items()):
        row = results["rows"][label]
        classes = row["classes"]
        x, r_df, r_fg = (np.asarray(a, dtype=float) for a in (ex["x"], ex["deepfool"]["r"], ex["fgsm"]["r"]))
        _image(row_axes[0], x)
        row_axes[0].set_title(classes[ex["label"]], fontsize=8)
        data_note = f"\non {table1.DATA_NAMES.get(row['dataset'], row['dataset'])}" if row["stands_in_for"] else ""
        row_axes[0].set_ylabel(label + data_note, fontsize=7)
        for ax, r, name, key in ((row_axes[1], r_df, "DeepFool", "deepfool"), (row_axes[2], r_fg, "fast gradient sign", "fgsm")):
            _image(ax, x + r)
            ax.set_title(f"{name}: {classes[ex[key]['label']]}\n‖r‖₂ = {ex[key]['norm']:.2f}", fontsize=8)
        _perturbation(row_axes[3], r_df)
        row_axes[3].set_title("DeepFool r", fontsize=8)
        _perturbation(row_axes[4], r_fg)
        row_axes[4].set_title("fast gradient sign r", fontsize=8)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def distribution(results):
    """The per-image ``||r||_2 / ||x||_2`` of every method and network, as violins (log scale)."""
    import seaborn as sns

    long = pd.concat([
        pd.DataFrame({"classifier": label, "method": method, "relative size": values})
        for label, sizes in results["sizes"].items() for method, values in sizes.items() if values
    ])
    fig, ax = plt.subplots(figsize=(9, 1.1 + 1.1 * len(results["sizes"])))
    sns.violinplot(data=long, x="relative size", y="classifier", hue="method", log_scale=True, cut=0,
                   inner="quartile", density_norm="width", linewidth=0.7, ax=ax)
    ax.set_xlabel(r"$\|r\|_2 / \|x\|_2$ per image")
    ax.set_ylabel("")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
