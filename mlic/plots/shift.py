"""Co-occurrence-shift figures: drop per method and per label against CAM energy on companions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["shift_drops", "label_drop_heatmap", "drop_vs_companion_energy", "label_drop_vs_companion_energy",
           "shift_decomposition"]


def shift_drops(drops: pd.DataFrame, *, metric: str = "mAP", splits: tuple[str, str] = ("test", "test_shift")
                ) -> Figure:
    """Per method: `metric` on both splits side by side, the drop written above each pair (smallest drop left)."""
    long = drops.melt(id_vars="method", value_vars=[f"{s}/{metric}" for s in splits], var_name="split",
                      value_name=metric)
    long["split"] = long["split"].str.removesuffix(f"/{metric}")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(drops) + 2), 4.2))
    sns.barplot(long, x="method", y=metric, hue="split", order=list(drops["method"]), ax=ax)
    top = drops[[f"{s}/{metric}" for s in splits]].max(axis=1).to_numpy()
    for i, (drop, height) in enumerate(zip(drops["drop"], top)):
        ax.text(i, height + 1, f"−{drop:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, min(100.0, float(np.nanmax(top)) + 10))
    ax.set_xlabel("")
    ax.set_title(f"{metric} on {splits[0]} vs {splits[1]}: the drop when co-occurrence cues are gone")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def label_drop_heatmap(label_drop: pd.DataFrame, *, title: str = "AP drop per label (test − test_shift, points)"
                       ) -> Figure:
    """Methods (rows) × labels (columns) of AP drop, diverging around zero."""
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * label_drop.shape[1] + 3), 0.45 * label_drop.shape[0] + 2))
    limit = float(np.nanmax(np.abs(label_drop.to_numpy()))) or 1.0
    sns.heatmap(label_drop, cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, ax=ax,
                cbar_kws={"label": "AP drop"})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def drop_vs_companion_energy(joined: pd.DataFrame) -> Figure:
    """Per method: mAP drop against the mean share of CAM energy on co-occurring objects (one point per method).

    Methods with nearly the same point are common (a suite's studies share runs and recipes), so adjustText moves
    the names apart until none overlaps another, in a fixed number of iterations (the same data, the same figure).
    """
    from adjustText import adjust_text

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    x, y = 100 * joined["companion_energy"].to_numpy(), joined["drop"].to_numpy()
    ax.scatter(x, y, s=40, zorder=3)
    texts = [ax.text(px, py, str(name), fontsize=8, zorder=4) for px, py, name in zip(x, y, joined["method"])]
    rho = joined.attrs.get("spearman", float("nan"))
    ax.set_xlabel("CAM energy on the image's other objects (%, test)")
    ax.set_ylabel("mAP drop (test − test_shift)")
    ax.set_title(f"Looking at the company vs losing it under shift (Spearman ρ = {rho:.2f})", fontsize=10)
    ax.margins(0.12)
    fig.tight_layout()
    if len(texts) > 1:
        fig.canvas.draw()  # adjustText reads the rendered text sizes
        adjust_text(texts, ax=ax, x=x, y=y, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5},
                    iter_lim=300)
    return fig


def label_drop_vs_companion_energy(long: pd.DataFrame) -> Figure:
    """Per (method, label): AP drop against the label's CAM energy on companions, coloured by method."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    sns.scatterplot(long.assign(companion_energy=100 * long["companion_energy"]), x="companion_energy", y="drop",
                    hue="method", ax=ax, s=30)
    rho = long["drop"].rank().corr(long["companion_energy"].rank()) if len(long) > 2 else float("nan")
    ax.set_xlabel("CAM energy on the image's other objects (%, test)")
    ax.set_ylabel("AP drop (points)")
    ax.set_title(f"Per label and method (Spearman ρ = {rho:.2f})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def shift_decomposition(decomposition: pd.DataFrame, *, title: str = "What each method's drop is made of") -> Figure:
    """Per method (rows of `mlic.studies.shift.decompose`), the mean drop over seeds from test to test_bg (a foreign
    background), to test_cooc (no co-occurring companions) and to test_shift (both), side by side, with the seeds'
    standard deviation as error bars; methods ordered by their drop to test_cooc."""
    parts = [("drop_bg", "background (test_bg)"), ("drop_cooc", "co-occurrence (test_cooc)"),
             ("drop_shift", "both (test_shift)")]
    parts = [(c, label) for c, label in parts if f"{c}_mean" in decomposition]
    order = "drop_cooc_mean" if "drop_cooc_mean" in decomposition else f"{parts[0][0]}_mean"
    frame = decomposition.sort_values(order, kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(frame) + 2.5), 4.4))
    width = 0.8 / len(parts)
    x = np.arange(len(frame))
    for i, (column, label) in enumerate(parts):
        ax.bar(x + (i - (len(parts) - 1) / 2) * width, frame[f"{column}_mean"], width, yerr=frame[f"{column}_std"],
               label=label, capsize=2)
    ax.set_xticks(x, frame["method"], rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("mAP drop from test (points)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
