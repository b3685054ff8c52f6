"""Benchmark: mlic.metrics.average_precision against scikit-learn's per-class loop on a COCO-val-sized problem.

Run as ``python benchmarks/bench_metrics.py``. Random 40,137 x 80 scores with ~3 % positives (seeded). Times are the
best of 3 runs each, measured side by side in one process; the speed-up is printed, not asserted (the machine is
noisy). Exits non-zero if the values differ from scikit-learn's by more than 1e-9.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score

from mlic.metrics import average_precision

TOLERANCE = 1e-9
TARGET_SPEEDUP = 10.0


def best_of(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of `repeats` calls, and the result of the last call."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def sklearn_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The baseline: scikit-learn's average_precision_score, one call per class."""
    return np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40_137, help="images (COCO-2014 val: 40,137)")
    parser.add_argument("--c", type=int, default=80, help="classes")
    parser.add_argument("--pos-rate", type=float, default=0.03, help="fraction of positive entries")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    targets = (rng.random((args.n, args.c)) < args.pos_rate).astype(np.uint8)
    scores = np.clip(0.3 * targets + 0.7 * rng.random((args.n, args.c)), 0.0, 1.0)  # informative, no ties
    scores_tied = np.round(scores, 2)  # many ties: exercises sklearn's threshold grouping
    print(f"scores {args.n} x {args.c}, {targets.mean():.2%} positive, best of {args.repeats}")

    failed = False
    worst = 0.0
    headline = float("nan")
    cases = [  # (label, scores, mlic mode); each is compared with the scikit-learn loop on the same scores
        ("sklearn", scores, "sklearn"),
        ("noninterp (no ties)", scores, "noninterp"),  # without ties noninterp must equal sklearn too
        ("sklearn, tied scores", scores_tied, "sklearn"),  # sklearn's grouping of tied thresholds
    ]
    for label, s, mode in cases:
        t_ref, ref = best_of(lambda s=s: sklearn_per_class(s, targets), args.repeats)
        t_mlic, got = best_of(lambda s=s, mode=mode: average_precision(s, targets, mode=mode), args.repeats)
        diff = float(np.max(np.abs(got - ref)))
        ratio = t_ref / t_mlic
        if headline != headline:  # first case: mode="sklearn" on untied scores
            headline = ratio
        worst = max(worst, diff)
        ok = diff <= TOLERANCE
        failed |= not ok
        print(
            f"  {label:22s} scikit-learn loop {t_ref * 1e3:7.1f} ms | mlic {t_mlic * 1e3:6.1f} ms | "
            f"speed-up {ratio:5.1f}x | max |diff| {diff:.3g}{'' if ok else '  <-- MISMATCH'}"
        )
    print(
        f"average_precision speed-up vs scikit-learn: {headline:.1f}x (target >= {TARGET_SPEEDUP:g}x), "
        f"max |diff| = {worst:.3g}"
    )
    if failed:
        print(f"FAIL: values differ from scikit-learn by more than {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
