"""Contextual-bias figures: the biased pairs, exclusive vs co-occur AP, conditional false positives, AP by band.

The tables come from `mlic.studies.context_bias`; a pair is labelled ``"b | z"`` (b in the context of z).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["biased_pairs_bars", "exclusive_vs_cooccur", "conditional_fpr", "band_ap_bars"]

_RANKING_AXIS = {"labels": "P(z | b) on the training labels", "scores": "bias(b, z): mean score with z / without z"}
_IN_GROUP, _ACROSS = "tab:blue", "tab:gray"
_EXCLUSIVE, _COOCCUR = "tab:orange", "tab:blue"


def _pair_names(pairs: pd.DataFrame) -> list[str]:
    b = pairs["b_name"] if "b_name" in pairs.columns else pairs["b"]
    z = pairs["z_name"] if "z_name" in pairs.columns else pairs["z"]
    return [f"{bi} | {zi}" for bi, zi in zip(b, z)]


def biased_pairs_bars(pairs: pd.DataFrame, *, title: str = "", ranking: str | None = None) -> Figure:
    """The pairs as horizontal bars of their bias, most biased on top; with an ``in_group`` column, bars inside a
    planted group are coloured and the others grey.

    Args:
        pairs: a `biased_pairs` table (`bias`, `b`, `z`, optional names and ``in_group``).
        title: the figure title (default: says which ranking).
        ranking: ``"labels"`` or ``"scores"`` (default: ``pairs.attrs["ranking"]``), which names the x axis.
    """
    ranking = ranking or pairs.attrs.get("ranking", "scores")
    names = _pair_names(pairs)
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(pairs) + 1.6))
    y = np.arange(len(pairs))[::-1]
    grouped = "in_group" in pairs.columns
    colours = [(_IN_GROUP if g else _ACROSS) for g in pairs["in_group"]] if grouped else _IN_GROUP
    ax.barh(y, pairs["bias"].to_numpy(), color=colours)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(_RANKING_AXIS.get(ranking, "bias"))
    if ranking == "scores":
        ax.axvline(1.0, color="black", lw=0.8, ls="--")  # bias 1: the score does not depend on z
    if grouped:
        share = 100.0 * float(np.mean(pairs["in_group"])) if len(pairs) else float("nan")
        ax.legend(handles=[Patch(color=_IN_GROUP, label=f"b and z in one planted group ({share:.0f} %)"),
                           Patch(color=_ACROSS, label="across groups")], fontsize=8, loc="lower right")
    ax.set_title(title or f"The {len(pairs)} most biased pairs b | z, ranked by "
                          f"{'the labels alone' if ranking == 'labels' else 'a model’s scores'}")
    fig.tight_layout()
    return fig


def exclusive_vs_cooccur(summary: pd.DataFrame) -> Figure:
    """Per method: the mean over pairs of b's AP on exclusive images (b without z) and on co-occur images (b with
    z), side by side, the gap written above each pair of bars.

    Args:
        summary: one row per method with `method`, `exclusive_AP`, `cooccur_AP` (`evaluate_methods`' summary).
    """
    methods = list(summary["method"])
    x = np.arange(len(methods))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(methods) + 2.5), 4.2))
    exclusive, cooccur = summary["exclusive_AP"].to_numpy(), summary["cooccur_AP"].to_numpy()
    ax.bar(x - width / 2, exclusive, width, color=_EXCLUSIVE, label="exclusive: b without z")
    ax.bar(x + width / 2, cooccur, width, color=_COOCCUR, label="co-occur: b with z")
    for i, (e, c) in enumerate(zip(exclusive, cooccur)):
        ax.text(i, max(e, c) + 1.5, f"gap {c - e:+.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, methods, rotation=20 if len(methods) > 3 else 0)
    ax.set_ylabel("AP of b, mean over pairs (points)")
    top = np.nanmax(np.concatenate([exclusive, cooccur])) if len(methods) else 100.0
    ax.set_ylim(0, min(110.0, float(top) + 12))
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("b alone vs b in its context: AP on exclusive and co-occur images")
    fig.tight_layout()
    return fig


def conditional_fpr(false_positives: pd.DataFrame) -> Figure:
    """Per pair (rows) and method (one panel each): the rate at which b is predicted on images without b where z
    is present, against images where z is absent too.

    Args:
        false_positives: `conditional_false_positives` rows with a `method` column (`evaluate_methods`).
    """
    frame = false_positives if "method" in false_positives.columns else false_positives.assign(method="")
    methods = list(dict.fromkeys(frame["method"]))
    first = frame[frame["method"] == methods[0]]
    names = _pair_names(first)
    y = np.arange(len(names))[::-1]
    height = 0.4
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 1.6, 0.3 * len(names) + 1.8),
                             sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = frame[frame["method"] == method]
        ax.barh(y + height / 2, rows["fp_rate_with_z"].to_numpy(), height, color=_COOCCUR, label="z present")
        ax.barh(y - height / 2, rows["fp_rate_without_z"].to_numpy(), height, color=_ACROSS, label="z absent")
        ax.set_title(str(method), fontsize=10)
        ax.set_xlabel("b predicted on images without b (%)")
        ax.set_xlim(0, 100)
    axes[0][0].set_yticks(y, names, fontsize=8)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Conditional false positives: b predicted because z is there?")
    fig.tight_layout()
    return fig


def band_ap_bars(bands: pd.DataFrame) -> Figure:
    """mAP of the head, medium and tail classes (by training images), one bar per method in each band; the tick
    labels give each band's classes and training-image range.

    Args:
        bands: `band_ap` rows with a `method` column (`evaluate_methods`).
    """
    frame = bands if "method" in bands.columns else bands.assign(method="")
    methods = list(dict.fromkeys(frame["method"]))
    band_names = list(dict.fromkeys(frame["band"]))
    first = frame[frame["method"] == methods[0]].set_index("band")
    x = np.arange(len(band_names))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(band_names) * len(methods) + 2.0), 4.2))
    for i, method in enumerate(methods):
        rows = frame[frame["method"] == method].set_index("band").reindex(band_names)
        ax.bar(x - 0.4 + width * (i + 0.5), rows["mAP"].to_numpy(), width, label=str(method))
    ticks = [f"{band}\n{int(first.loc[band, 'classes'])} classes\n"
             f"{int(first.loc[band, 'min_train_images'])}–{int(first.loc[band, 'max_train_images'])} images"
             for band in band_names]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_ylabel("mAP (points)")
    ax.set_ylim(0, 100)
    if len(methods) > 1 or methods[0]:
        ax.legend(fontsize=8)
    rule = bands.attrs.get("rule", "")
    ax.set_title("AP by training frequency" + (f" (bands: {rule})" if rule else ""))
    fig.tight_layout()
    return fig
