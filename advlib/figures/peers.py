"""The peers chapter's figure, drawn from :func:`advlib.experiments.peers.run`'s results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ..experiments import _shared, peers


def speed(results, row: str = peers.ROWS[0]):
    """Images per second of every implementation that ran, per attack, on the network ``row`` (log scale)."""
    if row not in results["rows"]:
        raise ValueError(f"no network {row!r} in these results: they have {', '.join(results['rows'])}")
    plt.rcParams.update(_shared.PLOT_STYLE)
    attacks = results["rows"][row]["attacks"]
    found = {(peers.ATTACK_NAMES[a], lib): r["images_per_s"]
             for a, libs in attacks.items() for lib, r in libs.items() if r["ran"]}
    if not found:
        raise ValueError(f"no implementation ran on {row}: nothing to draw")
    n = max(r["n_images"] for libs in attacks.values() for r in libs.values() if r["ran"])
    fig, ax = plt.subplots(figsize=(7, 4))
    pd.Series(found).unstack().plot.barh(logx=True, ax=ax)
    ax.set_xlabel(f"images per second ({row}, {n} images)")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig
