"""mlic: a lab for multi-label image classification.

The public API, loaded on first use (PEP 562), so `import mlic` and `mlic --help` load no torch: `mlic.data`,
`mlic.models`, `mlic.losses`, `mlic.metrics`, `mlic.stats`, `mlic.train`, `mlic.runs`, `mlic.inference`,
`mlic.explain`, `mlic.studies`, `mlic.plots`, `mlic.report`, the config `mlic.RunConfig` and `mlic.predict`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlic._version import __version__ as __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from mlic import (
        data,
        explain,
        inference,
        losses,
        metrics,
        models,
        plots,
        report,
        runs,
        stats,
        studies,
        train,
    )
    from mlic.core.config import RunConfig
    from mlic.inference import predict

__all__ = ["__version__", "RunConfig", "cli", "core", "data", "explain", "inference", "losses", "metrics", "models",
           "plots", "predict", "report", "runs", "stats", "studies", "train"]
_ATTRIBUTES = {"RunConfig": ("mlic.core.config", "RunConfig"), "predict": ("mlic.inference", "predict")}
_SUBMODULES = frozenset(__all__) - {"__version__", *_ATTRIBUTES}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mlic.{name}")
    if name in _ATTRIBUTES:
        module, attribute = _ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'mlic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
