"""Class activation map figures: CPSD's Figure 4 (one CAM per model, side by side), pointing-game and energy summaries,
per-label heatmaps, one image under several CAM methods, and the explorer's view (the numbers come from
`mlic.explain`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

__all__ = ["cam_comparison", "pointing_summary", "pointing_per_label", "cam_methods", "explorer_view"]

TARGET_COLOUR = "red"
COMPANION_COLOUR = "white"


def _draw_boxes(ax: Axes, boxes: np.ndarray | None, target: int | None, *, companions: bool = True) -> None:
    """The label's boxes in red, the other objects' (its companions) dashed white; boxes are (class, x, y, w, h) in
    the shown image's pixels."""
    if boxes is None:
        return
    for c, x, y, w, h in np.asarray(boxes, dtype=float).reshape(-1, 5):
        own = target is not None and int(c) == target
        if not own and not companions:
            continue
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1.4 if own else 0.9,
                               ec=TARGET_COLOUR if own else COMPANION_COLOUR, ls="-" if own else "--"))


def _overlay(ax: Axes, image: np.ndarray, cam: np.ndarray | None, *, alpha: float = 0.5) -> None:
    ax.imshow(image)
    if cam is not None:
        h, w = image.shape[:2]
        ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear",
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def cam_comparison(examples: dict[str, Any], *, title: str = "", boxes: bool = True,
                   subtitles: Sequence[str] | None = None) -> Figure:
    """CPSD's Figure 4: per (image, target label) row, the image and each model's CAM of that label side by side.

    The image's title lists its labels, the target first; red boxes are the target's objects, dashed white ones its
    companions (the image's other labels). Each CAM's title is the model and its score for the label.

    Args:
        examples: `mlic.explain.comparison_examples(...)`: ``images``, ``maps`` (model → `[P, S, S]`), ``scores``,
            ``pairs``, ``class_names``, ``labels``, ``boxes``.
        title: figure title.
        boxes: draw the boxes.
        subtitles: an extra line per row under the image's title (e.g. the split).
    """
    images, maps, scores = examples["images"], examples["maps"], examples["scores"]
    pairs, names, labels = examples["pairs"], examples["class_names"], examples["labels"]
    n, models = len(pairs), list(maps)
    fig, axes = plt.subplots(max(n, 1), len(models) + 1, figsize=(2.0 * (len(models) + 1), 2.15 * max(n, 1)),
                             squeeze=False)
    for row in range(n):
        target = int(pairs[row, 1])
        others = [names[c] for c in np.flatnonzero(labels[row]) if c != target]
        present = "" if labels[row, target] else " (absent)"
        text = f"{names[target]}{present}" + (f" + {', '.join(others)}" if others else "")
        if subtitles is not None:
            text += f"\n{subtitles[row]}"
        _overlay(axes[row, 0], images[row], None)
        if boxes:
            _draw_boxes(axes[row, 0], examples["boxes"][row], target)
        axes[row, 0].set_title(text, fontsize=7, color=TARGET_COLOUR if not present else "black")
        for col, model in enumerate(models, start=1):
            ax = axes[row, col]
            _overlay(ax, images[row], maps[model][row])
            if boxes:
                _draw_boxes(ax, examples["boxes"][row], target)
            ax.set_title(f"{model}: {scores[model][row]:.2f}", fontsize=7)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no pairs", ha="center", va="center")
        for ax in axes.flat:
            ax.axis("off")
    handles = [Line2D([], [], color=TARGET_COLOUR, lw=1.4, label="target's boxes"),
               Line2D([], [], color="grey", ls="--", lw=0.9, label="other labels' boxes")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
    method = examples.get("method", "")
    fig.suptitle(title or f"{method} of the target label (red), score per model", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def pointing_summary(summary: pd.DataFrame, *, title: str = "") -> Figure:
    """Pointing game, energy in the label's boxes and energy on its companions' boxes, per model (bars) and split
    (hue), each with its chance level (what a uniform map scores) as a black line across the bar.

    Args:
        summary: `mlic.explain.summarize_pointing(frame, by=("model", "split"))`.
        title: figure title.
    """
    panels = [("pointing", "pointing_chance", "pointing game (%)"),
              ("energy", "energy_chance", "energy in the label's boxes (%)"),
              ("companion_energy", "companion_chance", "energy on other labels' boxes (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 3.6))
    splits = list(dict.fromkeys(summary["split"]))
    models = list(dict.fromkeys(summary["model"]))
    width = 0.8 / max(len(splits), 1)
    palette = sns.color_palette("deep", len(splits))
    for ax, (value, chance, label) in zip(axes, panels):
        for s, split in enumerate(splits):
            part = summary[summary["split"] == split].set_index("model").reindex(models)
            x = np.arange(len(models)) - 0.4 + width * (s + 0.5)
            bars = ax.bar(x, part[value], width=width, color=palette[s], label=split)
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
            ax.hlines(part[chance], x - width / 2, x + width / 2, color="black", lw=1.6, zorder=3,
                      label="chance (uniform map)" if s == 0 else None)
        ax.set_xticks(np.arange(len(models)), models, rotation=20)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "Do the CAMs fall on the object, or on its company?", fontsize=10)
    fig.tight_layout()
    return fig


def pointing_per_label(per_label: pd.DataFrame, *, value: str = "pointing", title: str = "") -> Figure:
    """Heatmap of a per-label score (rows: labels; columns: model × split), e.g. the pointing game or the companion
    energy of `mlic.explain.per_label_pointing`."""
    data = per_label.copy()
    keys = [k for k in ("model", "split") if k in data.columns]
    data["column"] = data[keys].astype(str).agg(" · ".join, axis=1) if keys else value
    wide = data.pivot_table(index="class", columns="column", values=value, sort=False)
    wide = wide[list(dict.fromkeys(data["column"]))]
    fig, ax = plt.subplots(figsize=(1.1 * wide.shape[1] + 2.5, 0.28 * len(wide) + 1.5))
    sns.heatmap(wide, annot=True, fmt=".0f", cmap="rocket_r", cbar_kws={"label": f"{value} (%)"}, ax=ax,
                annot_kws={"fontsize": 6})
    ax.set(xlabel="", ylabel="", title=title or f"{value} per label (%)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def cam_methods(image: np.ndarray, maps: dict[str, np.ndarray], *, boxes: np.ndarray | None = None,
                target: int | None = None, label: str = "", scores: dict[str, float] | None = None) -> Figure:
    """One image and one label under several CAM methods (method → `[S, S]` map), side by side."""
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.1 * n, 2.4), squeeze=False)
    _overlay(axes[0, 0], image, None)
    _draw_boxes(axes[0, 0], boxes, target)
    axes[0, 0].set_title(label or "image", fontsize=8)
    for ax, (method, cam) in zip(axes[0, 1:], maps.items()):
        _overlay(ax, image, cam)
        _draw_boxes(ax, boxes, target)
        suffix = f" ({scores[method]:.2f})" if scores and method in scores else ""
        ax.set_title(method + suffix, fontsize=8)
    fig.tight_layout()
    return fig


def explorer_view(image: np.ndarray, cam: np.ndarray | None, *, class_names: Sequence[str], scores: np.ndarray,
                  truth: np.ndarray, label: int, boxes: np.ndarray | None = None, threshold: float = 0.5,
                  method: str = "", label_agnostic: bool = False, title: str = "") -> Figure:
    """The explorer's picture of one image: the image with its boxes, the CAM of `label`, and every label's score
    (bars; true labels dark, predictions above `threshold` marked ✓ right or ✗ false positive, missed ones ○).

    Args:
        image: `[S, S, 3]` the shown image.
        cam: `[S, S]` the map in [0, 1] (None: the image alone).
        class_names: the labels.
        scores: `[C]` every label's score.
        truth: `[C]` the true labels.
        label: the label whose CAM is shown (its tick is red and bold).
        boxes: (class, x, y, w, h) in the shown image's pixels.
        threshold: score above which a label counts as predicted.
        method: the CAM method's name.
        label_agnostic: the method draws the same map whatever the label (Eigen-CAM: the first principal component
            of the activations), so the CAM is not titled as the label's.
        title: the figure's title.
    """
    n = len(class_names)
    fig, axes = plt.subplots(1, 3, figsize=(11.5, max(3.9, 0.17 * n + 0.9)), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.35]})
    _overlay(axes[0], image, None)
    _draw_boxes(axes[0], boxes, label)
    truth_names = [class_names[c] for c in np.flatnonzero(truth)]
    axes[0].set_title("truth: " + (", ".join(truth_names) or "(none)"), fontsize=9)
    _overlay(axes[1], image, cam)
    _draw_boxes(axes[1], boxes, label)
    if label_agnostic:
        axes[1].set_title(f"{method}: one map for every label (label-agnostic)", fontsize=9)
    else:
        mark = "present" if truth[label] else "absent"
        axes[1].set_title(f"{method} of {class_names[label]} ({mark}), score {scores[label]:.2f}", fontsize=9)
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")
    palette = sns.color_palette("deep")
    colours = [palette[0] if truth[c] else palette[7] for c in order]
    ax = axes[2]
    ax.barh(np.arange(len(order)), np.nan_to_num(scores[order]), color=colours)
    ax.axvline(threshold, color="black", lw=0.8, ls=":")
    ticks = []
    for c in order:
        predicted = scores[c] >= threshold
        sign = "✓" if predicted and truth[c] else "✗" if predicted else "○" if truth[c] else ""
        ticks.append(f"{class_names[c]} {sign}".strip())
    ax.set_yticks(np.arange(len(order)), ticks)
    ax.tick_params(axis="both", labelsize=8)  # the label names as large as the score ticks
    for tick, c in zip(ax.get_yticklabels(), order):
        if c == label:
            tick.set_color(TARGET_COLOUR)
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score", fontsize=9)
    ax.set_title("scores (dark: true labels)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
