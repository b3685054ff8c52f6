"""The co-occurrence-shift study: every method of the lab on Scenes `test` against its shifted splits.

Scenes' factorial shift takes the cues a model may lean on apart: `test_bg` paints a foreign background (co-occurrence
intact), `test_cooc` drops the co-occurring companions (background of the first object's context), `test_shift`
breaks both. `decompose` splits each method's drop from `test` into a background part, a co-occurrence part and
what is left of the drop to `test_shift`. `train_methods` trains each method on one shared recipe (`METHODS` holds
each method's overrides; CPSD is a study of teachers and a student), `drop_table` and `label_drop` measure the drop
per method and per label, and `companion_energy` relates the drop to where the model's CAMs look: the share of CAM
energy on the boxes of the image's *other* objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import metrics
from mlic.core.config import RunConfig
from mlic.runs import Run, run_grid
from mlic.stats import over_seeds
from mlic.studies.aam import loss_variants

log = logging.getLogger(__name__)

SPLITS = ("test", "test_shift")
#: the factorial shift of Scenes: what each split breaks (a foreign background; no co-occurring companions; both)
FACTORS = {"test_bg": "background", "test_cooc": "co-occurrence", "test_shift": "both"}


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
#: methods trained through `mlic.studies.cpsd` (teachers on label parts, then a distilled student)
STUDIES = ("cpsd",)


def list_methods() -> list[str]:
    """Every method name `train_methods` accepts."""
    return [*METHODS, *STUDIES]


def train_methods(base: RunConfig, methods: Sequence[str], *, head_options: dict[str, dict[str, Any]] | None = None,
                  cpsd_k: int = 5, seeds: Sequence[int] | None = None, workers: int = 1) -> pd.DataFrame:
    """Train every method on `base` (`mlic.runs.run_grid` under `base.output_dir`; CPSD as a study in its
    ``cpsd/`` sub-folder); one row per method and seed with `run_grid`'s columns and ``method`` (the variant)."""
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list_methods()}")
    opts = head_options or {}
    seeds = list(seeds) if seeds else [base.train.seed]
    plain = {name: METHODS[name](opts) for name in methods if name in METHODS}
    frames = [run_grid(base, plain, seeds, workers=workers)] if plain else []
    if "cpsd" in methods:
        from mlic.studies.cpsd import CPSDStudy

        with CPSDStudy(base, Path(base.output_dir) / "cpsd") as study:
            rows = []
            for seed in seeds:
                result = study.run("cpsd", k=cpsd_k, seed=seed)
                row = result.row()
                rows.append({**row, "variant": "cpsd", "train_seconds": row["total_seconds"]})
        frames.append(pd.DataFrame(rows))
    frame = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(methods)}
    frame = frame.sort_values(["seed", "variant"], key=lambda s: s.map(order) if s.name == "variant" else s,
                              kind="stable").reset_index(drop=True)
    return frame.assign(method=frame["variant"])


def drop_table(frame: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = SPLITS,
               by: str = "method") -> pd.DataFrame:
    """Per method (the `by` column; mean over seeds): `metric` on both splits, the drop (points) and the relative
    drop (share of the first split's value)."""
    first, second = (f"{split}/{metric}" for split in splits[:2])
    by = by if by in frame else "variant"
    out = frame.groupby(by, sort=False)[[first, second]].mean().reset_index().rename(columns={by: "method"})
    out["drop"] = out[first] - out[second]
    out["relative_drop"] = out["drop"] / out[first]
    return out.sort_values("drop").reset_index(drop=True)


def first_runs(frame: pd.DataFrame, *, by: str = "method") -> dict[str, str]:
    """`{method: run_dir}` of each method's first run in `frame` (the lowest seed): the models the CAMs explain."""
    rows = frame.sort_values("seed", kind="stable").drop_duplicates(by)
    return dict(zip(rows[by], rows["run_dir"]))


def decompose(frame: pd.DataFrame, *, metric: str = "mAP", by: Sequence[str] = ("method",),
              reference: str = "test") -> pd.DataFrame:
    """Each method's drop from `reference` to each shifted split, mean ± std over seeds, and what it is made of.

    ``drop_bg`` = `reference` − test_bg (the background cue misleads), ``drop_cooc`` = `reference` − test_cooc (the
    companions are gone), ``drop_shift`` = `reference` − test_shift (both), and ``interaction`` = drop_shift −
    drop_bg − drop_cooc: what losing both cues costs beyond the sum of losing each (0 when the two add up).
    Rows of `frame`: one per run with ``<split>/<metric>`` columns (a `mlic.runs.run_grid` table).
    """
    keys = list(by)
    frame = frame.copy()
    ref = frame[f"{reference}/{metric}"]
    parts = {"bg": "test_bg", "cooc": "test_cooc", "shift": "test_shift"}
    columns = []
    for short, split in parts.items():
        column = f"{split}/{metric}"
        if column in frame:
            frame[f"drop_{short}"] = ref - frame[column]
            columns.append(f"drop_{short}")
    if {"drop_bg", "drop_cooc", "drop_shift"} <= set(frame.columns):
        frame["interaction"] = frame["drop_shift"] - frame["drop_bg"] - frame["drop_cooc"]
        columns.append("interaction")
    metrics_columns = [f"{s}/{metric}" for s in (reference, *parts.values()) if f"{s}/{metric}" in frame]
    return over_seeds(frame, keys, metrics_columns + columns)


#: grid axes a study may sweep to tune each method; a suite's shift study keeps each method at its best value
TUNED_AXES = ("optim.lr",)


def suite_methods(suite_dir: str | Path, *, splits: Sequence[str] = ("test", "test_shift")) -> pd.DataFrame:
    """Every run the studies of a suite recorded (`mlic.studies.claims.collect_runs`) that saved predictions on
    `splits`, as rows with a ``method`` column (``<variant> (<study>)``) beside its `<split>/<metric>` columns: the
    shift study of a whole suite, without training anything again. Where a study swept a `TUNED_AXES` value (AAM's
    learning rates), each method keeps only its runs at the value best on validation, as the ledger does; a run
    that two studies recorded counts once, under the first."""
    from mlic.studies.claims import collect_runs, keep_tuned

    runs = collect_runs(suite_dir)
    keep = [all(Run(d).predictions_file(s).is_file() for s in splits) for d in runs["run_dir"]]
    runs = runs[keep].copy()
    for axis in TUNED_AXES:
        runs = keep_tuned(runs, axis, "val/mAP", by=("study", "variant"))
    runs = runs.drop_duplicates("run_dir")  # a study that reads another's runs (08 on 03's) does not repeat them
    runs["method"] = [f"{v} ({s})" for v, s in zip(runs["variant"], runs["study"])]
    return runs.reset_index(drop=True)


def per_label_ap(run_dirs: dict[str, str | Path], split: str) -> pd.DataFrame:
    """AP (percent) per label (columns) of each run (rows) on `split`, from the saved predictions."""
    rows = {}
    for name, run_dir in run_dirs.items():
        preds = Run(run_dir).predictions(split)
        rows[name] = pd.Series(100 * metrics.average_precision(preds["scores"], preds["targets"],
                                                               mask=preds.get("mask")),
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


def method_metrics(joined: pd.DataFrame, *, splits: Sequence[str] = SPLITS, metric: str = "mAP"
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Every method's numbers of a `drop_vs_energy` table for `mlic.report.record(methods=...)`: `metric` on both
    splits, and under the first split the drop, the companion energy and the pointing rate."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in joined.iterrows():
        first, second = splits
        out[str(row["method"])] = {
            first: {metric: float(row[f"{first}/{metric}"]), "drop": float(row["drop"]),
                    "companion_energy": float(row["companion_energy"]), "pointing": float(row["pointing"])},
            second: {metric: float(row[f"{second}/{metric}"])}}
    return out


def headline(joined: pd.DataFrame, *, method: str = "baseline", splits: Sequence[str] = SPLITS,
             metric: str = "mAP") -> dict[str, dict[str, float]]:
    """The baseline's numbers (else the first method's) and the rank correlation across methods, for
    `mlic.report.record(metrics=...)`."""
    rows = joined.set_index("method")
    name = method if method in rows.index else rows.index[0]
    first, second = splits
    return {first: {metric: float(rows.loc[name, f"{first}/{metric}"]), "drop": float(rows.loc[name, "drop"]),
                    "spearman_drop_vs_companion_energy": float(joined.attrs.get("spearman", float("nan")))},
            second: {metric: float(rows.loc[name, f"{second}/{metric}"])}}
