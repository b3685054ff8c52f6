"""Atomic file writes: a reader (or a crash) never sees half a file.

Each writer writes a temporary file in the target's folder, flushes it to disk, then renames it over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_stream(path: str | Path, mode: str, write: Callable[[IO[Any]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        write(handle)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    _atomic_stream(path, "w", lambda h: h.write(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON atomically (numpy scalars and arrays are converted)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays to a compressed `.npz` atomically."""
    _atomic_stream(path, "wb", lambda h: np.savez_compressed(h, **arrays))


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON row to a `.jsonl` file (one line, flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row, default=_json_default) + "\n")
        handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a `.jsonl` file (an absent file is empty)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """`torch.save` into a temporary file, then rename: a crash never leaves half a checkpoint.

    A checkpoint holds the model weights it reports (`weights`: "ema" or "raw"), the config as a plain dict, the
    class names and the mlic version; `last.pt` adds everything needed to resume (optimiser, schedule, EMA, ...).
    """
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no arbitrary code from pickles); errors name the file."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files; name the file in every case
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from err
