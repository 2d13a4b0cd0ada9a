"""The mutation-testing chapter's figures, drawn from
:func:`advlib.experiments.blog_mutation_testing.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..experiments.blog_mutation_testing import ATTACKS, COLORS


def rates(results):
    """The label change rates of genuine and adversarial images, per operator (rows) and attack (columns)."""
    bins = np.linspace(0, 1, 21)
    detectors = results["detectors"]
    fig, axes = plt.subplots(len(detectors), len(ATTACKS), figsize=(9, 1.6 * len(detectors)), sharex=True,
                             sharey=True, squeeze=False)
    for i, det in enumerate(detectors):
        genuine = np.asarray(results["lcr"][det]["genuine"])
        for j, attack in enumerate(ATTACKS):
            ax, adv = axes[i, j], np.asarray(results["lcr"][det][attack])
            for values, name in ((genuine, "genuine"), (adv, attack)):
                ax.hist(values, bins=bins, weights=np.full(len(values), 1 / max(len(values), 1)),
                        histtype="stepfilled", alpha=0.55, color=COLORS[name], label=name)
            ax.set_title(f"{det}: {attack}", fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("label change rate", fontsize=8)
    fig.tight_layout()
    return fig


def kappa(results):
    """C&W's confidence kappa against the SPRT's detection and the AUROC, per operator."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.2))
    for det in results["detectors"]:
        points = list(results["kappa"][det].values())
        k = [p["kappa"] for p in points]
        left.plot(k, [p["detected"] for p in points], "o-", color=COLORS[det], label=det)
        right.plot(k, [np.nan if p["auroc"] is None else p["auroc"] for p in points], "o-", color=COLORS[det])
    left.set(xlabel="kappa", ylabel="flagged by the SPRT", ylim=(-0.03, 1.03))
    right.set(xlabel="kappa", ylabel="AUROC", ylim=(0.3, 1.02))
    right.axhline(0.5, color="0.6", lw=0.8, ls="--")
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig
