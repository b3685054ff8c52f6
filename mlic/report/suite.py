"""A suite YAML: its runs (grids expanded) and the check that every parameter it sets is one its notebook declares.

Suite YAML::

    name: quick
    defaults: {data_root: data/scenes}        # parameters given to every notebook that declares them
    entries:
      - notebook: 00_quickstart.ipynb
        name: quickstart
        parameters: {epochs: 6}
        grid: {seed: [0, 1]}                  # optional: one run per combination
      - notebook: 08_thresholds.ipynb
        after: [quickstart]                   # optional: runs once these entries' runs have ended
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic.core.errors import ConfigError
from mlic.core.io import read_yaml

#: parameters the runner sets itself
INJECTED = frozenset({"output_dir", "suite_dir"})


@dataclass
class SuiteRun:
    """One notebook execution of a suite: which notebook, under which name, with which parameters.

    `parameters` are the ones its entry sets (with its grid point); `defaults` the suite's shared ones, given to the
    notebook where it declares them; `entry` is the entry's name (runs of a grid share it); `after` the entries whose
    runs must have ended before this one starts (it reads what they train).
    """

    notebook: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    entry: str = ""
    after: tuple[str, ...] = ()


def load_suite(path: str | Path) -> tuple[str, list[SuiteRun]]:
    """Parse a suite YAML into its name and its list of runs (grids expanded); errors name the file."""
    path = Path(path)
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("entries"), list):
        raise ConfigError(f"{path}: a suite needs a mapping with an 'entries' list")
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping of parameters, got {defaults!r}")
    runs: list[SuiteRun] = []
    for i, entry in enumerate(spec["entries"]):
        if not isinstance(entry, dict) or "notebook" not in entry:
            raise ConfigError(f"{path}: entries[{i}] has no 'notebook'")
        base = Path(entry["notebook"]).stem
        name = str(entry.get("name", base))
        params = entry.get("parameters") or {}
        grid = entry.get("grid") or {}
        if not isinstance(params, dict) or not isinstance(grid, dict):
            raise ConfigError(f"{path}: entry {name!r}: 'parameters' and 'grid' must be mappings")
        bad_axis = next((k for k, v in grid.items() if not isinstance(v, list)), None)
        if bad_axis is not None:
            raise ConfigError(f"{path}: entry {name!r}: grid {bad_axis!r} must be a list of values")
        after = entry.get("after") or []
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ConfigError(f"{path}: entry {name!r}: 'after' must be a list of entry names, got {after!r}")
        keys = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            suffix = "".join(f"__{k}-{_slug(v)}" for k, v in point.items())
            runs.append(SuiteRun(entry["notebook"], f"{name}{suffix}", {**params, **point}, dict(defaults), name,
                                 tuple(after)))
    entries = {r.entry for r in runs}
    for run in runs:
        unknown = sorted(set(run.after) - entries)
        if unknown or run.entry in run.after:
            raise ConfigError(f"{path}: entry {run.entry!r}: 'after' names {unknown or [run.entry]}, which "
                              f"{'is not an entry' if unknown else 'is the entry itself'} (entries: "
                              f"{', '.join(sorted(entries))})")
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{path}: run names repeat: {duplicated}; give entries distinct 'name's")
    return spec.get("name", path.stem), runs


def check_parameters(suite_file: str | Path, runs: list[SuiteRun], notebooks: Path, *,
                     overrides: dict[str, Any] | None = None, all_runs: list[SuiteRun] | None = None) -> None:
    """Refuse a suite whose entries set parameters their notebooks do not declare (papermill would only warn, and
    the value would be ignored), and defaults or overrides that no notebook declares.

    Args:
        suite_file: the suite, for messages.
        runs: the runs about to execute (the overrides must be declared by one of them).
        notebooks: the notebooks' folder.
        overrides: `--set` parameters for every notebook.
        all_runs: every run of the suite (the defaults must be declared by one of them); default `runs`.

    Raises:
        ConfigError: naming the entry (or the defaults, or the override) and the parameter.
    """
    declared_by: dict[str, frozenset[str]] = {}
    for run in all_runs or runs:
        found = declared_parameters(notebooks / run.notebook)
        if found is None:  # a missing notebook fails when its run starts, with the others still running
            continue
        declared_by[run.name] = found
        undeclared = sorted(set(run.parameters) - found - INJECTED)
        if undeclared:
            raise ConfigError(f"{suite_file}: entry {run.entry or run.name!r} sets {', '.join(map(repr, undeclared))}, "
                              f"which {run.notebook} does not declare (it declares: {', '.join(sorted(found))})")
    everything = frozenset().union(*declared_by.values()) if declared_by else frozenset()
    defaults = (all_runs or runs)[0].defaults if (all_runs or runs) else {}
    unused = sorted(set(defaults) - everything - INJECTED) if declared_by else []
    if unused:
        raise ConfigError(f"{suite_file}: defaults set {', '.join(map(repr, unused))}, which none of the suite's "
                          "notebooks declares")
    running = frozenset().union(*(declared_by.get(r.name, frozenset()) for r in runs))
    unused = sorted(set(overrides or {}) - running - INJECTED) if running else []
    if unused:
        raise ConfigError(f"--set {', '.join(unused)}: none of the notebooks to run declares "
                          f"{'it' if len(unused) == 1 else 'them'}")


def _slug(value: Any) -> str:
    """A grid value as part of a folder name (`gradcam++` → `gradcamplusplus`, so it stays apart from `gradcam`)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value).replace("+", "plus")).strip("_")

def summarises_suite(notebook: Path) -> bool:
    """Whether a notebook declares a `suite_dir` parameter (it reads the suite's other runs)."""
    return "suite_dir" in (declared_parameters(notebook) or ())


def declared_parameters(notebook: Path) -> frozenset[str] | None:
    """The parameters a notebook declares (None if it does not exist)."""
    if not notebook.exists():
        return None
    return _inspect(str(notebook), notebook.stat().st_mtime_ns)


@functools.cache
def _inspect(notebook: str, _mtime_ns: int) -> frozenset[str]:
    """Cached per file version: papermill's inspection logs a line and parses the notebook each time."""
    import papermill as pm

    quiet = logging.getLogger("papermill")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return frozenset(pm.inspect_notebook(notebook))
    finally:
        quiet.setLevel(level)


