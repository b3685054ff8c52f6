"""Mixture-of-experts figures: heads over seeds, gate heatmaps per label and per image, routing against label
statistics, expert utilisation, and an ipywidgets gate explorer (notebook 05_moe; the numbers come from
`mlic.studies.moe`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["moe_heads", "gate_heatmaps", "gates_per_image", "routing_vs_labels", "expert_utilisation",
           "gate_explorer"]


def moe_heads(table: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
              title: str = "Heads, mean ± std over seeds") -> Figure:
    """Mean ± std over seeds of each head's `metric`, one panel per split, each seed as a dot (rows of
    `mlic.studies.moe.train_seeds`: columns `variant` (the head), `seed`, `<split>/<metric>`)."""
    fig, axes = plt.subplots(1, len(splits), figsize=(4.4 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        column = f"{split}/{metric}"
        sns.barplot(data=table, x="variant", y=column, errorbar="sd", ax=ax, color=sns.color_palette("deep")[0],
                    alpha=0.75, capsize=0.15)
        sns.stripplot(data=table, x="variant", y=column, ax=ax, color="black", size=3.5, jitter=0.15)
        low, high = float(table[column].min()), float(table[column].max())
        pad = max(1.0, 0.25 * (high - low))
        ax.set_ylim(low - 3 * pad, high + pad)
        for i, value in enumerate(table.groupby("variant", sort=False)[column].mean()):
            ax.text(i, low - 2.7 * pad, f"{value:.1f}", ha="center", va="bottom", fontsize=8, color="white",
                    fontweight="bold")
        ax.set(title=split, xlabel="", ylabel=f"{metric} (%)")
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def gate_heatmaps(mean_gates: dict[str, np.ndarray], class_names: Sequence[str], slots: Sequence[str], *,
                  title: str = "Mean gate weight per label") -> Figure:
    """One label × slot heatmap per head (`mlic.studies.moe.mean_gates`), weights in [0, 1], annotated when small
    enough; the cells are sized so that the values are written at 8 pt, as large as the tick labels."""
    heads = list(mean_gates)
    cell_w, cell_h = 0.75, 0.3  # inches: wide enough for "0.00" at 8 pt
    width = len(heads) * (1.4 + cell_w * len(slots)) + 1.0
    fig, axes = plt.subplots(1, len(heads), figsize=(width, 1.6 + cell_h * len(class_names)), squeeze=False,
                             layout="constrained")
    annotate = len(class_names) * len(slots) <= 400
    for ax, head in zip(axes[0], heads):
        sns.heatmap(np.asarray(mean_gates[head], dtype=float), ax=ax, vmin=0, vmax=1, cmap="mako_r",
                    annot=annotate, fmt=".2f", annot_kws={"fontsize": 8}, xticklabels=list(slots),
                    yticklabels=list(class_names), cbar=ax is axes[0, -1], cbar_kws={"shrink": 0.6})
        ax.set_title(head)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.tick_params(axis="y", rotation=0, labelsize=8)
    fig.suptitle(title)
    return fig


def _context_colours(n: int) -> list[Any]:
    return sns.color_palette("tab10" if n <= 10 else "tab20", max(n, 1))


def gates_per_image(gates: np.ndarray, contexts: np.ndarray, slots: Sequence[str], *,
                    context_names: Sequence[str] | None = None, label_name: str = "", head: str = "",
                    max_images: int = 200, seed: int = 0, subset: str = "") -> Figure:
    """One label's gate weights image by image, grouped and coloured by scene context, beside their mean per context.

    Args:
        gates: `[N, E]` the label's gate weights on N images (e.g. those holding it).
        contexts: `[N]` context index of each image.
        slots: the E slot names (`mlic.studies.moe.slot_names`).
        context_names: names of the context indices.
        label_name, head: for the title.
        max_images: a random sample of at most this many images is drawn (left panel only).
        seed: the sample's seed.
        subset: which images these are, for the title (e.g. "context street" when the caller kept one context).
    """
    gates, contexts = np.asarray(gates, dtype=float), np.asarray(contexts)
    count = int(contexts.max(initial=0)) + 1
    names = list(context_names) if context_names is not None else [str(c) for c in range(count)]
    colours = _context_colours(len(names))
    fig, (ax_img, ax_ctx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    if len(gates) == 0:
        for ax in (ax_img, ax_ctx):
            ax.text(0.5, 0.5, "no image", ha="center", va="center")
            ax.axis("off")
        return fig
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(gates), size=min(max_images, len(gates)), replace=False))
    order = picks[np.argsort(contexts[picks], kind="stable")]
    shown = gates[order].T  # [E, n]: images along x
    ax_img.imshow(shown, aspect="auto", cmap="mako_r", vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, len(order) - 0.5, len(slots) - 0.5, -0.5))
    strip = np.asarray(contexts[order], dtype=float)[None, :]
    ax_img.imshow(strip, aspect="auto", cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5,
                  interpolation="nearest", extent=(-0.5, len(order) - 0.5, len(slots) + 0.1, len(slots) - 0.4))
    ax_img.set_ylim(len(slots) + 0.1, -0.5)
    ax_img.set_yticks(range(len(slots)), list(slots), fontsize=7)
    ax_img.set_xticks([])
    ax_img.set_xlabel(f"{len(order)} images, sorted by context (colour strip)", fontsize=9)
    ax_img.grid(False)
    present = sorted({int(c) for c in contexts})
    ax_img.legend(handles=[Patch(color=colours[c], label=names[c]) for c in present], fontsize=7, ncol=len(present),
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    means = np.stack([gates[contexts == c].mean(axis=0) for c in present])
    sns.heatmap(means, ax=ax_ctx, vmin=0, vmax=1, cmap="mako_r", annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                xticklabels=list(slots), yticklabels=[f"{names[c]} ({int((contexts == c).sum())})" for c in present])
    for tick, c in zip(ax_ctx.get_yticklabels(), present):
        tick.set_color(colours[c])
    ax_ctx.tick_params(axis="x", rotation=45, labelsize=7)
    ax_ctx.tick_params(axis="y", rotation=0, labelsize=8)
    ax_ctx.set_title("mean per context (images)", fontsize=9)
    which = f" ({subset})" if subset else ""
    fig.suptitle((f"{head}: " if head else "") + f"gates of '{label_name}' per image{which}")
    fig.tight_layout()
    return fig


def routing_vs_labels(frame: pd.DataFrame, *, y: str = "shared_share",
                      xs: Sequence[str] = ("frequency", "heterogeneity"), annotate: bool = True) -> Figure:
    """Per label, `y` (default: the share of routing to shared experts) against label statistics, one panel per
    column of `xs`, one colour per head, Spearman ρ per head in the legend (rows of
    `mlic.studies.moe.label_routing`); a head whose `y` is the same for every label (static gates' context
    dependence) is marked constant.

    A label's points (one per head) are joined by a thin grey line and named once, beside its last head's point;
    adjustText moves the names apart so that none overlaps another (with up to 40 labels; more are left unnamed), in
    a fixed number of iterations rather than its default time limit, so the same data give the same figure.
    """
    from adjustText import adjust_text

    heads = list(dict.fromkeys(frame["head"]))
    colours = sns.color_palette("deep", len(heads))
    fig, axes = plt.subplots(1, len(xs), figsize=(5.6 * len(xs), 4.6), squeeze=False, layout="constrained")
    for ax, x in zip(axes[0], xs):
        rows_of = {head: frame[frame["head"] == head].dropna(subset=[x, y]) for head in heads}
        varying = [head for head in heads if rows_of[head][y].nunique() > 1]
        for colour, head in zip(colours, heads):
            rows = rows_of[head]
            rho = rows[x].rank().corr(rows[y].rank()) if len(rows) > 2 and head in varying else float("nan")
            label = f"{head} (ρ = {rho:.2f})" if head in varying else f"{head} (constant)"
            ax.scatter(rows[x], rows[y], color=colour, s=26, alpha=0.85, label=label, zorder=3)
        points = pd.concat([rows_of[h] for h in varying]) if varying else frame.iloc[:0]
        names = list(dict.fromkeys(points["label"])) if annotate else []
        if len(names) > 40:
            names = []
        texts = []
        for name in names:
            mine = points[points["label"] == name]
            if len(mine) > 1:
                ax.plot(mine[x], mine[y], color="grey", linewidth=0.6, alpha=0.6, zorder=2)
            last = mine.iloc[-1]
            texts.append(ax.text(last[x], last[y], str(name), fontsize=8, zorder=4))
        ax.set(xlabel=x, ylabel=y.replace("_", " "), title=f"{y.replace('_', ' ')} vs {x}")
        ax.legend(fontsize=8, loc="best")
        if texts:
            fig.canvas.draw()  # adjustText reads the rendered text sizes
            adjust_text(texts, ax=ax, x=points[x].to_numpy(), y=points[y].to_numpy(),
                        arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5}, iter_lim=200)
    return fig


def expert_utilisation(utilisation: dict[str, pd.DataFrame], *, column: str = "utilisation",
                       uniform: float | None = None, bins: int = 20) -> Figure:
    """Histogram of the experts' `column` (rows of `mlic.studies.moe.expert_utilisation`), one panel per head, specific
    and shared experts stacked; a dashed line at `uniform` (1/E: what uniform routing gives every expert)."""
    heads = list(utilisation)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.6 * len(heads), 3.4), squeeze=False, sharey=True)
    top = max(float(frame[column].max()) for frame in utilisation.values()) if heads else 1.0
    edges = np.linspace(0.0, max(top, uniform or 0.0, 1e-6) * 1.05, bins + 1)
    for ax, head in zip(axes[0], heads):
        frame = utilisation[head]
        sns.histplot(data=frame, x=column, hue="kind", multiple="stack", bins=edges, ax=ax,
                     hue_order=[k for k in ("specific", "shared") if k in set(frame["kind"])])
        if uniform is not None:
            ax.axvline(uniform, color="black", linestyle="--", linewidth=1)
        ax.set(title=f"{head} ({len(frame)} experts)", xlabel=f"{column} (mean gate weight received)",
               ylabel="experts")
    fig.tight_layout()
    return fig


def gate_explorer(gates: dict[str, np.ndarray], contexts: np.ndarray, class_names: Sequence[str],
                  slots: Sequence[str], *, context_names: Sequence[str] | None = None,
                  targets: np.ndarray | None = None, label: int = 0, max_images: int = 200) -> Any:
    """An ipywidgets panel: pick a head, a label and a context ("all" or one), see `gates_per_image` for it.

    Images are those holding the label when `targets` is given. Returns the widget (display it as a cell's last
    value). Each change draws the figure as a PNG into the `Output` widget's outputs (plain widget state, as the
    explorer does: it renders in JupyterLab and can be read without a browser); the first figure is drawn at once,
    so an executed notebook (papermill) keeps a static picture even without a widget front end.
    """
    import base64
    import io

    import ipywidgets as widgets

    contexts = np.asarray(contexts)
    names = list(context_names) if context_names is not None else [str(c) for c in np.unique(contexts)]
    head_pick = widgets.Dropdown(options=list(gates), description="head")
    label_pick = widgets.Dropdown(options=[(n, i) for i, n in enumerate(class_names)], value=label,
                                  description="label")
    context_pick = widgets.Dropdown(options=[("all", -1), *[(n, i) for i, n in enumerate(names)]], value=-1,
                                    description="context")
    output = widgets.Output()

    def redraw(_: Any = None) -> None:
        c, ctx = int(label_pick.value), int(context_pick.value)
        keep = np.ones(len(contexts), bool) if targets is None else np.asarray(targets)[:, c] > 0
        if ctx >= 0:
            keep &= contexts == ctx
        fig = gates_per_image(gates[head_pick.value][keep, c], contexts[keep], slots, context_names=names,
                              label_name=class_names[c], head=head_pick.value, max_images=max_images,
                              subset=f"context {context_pick.label}" if ctx >= 0 else "")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        text = f"gates of {class_names[c]} ({head_pick.value}, context {context_pick.label})"
        output.outputs = ({"output_type": "display_data", "metadata": {},
                           "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                                    "text/plain": text}},)

    for pick in (head_pick, label_pick, context_pick):
        pick.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([head_pick, label_pick, context_pick]), output])
