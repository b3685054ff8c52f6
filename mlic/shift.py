"""The co-occurrence-shift study: every method of the lab on Scenes `test` vs `test_shift`.

Scenes' `test_shift` draws objects independently of context on random backgrounds, so the co-occurrence and
background cues a model may lean on are gone there; the drop from `test` measures how much a method relied on them.
`train_methods` trains each method on one shared recipe (`METHODS` holds each method's overrides; CPSD is a study of
teachers and a student), `drop_table` and `label_drop` measure the drop per method and per label, and
`companion_energy` relates the drop to where the model's CAMs look: the share of CAM energy on the boxes of the
image's *other* objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import metrics
from mlic.config import RunConfig
from mlic.evaluate import load_predictions
from mlic.experiments import fit_row, loss_variants, metric_columns

log = logging.getLogger(__name__)

SPLITS = ("test", "test_shift")


def _head(name: str, **kwargs: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda opts: {"model.head": name, "model.head_kwargs": {**kwargs, **opts.get(name, {})}}


#: each method as overrides of the shared recipe; `opts` carries per-head options (widths, label embeddings)
METHODS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "baseline": lambda opts: {},
    "ml_decoder": _head("ml_decoder"),
    "query2label": _head("query2label"),
    "ml_gcn": _head("ml_gcn"),
    "gat_reweight": _head("gat_reweight"),
    "aam": lambda opts: loss_variants(["aam"], s=23.0, m=0.0, k=0.7, gamma_neg=1.0, gamma_pos=0.0)["AAM"],
    "moe_static": _head("moe_static"),
    "moe_dynamic": _head("moe_dynamic"),
    "single_positive_an": lambda opts: {"data.partial": {"mode": "single_positive"}, "loss.name": "an",
                                        "loss.kwargs": {}},
    "single_positive_role": lambda opts: {"data.partial": {"mode": "single_positive"}, "loss.name": "role",
                                          "loss.kwargs": {}},
}
#: methods trained through `mlic.cpsd` (teachers on label parts, then a distilled student)
STUDIES = ("cpsd",)


def list_methods() -> list[str]:
    """Every method name `train_methods` accepts."""
    return [*METHODS, *STUDIES]


def train_methods(base: RunConfig, methods: Sequence[str], *, head_options: dict[str, dict[str, Any]] | None = None,
                  cpsd_k: int = 5) -> pd.DataFrame:
    """Train every method on `base` (each in `base.output_dir/<method>`); one row per method with its metrics on
    every evaluated split (`mAP_test`, `mAP_test_shift`, ...), `train_seconds` and `run_dir`."""
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list_methods()}")
    opts = head_options or {}
    rows = []
    for name in methods:
        out = Path(base.output_dir) / name
        if name == "cpsd":
            from mlic.cpsd import CPSDStudy

            with CPSDStudy(base, out) as study:
                result = study.run("cpsd", k=cpsd_k, seed=base.train.seed)
            row: dict[str, Any] = {"method": name, **metric_columns(result.metrics)}
            row.update(train_seconds=result.teacher_seconds + result.student_seconds, run_dir=str(result.run_dir))
        else:
            cfg = base.updated({**METHODS[name](opts), "output_dir": str(out), "name": name})
            row, fitted = fit_row(cfg, name, label="method")
            row["run_dir"] = str(fitted.run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def drop_table(frame: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """Per method: `metric` on both splits, the drop (points) and the relative drop (share of the `test` value)."""
    first, second = splits
    out = frame[["method", f"{metric}_{first}", f"{metric}_{second}"]].copy()
    out["drop"] = out[f"{metric}_{first}"] - out[f"{metric}_{second}"]
    out["relative_drop"] = out["drop"] / out[f"{metric}_{first}"]
    return out.sort_values("drop").reset_index(drop=True)


def per_label_ap(run_dirs: dict[str, str | Path], split: str) -> pd.DataFrame:
    """AP (percent) per label (columns) of each run (rows) on `split`, from the saved predictions."""
    rows = {}
    for name, run_dir in run_dirs.items():
        preds = load_predictions(run_dir, split)
        rows[name] = pd.Series(100 * metrics.average_precision(preds["scores"], preds["targets"]),
                               index=[str(c) for c in preds["class_names"]])
    return pd.DataFrame(rows).T


def label_drop(run_dirs: dict[str, str | Path], splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """AP on the first split minus AP on the second, per method (rows) and label (columns)."""
    return per_label_ap(run_dirs, splits[0]) - per_label_ap(run_dirs, splits[1])


def drop_vs_energy(drops: pd.DataFrame, energy: pd.DataFrame) -> pd.DataFrame:
    """Join the per-method drop with a per-method CAM energy table (`method` and `companion_energy` columns),
    with the Spearman rank correlation across methods in `frame.attrs["spearman"]`."""
    joined = drops.merge(energy, on="method", how="inner")
    if len(joined) >= 3:
        joined.attrs["spearman"] = float(joined["drop"].rank().corr(joined["companion_energy"].rank()))
    else:
        joined.attrs["spearman"] = float("nan")
    return joined


def long_label_table(drops: pd.DataFrame, energy: pd.DataFrame) -> pd.DataFrame:
    """Per (method, label): the AP drop and the CAM companion energy, for a per-label scatter.

    `drops` is `label_drop`'s method × label table; `energy` is a method × label table of companion energy.
    """
    left = drops.stack().rename("drop")
    right = energy.stack().rename("companion_energy")
    out = pd.concat([left, right], axis=1, join="inner").reset_index()
    out.columns = ["method", "label", "drop", "companion_energy"]
    return out[np.isfinite(out["drop"]) & np.isfinite(out["companion_energy"])].reset_index(drop=True)


def companion_energy(pointing: pd.DataFrame, *, split: str = "test") -> tuple[pd.DataFrame, pd.DataFrame]:
    """From `mlic.explain.score_models`' rows (one per model, image, positive label): per method the mean
    `companion_energy`, `energy` (on the label's own boxes) and pointing-game `hit` rate, over pairs whose image has
    other objects; and a method × label table of mean companion energy."""
    rows = pointing[(pointing["split"] == split) & (pointing["companions"] > 0)]
    per_method = (rows.groupby("model")[["companion_energy", "energy", "hit"]].mean().reset_index()
                  .rename(columns={"model": "method", "hit": "pointing"}))
    per_label = rows.pivot_table(index="model", columns="class", values="companion_energy", aggfunc="mean")
    per_label.index.name = None
    per_label.columns.name = None
    return per_method, per_label


def summary_metrics(joined: pd.DataFrame, *, splits: Sequence[str] = SPLITS) -> dict[str, dict[str, float]]:
    """Headline numbers of a `drop_vs_energy` table for `mlic.report.record`: per method the mAP on both splits,
    the drop, the companion energy and the pointing rate; plus the rank correlation across methods."""
    out: dict[str, dict[str, float]] = {}
    for _, row in joined.iterrows():
        out[str(row["method"])] = {f"{splits[0]}_mAP": float(row[f"mAP_{splits[0]}"]),
                                   f"{splits[1]}_mAP": float(row[f"mAP_{splits[1]}"]), "drop": float(row["drop"]),
                                   "companion_energy": float(row["companion_energy"]),
                                   "pointing": float(row["pointing"])}
    out["correlation"] = {"spearman_drop_vs_companion_energy": float(joined.attrs.get("spearman", float("nan")))}
    return out
