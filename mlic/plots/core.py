"""The shared figures (data, training curves, heads, label graphs, CPSD, AAM) and `save`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from mlic.core import paths
from mlic.core.io import atomic_path
from mlic.data.table import LabelledImages

__all__ = [
    "save", "figure_path", "label_frequencies", "labels_per_image", "sample_grid", "training_curves", "per_class_ap",
    "precision_recall_curves", "split_comparison", "query_attention", "similarity_vs_cooccurrence",
    "head_comparison", "clustered_heatmap", "label_graph", "eigenvalue_spectrum", "partition_grid", "ari_per_k",
    "ablation_bars", "k_sweep", "label_gain", "training_cost", "aam_parts", "curves_by_run", "sweep_lines",
    "grid_heatmap", "class_thresholds",
]

sns.set_theme(style="whitegrid", context="notebook")


def save(fig: Figure, output_dir: str | Path, name: str, *, formats: Sequence[str] = ("png", "svg")) -> None:
    """Write `fig` as `output_dir/figures/<name>.<fmt>` for each format (a relative `output_dir` resolves against
    the lab's home, `mlic.core.paths`).

    Returns nothing, so a notebook cell ending in `plots.save(...)` shows the figure and no list of paths; the files
    are `figure_path(output_dir, name, fmt)`.
    """
    for fmt in formats:
        with atomic_path(figure_path(output_dir, name, fmt)) as tmp:
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")


def figure_path(output_dir: str | Path, name: str, fmt: str = "png") -> Path:
    """Where `save` writes figure `name` in format `fmt`."""
    return paths.resolve(output_dir) / "figures" / f"{name}.{fmt}"


def label_frequencies(tables: dict[str, LabelledImages]) -> Figure:
    """Images per label for each split, labels sorted by training frequency (the long tail)."""
    frames = [pd.DataFrame({"label": t.class_names, "images": t.label_frequencies() / max(len(t), 1), "split": s})
              for s, t in tables.items()]
    data = pd.concat(frames)
    first = next(iter(tables.values()))
    order = [first.class_names[i] for i in np.argsort(-first.label_frequencies(), kind="stable")]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 3.6))
    sns.barplot(data=data, x="label", y="images", hue="split", order=order, ax=ax)
    ax.set_ylabel("fraction of images")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=70)
    ax.set_title("Label frequencies")
    return fig


def labels_per_image(tables: dict[str, LabelledImages]) -> Figure:
    """Histogram of the number of labels per image, per split."""
    data = pd.concat([pd.DataFrame({"labels": t.labels_per_image(), "split": s}) for s, t in tables.items()])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.histplot(data=data, x="labels", hue="split", discrete=True, stat="probability", common_norm=False,
                 multiple="dodge", shrink=0.8, ax=ax)
    ax.set_title("Labels per image")
    return fig


def _wrapped(prefix: str, items: Sequence[str], width: int) -> str:
    """`prefix` and the comma-separated `items`, broken into lines of at most `width` characters."""
    import textwrap

    return textwrap.fill(prefix + (", ".join(items) or "–"), width=width, break_long_words=False)


def sample_grid(table: LabelledImages, *, n: int = 16, columns: int = 8, seed: int = 0,
                scores: np.ndarray | None = None, threshold: float = 0.5) -> Figure:
    """A grid of images titled with their labels (and, given `scores`, the predicted labels: ✓ right, ✗ wrong).

    Titles are wrapped to the width of an image, and each row of images gets the height its longest title needs,
    so no title runs into the row above.
    """
    from mlic.data.dataset import read_image

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(table), size=min(n, len(table)), replace=False)
    rows = max(int(np.ceil(len(picks) / columns)), 1)
    titles = []
    for i in picks:
        truth = [table.class_names[c] for c in np.flatnonzero(table.labels[i])]
        if scores is None:
            titles.append(_wrapped("", truth, 30) if truth else "(none)")
            continue
        pred = np.flatnonzero(scores[i] >= threshold)
        marks = [f"{table.class_names[c]}\u00a0{'✓' if table.labels[i, c] else '✗'}" for c in pred]  # no break
        titles.append(_wrapped("truth: ", truth, 30) + "\n" + _wrapped("pred: ", marks, 30))
    lines = [max([t.count("\n") + 1 for t in titles[r * columns:(r + 1) * columns]] or [1]) for r in range(rows)]
    image_in, line_in = 1.7, 0.14  # inches: an image's side, a title line at 7 pt
    heights = [image_in + line_in * count + 0.1 for count in lines]
    fig, axes = plt.subplots(rows, columns, figsize=(1.85 * columns, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, title in zip(axes.flat, picks, titles):
        ax.imshow(read_image(str(table.paths[i])).permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=7)
    return fig


def training_curves(history: list[dict[str, Any]], *, metric: str = "mAP") -> Figure:
    """Training loss and validation metric (raw and EMA weights) per epoch."""
    frame = pd.DataFrame(history)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = frame["epoch"] + 1
    ax_loss.plot(epochs, frame["train_loss"], marker="o")
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="loss")
    for name in ("raw", "ema"):
        column = f"val_{metric}_{name}"
        if column in frame:
            ax_val.plot(epochs, frame[column], marker="o", label=f"{name} weights")
    if any(f"val_{metric}_{n}" in frame for n in ("raw", "ema")):
        ax_val.legend()
    ax_val.set(title=f"Validation {metric}", xlabel="epoch", ylabel=metric)
    fig.tight_layout()
    return fig


def per_class_ap(ap_by_split: dict[str, np.ndarray], class_names: Sequence[str]) -> Figure:
    """Per-class AP bars for each split (e.g. test vs test_shift), classes sorted by the first split's AP.

    A class without a positive in a split has no AP there (NaN): it gets no bar, its name is starred and the title
    says in which split(s) it had none (small splits often lack a rare class).
    """
    names = list(class_names)
    aps = {split: np.asarray(ap, dtype=float) for split, ap in ap_by_split.items()}
    data = pd.concat([pd.DataFrame({"label": names, "AP": ap, "split": split}) for split, ap in aps.items()])
    data = data.dropna(subset=["AP"])  # seaborn cannot place bars of a hue level that is missing for a label
    first = np.nan_to_num(next(iter(aps.values())), nan=-1)
    order = [names[i] for i in np.argsort(-first, kind="stable")]
    missing = {split: [n for n, v in zip(names, ap) if np.isnan(v)] for split, ap in aps.items()}
    starred = {n for absent in missing.values() for n in absent}
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 3.6))
    sns.barplot(data=data, x="label", y="AP", hue="split", order=order, hue_order=list(aps), ax=ax)
    ax.set_xticks(range(len(order)), [f"{n}*" if n in starred else n for n in order])
    ax.tick_params(axis="x", rotation=70)
    note = "; ".join(f"{split}: {', '.join(absent)}" for split, absent in missing.items() if absent)
    title = "Average precision per class" + (f"\n* no positive, no AP — {note}" if note else "")
    ax.set(xlabel="", ylabel="AP (%)", title=title)
    return fig


def precision_recall_curves(scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], *,
                            classes: Sequence[int] | None = None, max_classes: int = 8) -> Figure:
    """Precision–recall curves of a few classes (default: the `max_classes` most frequent)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if classes is None:
        classes = list(np.argsort(-targets.sum(0), kind="stable")[:max_classes])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for c in classes:
        if targets[:, c].sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(targets[:, c], scores[:, c])
        ap = 100 * average_precision_score(targets[:, c], scores[:, c])
        ax.step(recall, precision, where="post", label=f"{class_names[c]} (AP {ap:.1f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision–recall")
    ax.legend(fontsize=7, loc="lower left")
    return fig


def split_comparison(metrics_by_split: dict[str, dict[str, float]],
                     keys: Sequence[str] = ("mAP", "CF1", "OF1")) -> Figure:
    """Grouped bars of headline metrics per split — the drop from test to test_shift at a glance; the legend sits
    beside the axes, clear of the bars and their values."""
    data = pd.DataFrame([{"split": split, "metric": k, "value": m[k]} for split, m in metrics_by_split.items()
                         for k in keys if k in m])
    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    sns.barplot(data=data, x="metric", y="value", hue="split", ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 1.1 * max(float(data["value"].max()), 1.0))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title=None, frameon=False)
    ax.set(ylabel="%", xlabel="", title="Metrics per split")
    return fig


def query_attention(examples: dict[str, Any], *, top_k: int = 3, title: str = "") -> Figure:
    """Each image beside the attention maps of its `top_k` highest-scoring classes' queries (ML-Decoder, Query2Label).

    Args:
        examples: `mlic.studies.heads.attention_examples(...)`: `images` `[n, S, S, 3]`, `attention` `[n, C, h, w]`,
            `scores` `[n, C]`, `labels` `[n, C]`, `class_names`.
        top_k: classes shown per image, by score; titles mark true labels ✓ and false ones ✗.
        title: figure title (e.g. the head's name).
    """
    images, attention, scores = examples["images"], examples["attention"], examples["scores"]
    labels, names = examples["labels"], examples["class_names"]
    n = len(images)
    fig, axes = plt.subplots(n, top_k + 1, figsize=(1.9 * (top_k + 1), 2.0 * n), squeeze=False)
    for row in range(n):
        size = images[row].shape[:2]
        axes[row, 0].imshow(images[row])
        truth = [names[c] for c in np.flatnonzero(labels[row])]
        axes[row, 0].set_title("truth: " + ", ".join(truth), fontsize=7)
        for col, c in enumerate(np.argsort(-scores[row])[:top_k], start=1):
            ax = axes[row, col]
            ax.imshow(images[row])
            ax.imshow(attention[row, c], cmap="jet", alpha=0.5, interpolation="bilinear",
                      extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5))
            mark = "✓" if labels[row, c] else "✗"
            ax.set_title(f"{names[c]} {scores[row, c]:.2f} {mark}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def similarity_vs_cooccurrence(similarity: np.ndarray, cooccurrence: np.ndarray, class_names: Sequence[str], *,
                               titles: Sequence[str] = ("classifier cosine similarity", "P(column | row), train")
                               ) -> Figure:
    """Two label × label heatmaps side by side (e.g. ML-GCN's learned classifiers vs the training co-occurrence),
    with the Pearson correlation of their off-diagonal entries in the title."""
    off = ~np.eye(len(class_names), dtype=bool)
    sym = 0.5 * (np.asarray(cooccurrence) + np.asarray(cooccurrence).T)
    r = float(np.corrcoef(np.asarray(similarity)[off], sym[off])[0, 1]) if off.any() else float("nan")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, matrix, name, cmap in zip(axes, (similarity, cooccurrence), titles, ("vlag", "rocket_r")):
        sns.heatmap(matrix, ax=ax, cmap=cmap, square=True, xticklabels=class_names, yticklabels=class_names,
                    center=0 if cmap == "vlag" else None, cbar_kws={"shrink": 0.7})
        ax.set_title(name)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"off-diagonal correlation r = {r:.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def head_comparison(table: pd.DataFrame, *, splits: Sequence[str] = ("test", "test_shift"),
                    metric: str = "mAP", cost: str = "latency_ms") -> Figure:
    """Heads side by side (rows of `mlic.studies.heads.train_heads`: `variant` is the head): `metric` per split (bars,
    mean over seeds) and `metric` on the first split against a cost column (the first seed)."""
    first_seed = table.drop_duplicates("variant")
    data = pd.DataFrame([{"head": row["variant"], "split": split, metric: row[f"{split}/{metric}"]}
                         for _, row in table.iterrows() for split in splits if f"{split}/{metric}" in row])
    fig, (ax_bar, ax_cost) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    sns.barplot(data=data, x="head", y=metric, hue="split", ax=ax_bar)
    for container in ax_bar.containers:
        ax_bar.bar_label(container, fmt="%.1f", fontsize=7)
    ax_bar.tick_params(axis="x", rotation=20)
    ax_bar.legend(loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=len(splits), fontsize=8, frameon=False)
    ax_bar.set_ylim(0, 1.15 * float(data[metric].max() or 1.0))
    ax_bar.set(xlabel="", ylabel=f"{metric} (%)", title=f"{metric} per head")
    first = f"{splits[0]}/{metric}"
    if cost in table and first in table:
        ax_cost.scatter(first_seed[cost], first_seed[first])
        for _, row in first_seed.iterrows():
            ax_cost.annotate(row["variant"], (row[cost], row[first]), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
        ax_cost.set(xlabel=cost, ylabel=f"{first} (%)", title=f"{metric} vs {cost}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# Label graphs and CPSD (notebooks 01_label_graph and 04_cpsd)
# ---------------------------------------------------------------------------------------------------------------------
def _part_colours(n: int) -> list[Any]:
    return sns.color_palette("tab10" if n <= 10 else "tab20", n)


def clustered_heatmap(matrix: np.ndarray, class_names: Sequence[str], *, title: str = "", cmap: str = "viridis",
                      groups: Sequence[Sequence[int]] | None = None, order_by: np.ndarray | None = None,
                      annot: bool = False, fmt: str = ".0f", vmin: float | None = None,
                      vmax: float | None = None) -> Figure:
    """A label × label matrix (co-occurrence counts, conditional probabilities, affinities) with rows and columns
    reordered by hierarchical clustering (seaborn `clustermap`, average linkage).

    Args:
        matrix: the `C×C` values shown.
        class_names: the labels.
        title, cmap, annot, fmt, vmin, vmax: drawing options.
        groups: label groups (e.g. Scenes' planted groups), shown as a colour strip beside rows and columns, so one
            sees whether the clustering found them.
        order_by: a symmetric affinity (e.g. CPSD's co-occurrence affinity) whose average-linkage tree on the
            distance `1 − affinity / max` orders both axes, so several matrices share one order; by default the
            rows of `matrix` are clustered as feature vectors.
    """
    import warnings

    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    frame = pd.DataFrame(np.asarray(matrix, dtype=float), index=list(class_names), columns=list(class_names))
    colours = None
    if groups is not None:
        palette = _part_colours(len(groups))
        colour_of = {int(i): palette[g] for g, members in enumerate(groups) for i in members}
        colours = pd.Series([colour_of.get(i, (1.0, 1.0, 1.0)) for i in range(len(class_names))],
                            index=frame.index, name="group")
    tree = None
    if order_by is not None:
        affinity = np.asarray(order_by, dtype=float)
        distance = 1.0 - affinity / max(float(affinity.max()), 1e-12)
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(np.clip((distance + distance.T) / 2, 0, None), checks=False), method="average")
    size = max(6.0, 0.32 * len(class_names) + 2)
    with warnings.catch_warnings():  # rows are clustered as feature vectors, not read as a distance matrix
        warnings.filterwarnings("ignore", message=".*uncondensed distance matrix")
        grid = sns.clustermap(frame, method="average", cmap=cmap, row_colors=colours, col_colors=colours,
                              row_linkage=tree, col_linkage=tree, annot=annot, fmt=fmt, vmin=vmin, vmax=vmax,
                              figsize=(size, size), dendrogram_ratio=0.12, cbar_pos=(0.02, 0.83, 0.03, 0.12),
                              annot_kws={"fontsize": 6})
    grid.ax_heatmap.set(xlabel="", ylabel="")
    grid.figure.suptitle(title, y=1.01)
    return grid.figure


def label_graph(P: np.ndarray, class_names: Sequence[str], assign: np.ndarray | None = None, *,
                edges_per_label: int = 3, seed: int = 0, title: str = "Label co-occurrence graph") -> Figure:
    """The label graph drawn with networkx: labels on a circle, each part on its own arc, edge widths by affinity.

    Only each label's `edges_per_label` strongest edges are drawn (the full graph of CPSD affinities is complete).
    A circle grouped by part keeps every node and label readable however tight the parts are (a spring layout
    piles the labels of a well-separated part onto one spot): edges inside a part are short chords along its arc,
    edges between parts cross the middle. Labels sit outside the circle, one per node.

    Args:
        P: the `C×C` affinity (e.g. CPSD's co-occurrence affinity `P⁺`).
        class_names: the labels.
        assign: the part of each label (e.g. a CGP partition); labels are ordered by part along the circle.
        edges_per_label: strongest edges drawn per label.
        seed: unused: the circular layout is deterministic (kept so that calls written for the earlier spring
            layout still run).
        title: figure title.
    """
    import networkx as nx

    P = np.asarray(P, dtype=float)
    C = len(P)
    parts = np.zeros(C, dtype=int) if assign is None else np.asarray(assign, dtype=int)
    graph = nx.Graph()
    order = [int(i) for i in np.argsort(parts, kind="stable")]
    graph.add_nodes_from(order)  # circular_layout places the nodes in insertion order: part by part
    for i in range(C):
        row = P[i].copy()
        row[i] = -np.inf
        for j in np.argsort(-row, kind="stable")[:edges_per_label]:
            if P[i, j] > 0:
                graph.add_edge(i, int(j), weight=float(P[i, j]))
    pos = nx.circular_layout(graph)
    fig, ax = plt.subplots(figsize=(7.5, 7.0), layout="constrained")
    weights = np.array([d["weight"] for _, _, d in graph.edges(data=True)])
    widths = 0.5 + 4.5 * weights / weights.max() if len(weights) else []
    nx.draw_networkx_edges(graph, pos, width=widths, alpha=0.5, edge_color="grey", ax=ax)
    palette = _part_colours(int(parts.max()) + 1)
    nx.draw_networkx_nodes(graph, pos, nodelist=order, node_color=[palette[parts[i]] for i in order],
                           node_size=220, ax=ax, edgecolors="white")
    for i in range(C):  # each label just outside its node, aligned away from the circle's centre
        x, y = pos[i]
        angle = np.degrees(np.arctan2(y, x))
        ax.text(1.13 * x, 1.13 * y, class_names[i], fontsize=9, ha="left" if x >= 0 else "right", va="center",
                rotation=angle if x >= 0 else angle - 180, rotation_mode="anchor")
    if assign is not None:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[p], label=f"part {p}")
                   for p in range(len(palette))]
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.axis("off")
    return fig


def eigenvalue_spectrum(eigenvalues: dict[str, np.ndarray], *, k_max: int = 12,
                        title: str = "Normalised Laplacian spectrum") -> Figure:
    """The smallest `k_max` eigenvalues of each graph's normalised Laplacian, with the eigengap marked.

    The largest jump λ_(k+1) − λ_k (k ≥ 2) suggests k parts; near-zero eigenvalues count nearly separate groups.
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    palette = sns.color_palette("deep", len(eigenvalues))
    for colour, (name, values) in zip(palette, eigenvalues.items()):
        values = np.sort(np.asarray(values, dtype=float))[:k_max + 1]
        ks = np.arange(1, len(values) + 1)
        label = name
        if len(values) > 2:
            gaps = np.diff(values)[1:]
            k = int(np.argmax(gaps)) + 2
            ax.annotate("", xy=(k + 0.5, values[k]), xytext=(k + 0.5, values[k - 1]),
                        arrowprops={"arrowstyle": "<->", "color": colour})
            label = f"{name} (eigengap after k = {k})"
        ax.plot(ks, values, marker="o", color=colour, label=label)
    ax.set(xlabel="index (ascending)", ylabel="eigenvalue", title=title)
    ax.legend(fontsize=8)
    return fig


def partition_grid(partitions: dict[str, dict[int, np.ndarray]], class_names: Sequence[str], *,
                   groups: Sequence[Sequence[int]] | None = None) -> Figure:
    """Partitions side by side: one panel per strategy, one row per k, one column per label, colour = part.

    Labels are ordered by planted group when `groups` is given (a top row shows the groups), so a partition that
    follows the groups shows as solid blocks (CGP) and one that mixes them as stripes (DGP).
    """
    from matplotlib.colors import ListedColormap

    C = len(class_names)
    order = np.arange(C)
    if groups is not None:
        truth = np.full(C, len(groups), dtype=int)
        for g, members in enumerate(groups):
            truth[np.asarray(members, dtype=int)] = g
        order = np.argsort(truth, kind="stable")
    n_parts = max(int(np.max(a)) + 1 for by_k in partitions.values() for a in by_k.values())
    n_colours = max(n_parts, len(groups) if groups is not None else 0)
    cmap = ListedColormap(_part_colours(n_colours))
    fig, axes = plt.subplots(1, len(partitions), figsize=(max(5.0, 0.3 * C + 1.5) * len(partitions), 3.6),
                             squeeze=False)
    for ax, (strategy, by_k) in zip(axes[0], partitions.items()):
        ks = sorted(by_k)
        rows = [np.asarray(by_k[k])[order] for k in ks]
        names = [f"k={k}" for k in ks]
        if groups is not None:
            rows = [truth[order]] + rows
            names = ["planted"] + names
        ax.imshow(np.vstack(rows), cmap=cmap, vmin=-0.5, vmax=n_colours - 0.5, aspect="auto",
                  interpolation="nearest")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xticks(range(C), [class_names[i] for i in order], rotation=75, fontsize=7)
        if groups is not None:
            ax.axhline(0.5, color="white", linewidth=3)
        ax.grid(False)
        ax.set_title(strategy.upper())
    fig.suptitle("Label partitions (colour = part)")
    fig.tight_layout()
    return fig


def ari_per_k(frame: pd.DataFrame, *, y: str = "ari", title: str = "Recovered parts vs planted groups") -> Figure:
    """Adjusted Rand index of each strategy's partition against the planted groups, per k (`partition_sweep`).

    A data set without planted groups has no `y` column: the figure then says so instead of failing.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if y not in frame:
        ax.text(0.5, 0.5, "no planted groups in this data set", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return fig
    sns.lineplot(data=frame, x="k", y=y, hue="strategy", marker="o", ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel="k (parts)", ylabel="adjusted Rand index" if y == "ari" else y, title=title)
    ax.set_xticks(sorted(frame["k"].unique()))
    return fig


def _metric_long(frame: pd.DataFrame, metric: str, splits: Sequence[str]) -> pd.DataFrame:
    keep = [c for c in ("variant", "k", "seed") if c in frame]
    long = frame.melt(id_vars=keep, value_vars=[f"{s}/{metric}" for s in splits], var_name="split", value_name=metric)
    long["split"] = long["split"].str.removesuffix(f"/{metric}")
    return long


def ablation_bars(frame: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
                  title: str = "CPSD ablation (Table 3)") -> Figure:
    """Mean ± std over seeds of each variant, one panel per split, seeds as dots; rows of `run_ablation`."""
    long = _metric_long(frame, metric, splits)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        data = long[long.split == split]
        sns.barplot(data=data, x="variant", y=metric, errorbar="sd", ax=ax, color=sns.color_palette("deep")[0],
                    alpha=0.75, capsize=0.15)
        sns.stripplot(data=data, x="variant", y=metric, ax=ax, color="black", size=3.5, jitter=0.15)
        low, high = data[metric].min(), data[metric].max()
        pad = max(1.0, 0.25 * (high - low))
        ax.set_ylim(low - 3 * pad, high + pad)
        means = data.groupby("variant", sort=False)[metric].mean()
        for i, value in enumerate(means):  # the mean, written at the foot of its bar
            ax.text(i, low - 2.7 * pad, f"{value:.1f}", ha="center", va="bottom", fontsize=8, color="white",
                    fontweight="bold")
        ax.set(title=split, xlabel="", ylabel=f"{metric} (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def k_sweep(frame: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
            baseline: dict[str, float] | None = None, sd: dict[str, float] | None = None,
            title: str = "Partition distillation vs k (Figure 3)") -> Figure:
    """Each distillation variant's metric against k, mean over seeds (rows of `run_k_sweep`).

    As in the paper's Figure 3, k = 0 is the baseline and k = 1 self-distillation (one full-label teacher): given
    `baseline` / `sd` (split → value), every line starts from those two points.
    """
    long = _metric_long(frame, metric, splits)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        data = long[long.split == split].groupby(["variant", "k"], sort=False)[metric].mean().reset_index()
        anchors = [(0, baseline), (1, sd)]
        for colour, (variant, rows) in zip(sns.color_palette("deep"), data.groupby("variant", sort=False)):
            xs = [k for k, ref in anchors if ref is not None] + rows["k"].tolist()
            ys = [ref[split] for _, ref in anchors if ref is not None] + rows[metric].tolist()
            ax.plot(xs, ys, marker="o", color=colour, label=variant.upper())
        ax.set_xticks(sorted({0, 1} | set(data["k"].astype(int))) if baseline or sd else sorted(data["k"]))
        ax.set(title=split, xlabel="k (0: baseline, 1: SD)" if baseline or sd else "k", ylabel=f"{metric} (%)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def label_gain(frame: pd.DataFrame, *, x: str = "strength", y: str = "gain",
               title: str = "Per-label gain vs co-occurrence strength") -> Figure:
    """Per-label AP gain of a variant over the baseline against the label's co-occurrence strength, per split, with
    a least-squares line per split (rows of `mlic.studies.cpsd.per_label_gain`)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    palette = sns.color_palette("deep")
    for colour, (split, rows) in zip(palette, frame.groupby("split", sort=False)):
        ax.scatter(rows[x], rows[y], color=colour, label=split, s=22)
        for _, row in rows.iterrows():
            ax.annotate(str(row["label"]), (row[x], row[y]), fontsize=6, color=colour, xytext=(2, 2),
                        textcoords="offset points")
        finite = rows[[x, y]].dropna()
        if len(finite) > 1 and finite[x].nunique() > 1:
            slope, intercept = np.polyfit(finite[x], finite[y], 1)
            xs = np.linspace(finite[x].min(), finite[x].max(), 20)
            ax.plot(xs, slope * xs + intercept, color=colour, linewidth=1, linestyle="--")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel="co-occurrence strength (max_j P(j | label))" if x == "strength" else x,
           ylabel="AP gain (points)" if y == "gain" else y, title=title)
    ax.legend(fontsize=8)
    return fig


def training_cost(costs: pd.DataFrame, *, title: str = "Training cost per variant") -> Figure:
    """Stacked bars of teacher and student seconds per variant, the number of teachers written beside them (rows of
    `mlic.studies.cpsd.variant_costs`)."""
    fig, ax = plt.subplots(figsize=(6.0, 0.5 * len(costs) + 1.5))
    y = np.arange(len(costs))
    palette = sns.color_palette("deep")
    ax.barh(y, costs["teacher_seconds"], color=palette[1], label="teachers")
    ax.barh(y, costs["student_seconds"], left=costs["teacher_seconds"], color=palette[0], label="student")
    for i, row in costs.reset_index(drop=True).iterrows():
        n = int(row["teachers"])
        ax.text(row["teacher_seconds"] + row["student_seconds"], i, f"  {n} teacher{'' if n == 1 else 's'}",
                va="center", fontsize=8)
    ax.set_yticks(y, costs["variant"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.3 * float((costs["teacher_seconds"] + costs["student_seconds"]).max() or 1.0))
    ax.set(xlabel="seconds (wall, mean over seeds)", title=title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
    return fig


def aam_parts(panels: dict[str, list[dict[str, float]]], *, base: dict[str, float] | None = None) -> Figure:
    """The AAM paper's Figure 2: positive and negative parts of the loss over cosθ, one panel per varied
    hyperparameter (`panels`: title → list of settings that override `base`)."""
    from mlic.losses.aam import aam_curves

    base = {"s": 23.0, "m": 0.0, "k": 0.7, "gamma_pos": 0.0, "gamma_neg": 0.0, **(base or {})}
    cos = np.linspace(-1, 1, 201)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, settings) in zip(axes[0], panels.items()):
        for setting, colour in zip(settings, sns.color_palette(n_colors=len(settings))):
            curves = aam_curves(cos, **{**base, **setting})
            label = ", ".join(f"{k}={v:g}" for k, v in setting.items())
            ax.plot(cos, curves["positive"], color=colour, label=label)
            ax.plot(cos, curves["negative"], color=colour, linestyle="--")
        ax.set(title=title, xlabel="cos θ", ylabel="loss (solid: positive, dashed: negative)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def curves_by_run(runs: dict[str, list[dict[str, Any]]], *, column: str = "val_mAP") -> Figure:
    """Training loss and a validation column per epoch for several runs side by side."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in runs.items():
        frame = pd.DataFrame(history)
        ax_loss.plot(frame["epoch"] + 1, frame["train_loss"], marker=".", label=name)
        ax_val.plot(frame["epoch"] + 1, frame[column], marker=".", label=name)
    ax_loss.set(title="Training loss", xlabel="epoch", yscale="log")
    ax_val.set(title=column.replace("_", " "), xlabel="epoch")
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_lines(table: pd.DataFrame, x: str, ys: Sequence[str], *, title: str = "") -> Figure:
    """Metrics against one swept parameter, the best value of each marked (the AAM paper's Figures 3 and 4)."""
    frame = table.sort_values(x)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for y in ys:
        ax.plot(frame[x], frame[y], marker="o", label=y)
        best = frame.loc[frame[y].idxmax()]
        ax.scatter([best[x]], [best[y]], s=140, facecolors="none", edgecolors="black", zorder=3)
        ax.annotate(f"best {x}={best[x]:g}", (best[x], best[y]), textcoords="offset points", xytext=(5, 6),
                    fontsize=7)
    ax.set(xlabel=x, ylabel="%", title=title)
    ax.legend(fontsize=8)
    return fig


def grid_heatmap(table: pd.DataFrame, rows: str, columns: str, value: str, *, title: str = "") -> Figure:
    """A metric over a two-parameter grid (the AAM paper's Table 8 for γ− × γ+) as an annotated heatmap."""
    pivot = table.pivot_table(index=rows, columns=columns, values=value)
    fig, ax = plt.subplots(figsize=(1.2 * pivot.shape[1] + 2.5, 0.8 * pivot.shape[0] + 1.8))
    sns.heatmap(pivot, annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar_kws={"label": value})
    ax.set_title(title or value)
    return fig


def class_thresholds(thresholds: np.ndarray, class_names: Sequence[str], *, default: float = 0.5) -> Figure:
    """Tuned per-class thresholds against the default one."""
    order = np.argsort(thresholds)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 3.2))
    ax.bar([class_names[i] for i in order], np.asarray(thresholds)[order], color="tab:blue")
    ax.axhline(default, color="black", linestyle="--", label=f"default {default}")
    ax.tick_params(axis="x", rotation=70)
    ax.set(ylabel="threshold", title="Per-class thresholds maximising F1")
    ax.legend()
    return fig
