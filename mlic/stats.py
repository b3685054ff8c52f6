"""Statistics over runs: how sure a difference between two methods is.

- `paired_bootstrap(scores_a, scores_b, targets)`: the difference of a metric between two models scored on the same
  images, with a percentile interval from resampling the images — the *same* resample for both models, so the
  interval reflects what the test set's sampling leaves uncertain about the difference, not about each model.
- `seed_interval(values_a, values_b)`: the mean difference of paired per-seed values with a Student-t interval:
  what the training seed leaves uncertain.
- `hierarchical_bootstrap(runs_a, runs_b)`: both at once, for a claim over seeds and images — each replicate draws
  seed pairs with replacement and one image resample shared by every run, and averages the per-seed differences.
- `over_seeds`: mean and standard deviation per group of a table (the studies' summaries).

Intervals are 95 % two-sided by default; metrics are in points (percent), as `mlic.metrics.evaluate` gives them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlic import metrics as _metrics

#: metric name → function(scores, targets, mask) in points; mAP, or a thresholded metric of `mlic.metrics.evaluate`
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


def metric_function(metric: str, *, threshold: float = 0.5, thresholds: np.ndarray | None = None,
                    mode: str = "noninterp") -> Metric:
    """A function `(scores, targets, mask) -> value in points` for `metric`: ``mAP`` (AP convention `mode`), or one
    of ``CP CR CF1 OP OR OF1`` at `threshold` (or per-class `thresholds`)."""
    if metric == "mAP":
        def value(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None) -> float:
            ap = _metrics.average_precision(scores, targets, mode=mode, mask=mask)
            finite = ap[~np.isnan(ap)]
            return float(100.0 * finite.mean()) if finite.size else float("nan")

        return value
    if metric not in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        raise ValueError(f"unknown metric {metric!r}; choose mAP, CP, CR, CF1, OP, OR or OF1")

    def thresholded(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None) -> float:
        return float(_metrics.evaluate(scores, targets, threshold=threshold, thresholds=thresholds, mask=mask,
                                       mode=mode)[metric])

    return thresholded


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`[n_boot, n]` image indices drawn with replacement (reproducible from `seed`)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray, *, n_boot: int = 1000,
                     seed: int = 0, metric: str = "mAP", level: float = 0.95, mask: np.ndarray | None = None,
                     threshold: float = 0.5) -> dict[str, float]:
    """The difference `metric(a) − metric(b)` on the same images, with a percentile bootstrap interval.

    Each replicate resamples the images with replacement and scores both models on that same resample; classes
    without a positive in a resample drop out of both models' mAP alike.

    Args:
        scores_a, scores_b: `[N, C]` scores of the two models on the same images, in the same order.
        targets: `[N, C]` labels; `mask` (optional) the entries that count (unknown labels left out).
        n_boot: replicates; seed: the resampling seed; level: the interval's coverage.
        metric: ``mAP`` or a thresholded metric (at `threshold`).

    Returns:
        ``delta`` (on all images), ``ci_low``, ``ci_high`` (points), ``n_boot``, ``n_images``.
    """
    scores_a, scores_b, targets = np.asarray(scores_a), np.asarray(scores_b), np.asarray(targets)
    if not scores_a.shape == scores_b.shape == targets.shape:
        raise ValueError(f"scores and targets must share a shape, got {scores_a.shape}, {scores_b.shape}, "
                         f"{targets.shape}")
    value = metric_function(metric, threshold=threshold)
    delta = value(scores_a, targets, mask) - value(scores_b, targets, mask)
    draws = np.empty(n_boot)
    for i, rows in enumerate(_resamples(len(targets), n_boot, seed)):
        m = None if mask is None else mask[rows]
        draws[i] = value(scores_a[rows], targets[rows], m) - value(scores_b[rows], targets[rows], m)
    low, high = _interval(draws, level)
    return {"delta": float(delta), "ci_low": low, "ci_high": high, "n_boot": n_boot, "n_images": len(targets)}


def seed_interval(values_a: Sequence[float], values_b: Sequence[float] | None = None, *,
                  level: float = 0.95) -> dict[str, float]:
    """Mean of the paired per-seed differences `a − b` (or of `a` alone) with a Student-t interval.

    With one seed the interval is unbounded (NaN ends): a single seed says nothing about the seed's variance.

    Returns:
        ``delta``, ``ci_low``, ``ci_high``, ``std`` (of the differences, ddof 1) and ``n_seeds``.
    """
    from scipy import stats as st

    a = np.asarray(values_a, dtype=np.float64)
    diff = a if values_b is None else a - np.asarray(values_b, dtype=np.float64)
    n = len(diff)
    mean = float(diff.mean()) if n else float("nan")
    if n < 2:
        return {"delta": mean, "ci_low": float("nan"), "ci_high": float("nan"), "std": float("nan"), "n_seeds": n}
    std = float(diff.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, df=n - 1)) * std / np.sqrt(n)
    return {"delta": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n_seeds": n}


def hierarchical_bootstrap(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets: np.ndarray, *,
                           n_boot: int = 1000, seed: int = 0, metric: str = "mAP", level: float = 0.95,
                           mask: np.ndarray | None = None, threshold: float = 0.5,
                           statistic: Callable[..., float] | None = None) -> dict[str, Any]:
    """A difference over seeds and images: mean over seeds of `metric(a_s) − metric(b_s)`, with an interval that
    resamples both the seed pairs and the images.

    Each replicate draws as many seed pairs as there are, with replacement, and one image resample that every run
    of the replicate shares (the runs were scored on the same images). With one seed this is `paired_bootstrap`.

    Args:
        scores_a, scores_b: per seed, `[N, C]` scores of the two methods (seed i of a paired with seed i of b).
        targets, mask, metric, threshold, n_boot, seed, level: as in `paired_bootstrap`.
        statistic: instead of `metric`, any `f(scores, targets, mask) -> float` (points).

    Returns:
        ``delta`` (mean over seeds on all images), ``ci_low``, ``ci_high``, ``per_seed`` (the differences on all
        images), ``n_seeds``, ``n_images``, ``n_boot``.
    """
    if len(scores_a) != len(scores_b) or not len(scores_a):
        raise ValueError(f"need the same number (>= 1) of runs per method, got {len(scores_a)} and {len(scores_b)}")
    targets = np.asarray(targets)
    value = statistic or metric_function(metric, threshold=threshold)
    per_seed = np.array([value(np.asarray(a), targets, mask) - value(np.asarray(b), targets, mask)
                         for a, b in zip(scores_a, scores_b)])
    rng = np.random.default_rng(seed)
    n_seeds, n = len(per_seed), len(targets)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        pairs = rng.integers(0, n_seeds, size=n_seeds)
        rows = rng.integers(0, n, size=n)
        m = None if mask is None else mask[rows]
        cache: dict[int, float] = {}
        for s in set(pairs.tolist()):
            cache[s] = (value(np.asarray(scores_a[s])[rows], targets[rows], m)
                        - value(np.asarray(scores_b[s])[rows], targets[rows], m))
        draws[i] = float(np.mean([cache[s] for s in pairs]))
    low, high = _interval(draws, level)
    return {"delta": float(per_seed.mean()), "ci_low": low, "ci_high": high, "per_seed": per_seed.tolist(),
            "n_seeds": n_seeds, "n_images": n, "n_boot": n_boot}


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
