"""Every figure the notebooks draw: one function per figure, each returning a matplotlib `Figure`.

`save(fig, output_dir, name)` writes PNG (for the report) and SVG (for papers) into `output_dir/figures/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from mlic.data.table import LabelledImages
from mlic.io import atomic_path

sns.set_theme(style="whitegrid", context="notebook")


def save(fig: Figure, output_dir: str | Path, name: str, *, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `fig` as `output_dir/figures/<name>.<fmt>` for each format; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(output_dir) / "figures" / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")
        paths.append(path)
    return paths


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


def sample_grid(table: LabelledImages, *, n: int = 16, columns: int = 8, seed: int = 0,
                scores: np.ndarray | None = None, threshold: float = 0.5) -> Figure:
    """A grid of images titled with their labels (and, given `scores`, the predicted labels: ✓ right, ✗ wrong)."""
    from mlic.data.dataset import read_image

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(table), size=min(n, len(table)), replace=False)
    rows = int(np.ceil(len(picks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        ax.imshow(read_image(str(table.paths[i])).permute(1, 2, 0).numpy())
        truth = [table.class_names[c] for c in np.flatnonzero(table.labels[i])]
        title = "\n".join(truth) if truth else "(none)"
        if scores is not None:
            pred = set(np.flatnonzero(scores[i] >= threshold))
            marks = [f"{table.class_names[c]} {'✓' if table.labels[i, c] else '✗'}" for c in sorted(pred)]
            title = "truth: " + ", ".join(truth) + "\npred: " + (", ".join(marks) or "–")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
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
    """Per-class AP bars for each split (e.g. test vs test_shift), classes sorted by the first split's AP."""
    data = pd.concat([pd.DataFrame({"label": list(class_names), "AP": np.asarray(ap), "split": split})
                      for split, ap in ap_by_split.items()])
    first = np.nan_to_num(np.asarray(next(iter(ap_by_split.values()))), nan=-1)
    order = [class_names[i] for i in np.argsort(-first, kind="stable")]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 3.6))
    sns.barplot(data=data, x="label", y="AP", hue="split", order=order, ax=ax)
    ax.tick_params(axis="x", rotation=70)
    ax.set(xlabel="", ylabel="AP (%)", title="Average precision per class")
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
    """Grouped bars of headline metrics per split — the drop from test to test_shift at a glance."""
    data = pd.DataFrame([{"split": split, "metric": k, "value": m[k]} for split, m in metrics_by_split.items()
                         for k in keys if k in m])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    sns.barplot(data=data, x="metric", y="value", hue="split", ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f", fontsize=7)
    ax.set(ylabel="%", xlabel="", title="Metrics per split")
    return fig
