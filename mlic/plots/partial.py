"""Single-positive figures: losses compared, ROLE estimator agreement, recovered positives."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__: list[str] = ["observed_share", "spml_losses", "estimator_agreement", "recovered_positives"]

_LABELS = {"bce": "BCE (full labels)", "an": "AN", "an_ls": "AN-LS", "wan": "WAN", "epr": "EPR", "role": "ROLE"}


def _name(loss: str) -> str:
    return _LABELS.get(loss, loss)


def observed_share(shares: pd.DataFrame, *, title: str = "Which positives get observed") -> Figure:
    """Per class, the share of its true positives that the simulation observed, one bar per variant (rows of
    `mlic.studies.single_positive.observed_share_by_class`; e.g. the label biases uniform / size / loc)."""
    order = (shares.groupby("label", sort=False)["share"].mean().sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(order)), 3.6))
    sns.barplot(data=shares, x="label", y="share", hue="variant", order=order, ax=ax)
    ax.tick_params(axis="x", rotation=70)
    ax.set(xlabel="", ylabel="observed / true positives", title=title)
    ax.legend(fontsize=8, title="")
    return fig


def spml_losses(runs: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
                title: str = "One observed positive per image vs full labels") -> Figure:
    """Mean ± std over seeds of each loss, one panel per split, seeds as dots (rows of
    `mlic.studies.single_positive.compare_losses`); the full-label BCE bar is hatched as the upper bound."""
    splits = [s for s in splits if f"{s}/{metric}" in runs]
    long = runs.melt(id_vars=["variant", "seed"], value_vars=[f"{s}/{metric}" for s in splits], var_name="split",
                     value_name=metric)
    long["split"] = long["split"].str.removesuffix(f"/{metric}")
    long["method"] = long["variant"].map(_name)
    order = list(dict.fromkeys(long["method"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 3.8), squeeze=False)
    for ax, split in zip(axes[0], splits):
        data = long[long.split == split]
        sns.barplot(data=data, x="method", y=metric, order=order, errorbar="sd", ax=ax, alpha=0.8, capsize=0.15,
                    color=sns.color_palette("deep")[0])
        sns.stripplot(data=data, x="method", y=metric, order=order, ax=ax, color="black", size=3.5, jitter=0.15)
        for patch, method in zip(ax.patches, order):
            if method == _name("bce"):
                patch.set_hatch("//")
                patch.set_facecolor("lightgrey")
        means = data.groupby("method", sort=False)[metric].mean()
        for i, method in enumerate(order):
            ax.text(i, 0.02 * ax.get_ylim()[1], f"{means[method]:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set(title=split, xlabel="", ylabel=f"{metric} (%)")
        ax.tick_params(axis="x", rotation=30)
        plt.setp(ax.get_xticklabels(), horizontalalignment="right", rotation_mode="anchor")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def estimator_agreement(curves: pd.DataFrame, *, keys: Sequence[str] = ("hidden_recall", "precision", "accuracy"),
                        title: str = "ROLE's label estimator vs the hidden truth") -> Figure:
    """The estimator's agreement with the hidden training labels per epoch (epoch 0: initialisation), mean over
    seeds with a ±std band (rows of `compare_losses`' second table or of `estimator_by_epoch`)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    if curves.empty:
        ax.text(0.5, 0.5, "no ROLE run with track_truth", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    long = curves.melt(id_vars=[c for c in ("epoch", "seed") if c in curves], value_vars=list(keys),
                       var_name="measure", value_name="value")
    long["value"] = 100 * long["value"]
    sns.lineplot(data=long, x="epoch", y="value", hue="measure", errorbar="sd", marker="o", ax=ax)
    ax.set(xlabel="epoch (0: initialisation)", ylabel="% of unobserved entries, at 0.5", ylim=(0, 102), title=title)
    ax.legend(fontsize=8, title="")
    return fig


def recovered_positives(runs: pd.DataFrame, *, title: str = "Hidden training positives recovered at 0.5") -> Figure:
    """Per loss, the share of the training positives it never saw that its classifier scores ≥ 0.5 (recall) and
    the precision of what it flags among unobserved entries, mean ± std over seeds; ROLE's estimator as its own
    bars (rows of `mlic.studies.single_positive.compare_losses`)."""
    frames = [pd.DataFrame({"method": runs["variant"].map(_name), "recall": 100 * runs["hidden_recall"],
                            "precision": 100 * runs["precision"]})]
    if "estimator_hidden_recall" in runs:
        est = runs.dropna(subset=["estimator_hidden_recall"])
        frames.append(pd.DataFrame({"method": "ROLE estimator", "recall": 100 * est["estimator_hidden_recall"],
                                    "precision": 100 * est["estimator_precision"]}))
    data = pd.concat(frames, ignore_index=True).melt(id_vars="method", var_name="measure", value_name="percent")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * data["method"].nunique() + 2), 3.6))
    sns.barplot(data=data, x="method", y="percent", hue="measure", errorbar="sd", capsize=0.1, ax=ax)
    ax.set(xlabel="", ylabel="% (unobserved training entries)", ylim=(0, 105), title=title)
    ax.tick_params(axis="x", rotation=30)
    plt.setp(ax.get_xticklabels(), horizontalalignment="right", rotation_mode="anchor")
    ax.legend(fontsize=8, title="")
    return fig
