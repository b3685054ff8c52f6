"""Exceptions that name the file and the field at fault, so bad input is fixed at its source."""

from __future__ import annotations

from pathlib import Path


class MlicError(Exception):
    """Base of the project's own errors: the command line shows them as one line (`mlic: error: ...`)."""


class DataFormatError(MlicError, ValueError):
    """A dataset file is malformed: `path` is the file, `field` the key, tag or column, `problem` what is wrong."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: field {field!r}: {problem}")


class ConfigError(MlicError, ValueError):
    """A config value is missing, unknown or of the wrong type or range; the message names the dotted field."""


class BadImageError(MlicError, OSError):
    """An image file is missing or cannot be decoded."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class TrainingDivergedError(MlicError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(MlicError, RuntimeError):
    """A checkpoint file cannot be loaded (corrupt, truncated, or not a checkpoint)."""


class WeightsUnavailableError(MlicError, RuntimeError):
    """Pretrained weights could not be obtained (offline, or no offline copy for this model)."""


class TooManyBadImagesError(BadImageError):
    """A split had no readable image, or more unreadable ones than `data.max_bad_fraction` allows."""


class FolderInUseError(MlicError, RuntimeError):
    """A run folder (or another owned folder) is held by a live process; the message names it."""


class DiskFullError(MlicError, OSError):
    """No space was left on the device while writing `path`; the partial file was removed."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: no space left on device{detail}")
