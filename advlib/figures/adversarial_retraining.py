"""The detectors chapter's figure, drawn from
:func:`advlib.experiments.adversarial_retraining.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _picture(image):
    """An image [C, H, W] as imshow takes it: grey [H, W] or colour [H, W, 3]."""
    image = np.asarray(image, dtype=float)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def examples(results):
    """One genuine image, its adversarial by each loss, and each perturbation on one shared scale."""
    ex = results["example"]
    names = list(ex["adversarial"])
    genuine = np.asarray(ex["genuine"], dtype=float)
    deltas = [(np.asarray(ex["adversarial"][n], dtype=float) - genuine).mean(0) for n in names]
    scale = max(np.abs(d).max() for d in deltas)
    fig, axes = plt.subplots(2, 1 + len(names), figsize=(2 * (1 + len(names)), 4.2))
    axes[0, 0].imshow(_picture(genuine), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title(f"genuine: {ex['genuine_class']}", fontsize=8)
    axes[1, 0].axis("off")
    for k, (n, d) in enumerate(zip(names, deltas), start=1):
        axes[0, k].imshow(_picture(ex["adversarial"][n]), cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(f"{n}: {ex['adversarial_class'][n]}", fontsize=8)
        axes[1, k].imshow(d, cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[1, k].set_title(f"$L_2$ = {np.linalg.norm(np.asarray(ex['adversarial'][n]) - genuine):.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
