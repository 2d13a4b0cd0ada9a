"""The optimality chapter's figure: each attack's ratio to the exact minimal
perturbation, drawn from :func:`advlib.experiments.optimality.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..experiments import _shared, optimality


def ratios(results):
    """Per norm, one row per attack that ran: every image's ratio to the exact
    minimum, less 1, on a log scale (jittered vertically; the bar is the median),
    with the 1% and 5% marks the table counts."""
    plt.rcParams.update(_shared.PLOT_STYLE)
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True, gridspec_kw={"height_ratios": [5, 2]})
    rng = np.random.default_rng(0)  # the jitter only: the same picture on every build
    for ax, key in zip(axes, optimality.NORMS):
        methods = [m for m in optimality.METHODS[key] if results["attacks"][key][m]["ran"]]
        for row, m in enumerate(methods):
            # A ratio of exactly 1 has no place on a log scale: drawn at 1e-5.
            excess = np.array([v - 1 for v in results["ratios"][key][m] if v is not None]).clip(1e-5)
            ax.scatter(excess, row + rng.uniform(-0.2, 0.2, len(excess)), s=9, alpha=0.6)
            if len(excess):
                ax.plot([np.median(excess)] * 2, [row - 0.35, row + 0.35], color="k", lw=2)
        for edge in (0.01, 0.05):
            ax.axvline(edge, color="0.5", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yticks(range(len(methods)), [optimality.LABELS[m] for m in methods])
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_title(f"{optimality.NORM_LABELS[key]} norm", loc="left")
    axes[-1].set_xlabel("ratio to the exact minimum − 1")
    fig.tight_layout()
    return fig
