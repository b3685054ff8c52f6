"""Loops that comparison notebooks need, kept in the package (and tested) rather than in notebooks.

`run_variants(base_cfg, variants)` trains one run per variant (a dict of dotted config overrides) in
`output_dir/<name>` and returns one row per variant with its metrics on every evaluated split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mlic.config import RunConfig
from mlic.io import read_jsonl
from mlic.train.engine import RunResult, fit

log = logging.getLogger(__name__)

REPORTED = ("mAP", "CF1", "OF1", "CF1_adaptive", "OF1_adaptive")


def fit_row(cfg: RunConfig, name: str, *, label: str = "variant",
            keys: tuple[str, ...] = REPORTED) -> tuple[dict[str, Any], RunResult]:
    """Train one run and describe it as a table row: `label`, `<metric>_<split>` for the `keys` each split has,
    `best_epoch`, `weights` and `train_seconds`. Also returns the `RunResult`."""
    log.info("training %s %s", label, name)
    started = time.perf_counter()
    result = fit(cfg)
    row: dict[str, Any] = {label: name, **metric_columns(result.metrics, keys)}
    row.update({"best_epoch": result.best_epoch, "weights": result.weights,
                "train_seconds": time.perf_counter() - started})
    return row, result


def metric_columns(metrics: dict[str, dict[str, float]], keys: tuple[str, ...] = REPORTED) -> dict[str, float]:
    """`{"<metric>_<split>": value}` for the `keys` each split of a run's metrics has (one table row's columns)."""
    return {f"{key}_{split}": values[key] for split, values in metrics.items() for key in keys if key in values}


def run_variants(base_cfg: RunConfig, variants: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Train `base_cfg` once per variant with that variant's overrides; one row per variant.

    Columns: `variant`, `<metric>_<split>` for each reported metric present, `best_epoch`, `weights`,
    `train_seconds`, `epochs_run` and `run_dir`.
    """
    rows = []
    for name, overrides in variants.items():
        cfg = base_cfg.updated({**overrides, "output_dir": str(Path(base_cfg.output_dir) / name), "name": name})
        row, result = fit_row(cfg, name)
        row.update({"epochs_run": len(result.history), "run_dir": str(result.run_dir)})
        rows.append(row)
    return pd.DataFrame(rows)


def histories(table: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The per-epoch rows (`metrics.jsonl`) of each run of a `run_variants` table, by variant name."""
    return {row.variant: read_jsonl(Path(row.run_dir) / "metrics.jsonl") for row in table.itertuples()}


def loss_variants(names: list[str], *, s: float, m: float, k: float, gamma_neg: float,
                  gamma_pos: float) -> dict[str, dict[str, Any]]:
    """Overrides for the AAM paper's loss comparison: `asl` (ASL on a linear classifier, the ASL paper's γ), `am`
    (angular margin without focusing, γ = 0) and `aam` (with the given γ), the last two on a cosine classifier.
    All three are summed over batch and classes, as the references and the recipe's learning rate assume."""
    angular = {"s": s, "m": m, "k": k, "reduction": "sum"}
    table = {
        "asl": {"loss.name": "asl", "loss.kwargs": {"gamma_neg": 4, "gamma_pos": 0, "clip": 0.05, "reduction": "sum"},
                "model.head_kwargs": {}},
        "am": {"loss.name": "aam", "loss.kwargs": {**angular, "gamma_neg": 0.0, "gamma_pos": 0.0},
               "model.head_kwargs": {"cosine": True, "scale": s}},
        "aam": {"loss.name": "aam", "loss.kwargs": {**angular, "gamma_neg": gamma_neg, "gamma_pos": gamma_pos},
                "model.head_kwargs": {"cosine": True, "scale": s}},
    }
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown loss variant(s) {unknown}; choose from {sorted(table)}")
    return {name.upper(): table[name] for name in names}


def headline(table: pd.DataFrame, variant: str, splits: list[str], keys: tuple[str, ...] = REPORTED
             ) -> dict[str, dict[str, float]]:
    """`{split: {metric: value}}` of one variant's row, for `mlic.report.record`."""
    row = table.set_index("variant").loc[variant]
    return {split: {key: float(row[f"{key}_{split}"]) for key in keys if f"{key}_{split}" in row} for split in splits}


def over_seeds(frame: pd.DataFrame, by: str | list[str], columns: list[str], *, text: bool = True) -> pd.DataFrame:
    """Mean and standard deviation over seeds (ddof 1; 0 for a single seed, NaN where the value is missing) of
    `columns` per `by` group, groups in first-appearance order: `<column>_mean`, `<column>_std`, with `text` also a
    ``"mean ± std"`` column named `<column>`, and `seeds` (rows per group)."""
    keys = [by] if isinstance(by, str) else list(by)
    grouped = frame.groupby(keys, sort=False, dropna=False)[columns]
    mean = grouped.mean()
    std = grouped.std(ddof=1).fillna(0.0).where(mean.notna())
    out = pd.DataFrame(index=mean.index)
    for column in columns:
        out[f"{column}_mean"] = mean[column]
        out[f"{column}_std"] = std[column]
        if text:
            out[column] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(mean[column], std[column])]
    out["seeds"] = grouped.size()
    return out.reset_index()
