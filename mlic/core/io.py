"""Atomic file writes: a reader (or a crash) never sees half a file, and a full disk is one clear error.

Each writer writes a temporary file in the target's folder (a unique name, `.<name>.<random>.tmp`, so concurrent
writers never share one), flushes it to disk, then renames it over the target. A write that runs out of space
raises `DiskFullError` naming the target, and its temporary file is removed; a writer killed mid-write leaves its
temporary file, which `remove_stale_temporaries` deletes at the next start. YAML files are read with
`yaml.safe_load` by `read_yaml`, whose errors name the file and the line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlic.core.errors import CheckpointError, ConfigError, DiskFullError

log = logging.getLogger(__name__)

#: the names `atomic_path` gives its temporary files
TEMPORARY_GLOB = ".*.tmp"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from or during, is "no space left on device" (or over quota)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: str | Path) -> DiskFullError:
    """A `DiskFullError` for `path` that says how much space its file system has left."""
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parents] if p.exists()), Path("."))
    try:
        usage = shutil.disk_usage(folder)
        detail = f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB on its file system)"
    except OSError:
        detail = ""
    return DiskFullError(path, detail)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    Raises:
        DiskFullError: the device ran out of space while the file was written (the old `path`, if any, is intact).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as err:
        if is_no_space(err):
            raise disk_full_error(path) from err
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files (`TEMPORARY_GLOB`) that killed writers left anywhere under `folder`.

    Call it only where no other process writes at the same time: in a folder this process owns (a locked run folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.rglob(TEMPORARY_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", folder, len(removed))
    return removed


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    _atomic_stream(path, "wb", lambda h: h.write(data))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON atomically (numpy scalars and arrays are converted)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays to a compressed `.npz` atomically."""
    _atomic_stream(path, "wb", lambda h: np.savez_compressed(h, **arrays))


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON row to a `.jsonl` file (one line, flushed); a failed append leaves the file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = memoryview((json.dumps(row, default=_json_default) + "\n").encode())
    with open(path, "ab", buffering=0) as handle:  # unbuffered: nothing is left to flush after a failure
        size = handle.seek(0, os.SEEK_END)
        try:
            while line:
                line = line[handle.write(line):]
        except OSError as err:
            os.ftruncate(handle.fileno(), size)  # never half a row
            if is_no_space(err):
                raise disk_full_error(path) from err
            raise


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

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: torch passes on the OSError (ENOSPC)
        torch.save(payload, handle)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no arbitrary code from pickles); errors name the file."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files; name the file in every case
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})"
                              ) from err


def read_yaml(path: str | Path) -> Any:
    """The contents of a YAML file (`yaml.safe_load`: no tags that build objects); a `ConfigError` naming the file
    and the line when it does not parse."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
