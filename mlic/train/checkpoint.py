"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`, describing themselves.

A checkpoint holds the model weights it reports (`weights`: "ema" or "raw"), the config as a plain dict, the class
names and the mlic version; `last.pt` adds everything needed to resume (optimiser, schedule, scaler, EMA, history).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlic.io import atomic_path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """`torch.save` into a temporary file, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True` (no arbitrary code from pickles)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files; name the file in every case
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from err
