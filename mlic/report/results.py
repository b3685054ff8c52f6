"""What a notebook leaves for the report: `record(output_dir, ...)` writes `results.json` and its tables."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlic.core import paths
from mlic.core.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

RESULTS_FILE = "results.json"
_VERSIONED = ("mlic", "torch", "torchvision", "timm", "grad-cam", "papermill", "scikit-learn", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def record(output_dir: str | Path, *, metrics: dict[str, dict[str, float]] | None = None,
           methods: dict[str, dict[str, dict[str, float]]] | None = None,
           tables: dict[str, pd.DataFrame] | None = None, seed: int | None = None, **values: Any) -> Path:
    """Save a notebook's results where the report finds them.

    Metrics have one schema, `{split: {metric: value}}`, flattened to ``<split>/<metric>`` columns in the report.

    Args:
        output_dir: the run folder (the notebook's `output_dir` parameter).
        metrics: the headline numbers of the notebook's main method, e.g. `{"test": {"mAP": 81.2}, ...}`.
        methods: the same for every method a comparison notebook trained, `{method: {split: {metric: value}}}`.
        tables: named DataFrames, saved as `tables/<name>.csv` and shown in the report.
        seed: the seed of the run, shown beside its results.
        **values: any other JSON-serialisable values worth keeping.

    Raises:
        ValueError: if `metrics` or `methods` do not follow the schema (the message names the offending key).
    """
    metrics = _check_metrics(metrics or {}, "metrics")
    methods = {str(name): _check_metrics(m, f"methods[{name!r}]") for name, m in (methods or {}).items()}
    out = paths.resolve(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (tables or {}).items():
        atomic_write_text(out / "tables" / f"{name}.csv", frame.to_csv(index=False))
    payload = {"metrics": metrics, "methods": methods, "values": values, "seed": seed, "versions": versions(),
               "tables": sorted(tables or {}), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(out / RESULTS_FILE, payload)
    return out / RESULTS_FILE


def _check_metrics(metrics: Any, where: str) -> dict[str, dict[str, float]]:
    """`{split: {metric: number}}` with plain floats; a ValueError naming the key that breaks the schema."""
    if not isinstance(metrics, dict):
        raise ValueError(f"{where}: expected {{split: {{metric: value}}}}, got {type(metrics).__name__}")
    out: dict[str, dict[str, float]] = {}
    for split, values in metrics.items():
        if not isinstance(values, dict):
            raise ValueError(f"{where}[{split!r}]: expected {{metric: value}} under the split, got {values!r}; "
                             "the schema is {split: {metric: value}}")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}[{split!r}][{metric!r}]: expected a number, got {value!r}")
            if "/" in str(metric) or "/" in str(split):
                raise ValueError(f"{where}[{split!r}][{metric!r}]: '/' separates split and metric in the report")
        out[str(split)] = {str(k): float(v) for k, v in values.items()}
    return out
