"""The AAM paper's loss comparison (Prokofiev & Sovrasov): ASL, angular margin (AM) and asymmetric angular margin
(AAM) losses as variants of one recipe, for `mlic.runs.run_grid`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from mlic.core.config import RunConfig
from mlic.runs import run_grid
from mlic.stats import over_seeds

LOSS_VARIANTS = ("asl", "am", "aam")


def loss_variants(names: list[str], *, s: float, m: float, k: float, gamma_neg: float,
                  gamma_pos: float) -> dict[str, dict[str, Any]]:
    """Overrides for the AAM paper's loss comparison: `asl` (ASL on a linear classifier, the ASL paper's γ), `am`
    (angular margin without focusing, γ = 0) and `aam` (with the given γ), the last two on a cosine classifier.
    All three are summed over batch and classes, as the references and the recipe's learning rate assume.
    Variant names are upper case (`ASL`, `AM`, `AAM`)."""
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


def loss_grid(base: RunConfig, losses: Sequence[str], lrs: Sequence[float], seeds: Sequence[int] | None = None, *,
              s: float, m: float, k: float, gamma_neg: float, gamma_pos: float, root: str | None = None,
              workers: int = 1) -> pd.DataFrame:
    """Every loss of `losses` (`loss_variants`) at every learning rate of `lrs` and every seed: one
    `mlic.runs.run_grid` per learning rate, so that each loss can be compared at its own best rate (chosen on the
    validation split) on the same budget. Rows carry an ``optim.lr`` column."""
    variants = loss_variants(list(losses), s=s, m=m, k=k, gamma_neg=gamma_neg, gamma_pos=gamma_pos)
    frames = [run_grid(base.updated({"optim.lr": float(lr)}), variants, seeds, root=root, workers=workers)
              .assign(**{"optim.lr": float(lr)}) for lr in lrs]
    return pd.concat(frames, ignore_index=True)


def best_learning_rates(table: pd.DataFrame, *, by: str = "val/mAP") -> dict[str, float]:
    """Per loss, the learning rate whose runs score best on `by` (mean over seeds): the validation split's mAP."""
    means = table.groupby(["variant", "optim.lr"], sort=False)[by].mean().reset_index()
    best = means.loc[means.groupby("variant", sort=False)[by].idxmax()]
    return dict(zip(best["variant"], best["optim.lr"]))


def at_best_learning_rates(table: pd.DataFrame, *, by: str = "val/mAP") -> pd.DataFrame:
    """The rows of `loss_grid` at each loss's best learning rate (`best_learning_rates`)."""
    best = best_learning_rates(table, by=by)
    return table[[best[v] == lr for v, lr in zip(table["variant"], table["optim.lr"])]].reset_index(drop=True)


def summary(table: pd.DataFrame, *, splits: Sequence[str] = ("test", "test_bg", "test_cooc", "test_shift"),
            metric: str = "mAP") -> pd.DataFrame:
    """Per loss and learning rate: mean ± std over seeds of `val/<metric>` and of `<split>/<metric>` for `splits`,
    with ``best`` marking each loss's best learning rate on val."""
    columns = [c for c in (f"val/{metric}", *(f"{s}/{metric}" for s in splits)) if c in table]
    out = over_seeds(table, ["variant", "optim.lr"], columns)
    best = best_learning_rates(table, by=f"val/{metric}")
    out["best"] = [best.get(v) == lr for v, lr in zip(out["variant"], out["optim.lr"])]
    return out


_TABLE6 = ("OF1", "OF1_adaptive", "CF1", "CF1_adaptive", "mAP")


def threshold_table(table: pd.DataFrame, splits: Sequence[str]) -> pd.DataFrame:
    """The AAM paper's Table 6 from runs that tuned per-class thresholds: per split, OF1 and CF1 at 0.5 and with the
    tuned thresholds (`*_adaptive`), and mAP — mean and std over the runs (seeds)."""
    rows = []
    for split in splits:
        row: dict[str, Any] = {"split": split}
        for key in _TABLE6:
            column = f"{split}/{key}"
            if column in table:
                row[key] = float(table[column].mean())
                row[f"{key}_std"] = float(table[column].std(ddof=1)) if len(table) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A `threshold_table` as `{split: {metric: mean}}` for `mlic.report.record`."""
    return {row["split"]: {k: float(row[k]) for k in _TABLE6 if k in row and pd.notna(row[k])}
            for _, row in table.iterrows()}
