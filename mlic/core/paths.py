"""Where relative paths point: one rule for JupyterLab, papermill and the command line.

A notebook's kernel starts in `notebooks/`, papermill in whatever folder it is given and the CLI in the shell's
current folder, so a relative `data_root="data/scenes"` would name three different folders. Every boundary that
takes a user path (dataset roots, run folders, output folders, suite folders) resolves it with `resolve`, against
one folder, the lab's home:

1. the environment variable ``MLIC_HOME`` when it is set (e.g. a data disk, or a project that installed mlic);
2. else the repository root of the checkout that holds the imported `mlic` package (the folder with
   ``pyproject.toml`` above ``mlic/``: a clone, or an editable install);
3. else the current folder (mlic installed as a plain package, without ``MLIC_HOME``).

Absolute paths are kept as they are, and ``~`` is expanded.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_VARIABLE", "home", "home_rule", "resolve", "where"]

HOME_VARIABLE = "MLIC_HOME"


def _checkout() -> Path | None:
    """The repository root above the imported package, or None when mlic is installed outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "mlic" / "__init__.py").is_file() else None


def home() -> Path:
    """The folder relative paths resolve against (``MLIC_HOME``, else the repository root, else the cwd)."""
    configured = os.environ.get(HOME_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    return _checkout() or Path.cwd()


def home_rule() -> str:
    """Which of the three rules chose `home()`, in words (for error messages)."""
    if os.environ.get(HOME_VARIABLE, "").strip():
        return f"{HOME_VARIABLE}={home()}"
    if _checkout() is not None:
        return f"the repository root {home()} (set {HOME_VARIABLE} to change it)"
    return f"the current folder {home()} (set {HOME_VARIABLE} to change it)"


def resolve(path: str | os.PathLike[str]) -> Path:
    """`path` as an absolute path: kept when absolute, else joined to `home()`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else home() / path


def where(path: str | os.PathLike[str]) -> str:
    """Where `path` was looked for, for an error message: the absolute path, and the rule when it was relative."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return str(given)
    return f"{resolve(given)} ('{path}' is relative to {home_rule()})"
