"""Statistics over runs: summaries over seeds (and, for claims, paired intervals over images and seeds)."""

from __future__ import annotations

import pandas as pd


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
