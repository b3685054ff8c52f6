"""The claims ledger as a forest plot: one row per claim, its difference and 95 % interval, coloured by verdict."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["claims_forest", "VERDICT_COLOURS"]

VERDICT_COLOURS = {"reproduced": "#2a9d4b", "refuted": "#c0392b", "inconclusive": "#7f8c8d"}


def claims_forest(ledger: pd.DataFrame, *, bars: dict[str, float] | None = None,
                  title: str = "Claims: difference and 95% interval over seeds and images") -> Figure:
    """One row per claim (rows of `mlic.studies.claims.build_ledger`): the point is `delta`, the line
    `ci_low`–`ci_high`, in points, coloured by `verdict`; the dashed line is 0. A claim against a bar (e.g. an ARI
    of at least 90) is drawn relative to its bar (`bars`: claim → bar; its tick label says so). Rows without an
    interval (not run) are listed with a grey "not measured"."""
    bars = bars or {}
    frame = ledger.reset_index(drop=True)
    n = len(frame)
    fig, ax = plt.subplots(figsize=(10.5, 0.42 * n + 1.6))
    labels = []
    for i, row in frame.iterrows():
        y = n - 1 - i
        shift = bars.get(str(row["claim"]), 0.0)
        label = f"{row['claim']}  [{row['split']} {row['metric']}]"
        labels.append(label + (f" − {shift:g}" if shift else ""))
        colour = VERDICT_COLOURS.get(str(row["verdict"]), "#7f8c8d")
        if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
            ax.plot([row["ci_low"] - shift, row["ci_high"] - shift], [y, y], color=colour, linewidth=2.2,
                    solid_capstyle="butt")
            ax.plot([row["delta"] - shift], [y], "o", color=colour, markersize=6)
            ax.annotate(f"{row['delta'] - shift:+.2f}  ({row['verdict']}, {int(row['n_seeds'])} seeds)", (1.0, y),
                        xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=8, color=colour)
        else:
            ax.annotate("not measured", (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8, color=VERDICT_COLOURS["inconclusive"])
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(np.arange(n)[::-1], labels, fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("difference (points)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
