"""Suites of notebooks under papermill, and the report they leave in `reports/<suite>/`.

- `record(output_dir, ...)`: a notebook's last cell; writes `results.json` (metrics, values, versions, seed) and
  tables as CSV, which the report collects.
- `run_suite(suite_file)`: executes every notebook entry of a suite YAML (each grid point is one run, in its own
  folder), records failures with the failing cell and goes on, skips runs that already succeeded unless `force`.
  Ctrl-C stops the notebooks that are running (their kernels are interrupted) and still writes the index of what
  finished.
- `write_index(suite_dir)`: `index.md` and `index.html` with every figure, the collected tables, links to the
  executed notebooks, versions and seeds, timings and the failures. Only a run whose last execution succeeded shows
  results and figures: those a failed, interrupted or running execution left behind are an earlier run's.

Every parameter an entry sets (its `parameters` and `grid`) must be one its notebook declares, or the suite fails
before anything runs, naming the entry and the parameter. The suite's `defaults` and the `--set` overrides go to
each notebook that declares them, and must be declared by at least one.

Suite YAML::

    name: quick
    defaults: {data_root: data/scenes}        # parameters given to every notebook
    entries:
      - notebook: 00_quickstart.ipynb
        name: quickstart
        parameters: {epochs: 6}
        grid: {seed: [0, 1]}                  # optional: one run per combination
"""

from __future__ import annotations

import concurrent.futures
import functools
import html
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import re
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from mlic.core import paths
from mlic.core.errors import ConfigError
from mlic.core.io import atomic_write_json, atomic_write_text, read_yaml
from mlic.runs import metric_columns

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
STATUS_FILE = "status.json"
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


@dataclass
class SuiteRun:
    """One notebook execution of a suite: which notebook, under which name, with which parameters.

    `parameters` are the ones its entry sets (with its grid point); `defaults` the suite's shared ones, given to the
    notebook where it declares them; `entry` is the entry's name (runs of a grid share it).
    """

    notebook: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    entry: str = ""


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
        keys = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            suffix = "".join(f"__{k}-{_slug(v)}" for k, v in point.items())
            runs.append(SuiteRun(entry["notebook"], f"{name}{suffix}", {**params, **point}, dict(defaults), name))
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
        found = _declared_parameters(notebooks / run.notebook)
        if found is None:  # a missing notebook fails when its run starts, with the others still running
            continue
        declared_by[run.name] = found
        undeclared = sorted(set(run.parameters) - found - _INJECTED)
        if undeclared:
            raise ConfigError(f"{suite_file}: entry {run.entry or run.name!r} sets {', '.join(map(repr, undeclared))}, "
                              f"which {run.notebook} does not declare (it declares: {', '.join(sorted(found))})")
    everything = frozenset().union(*declared_by.values()) if declared_by else frozenset()
    defaults = (all_runs or runs)[0].defaults if (all_runs or runs) else {}
    unused = sorted(set(defaults) - everything - _INJECTED) if declared_by else []
    if unused:
        raise ConfigError(f"{suite_file}: defaults set {', '.join(map(repr, unused))}, which none of the suite's "
                          "notebooks declares")
    running = frozenset().union(*(declared_by.get(r.name, frozenset()) for r in runs))
    unused = sorted(set(overrides or {}) - running - _INJECTED) if running else []
    if unused:
        raise ConfigError(f"--set {', '.join(unused)}: none of the notebooks to run declares "
                          f"{'it' if len(unused) == 1 else 'them'}")


def _slug(value: Any) -> str:
    """A grid value as part of a folder name (`gradcam++` → `gradcamplusplus`, so it stays apart from `gradcam`)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value).replace("+", "plus")).strip("_")


@dataclass
class SuiteResult:
    """Outcome of `run_suite`: the suite folder and the names of runs that succeeded, failed or were skipped."""

    suite_dir: Path
    succeeded: list[str]
    failed: list[str]
    skipped: list[str]


def run_suite(suite_file: str | Path, *, reports_dir: str | Path = "reports", notebooks_dir: str | Path | None = None,
              force: bool = False, only: list[str] | None = None, kernel_name: str = "python3",
              overrides: dict[str, Any] | None = None, progress: bool = True, workers: int = 1) -> SuiteResult:
    """Execute a suite's notebooks with papermill into `reports_dir/<suite>/<run>/`, then write the index.

    A failing notebook is recorded (failing cell, error) and the others still run; a run whose `status.json` says
    it succeeded is skipped unless `force`. With `workers > 1` that many notebooks run at once (each in its own
    kernel); notebooks that summarise the suite (a `suite_dir` parameter) run after all the others.

    Raises:
        ConfigError: an entry sets a parameter its notebook does not declare (see `check_parameters`).
        KeyboardInterrupt: after Ctrl-C, once the running notebooks are stopped (status `interrupted`) and the
            index of what finished is written.
    """

    suite_file = Path(suite_file)
    name, all_runs = load_suite(suite_file)
    runs = [r for r in all_runs if any(r.name.startswith(o) for o in only)] if only else all_runs
    notebooks = Path(notebooks_dir) if notebooks_dir else suite_file.parent.parent
    check_parameters(suite_file, runs, notebooks, overrides=overrides, all_runs=all_runs)
    suite_dir = Path(reports_dir) / name
    suite_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done, failed, skipped = [], [], []
    todo = []
    for run in runs:
        status_file = suite_dir / run.name / STATUS_FILE
        if not force and status_file.exists() and json.loads(status_file.read_text()).get("status") == "ok":
            skipped.append(run.name)
        else:
            todo.append(run)
    summaries = [r for r in todo if _summarises_suite(notebooks / r.notebook)]
    phases = [[r for r in todo if r not in summaries], summaries]
    stop = threading.Event()
    execute = functools.partial(_execute_run, suite_dir=suite_dir, notebooks=notebooks, kernel_name=kernel_name,
                                overrides=overrides or {}, stop=stop)
    try:
        with tqdm(total=len(todo), desc=f"suite {name}", disable=not progress) as bar:
            for phase in phases:
                for run, ok in _run_phase(phase, execute, workers, stop):
                    (done if ok else failed).append(run.name)
                    bar.update()
    except KeyboardInterrupt:
        index = write_index(suite_dir, wall_seconds=time.perf_counter() - started)
        log.warning("interrupted: the running notebooks were stopped; the index of what finished is %s", index)
        raise KeyboardInterrupt(f"the notebooks were stopped; the index of what finished is {index}") from None
    order = {r.name: i for i, r in enumerate(runs)}
    done.sort(key=order.get)
    failed.sort(key=order.get)
    write_index(suite_dir, wall_seconds=time.perf_counter() - started)
    return SuiteResult(suite_dir, done, failed, skipped)


#: how long interrupted notebooks get to stop before their kernels are killed
INTERRUPT_GRACE_SECONDS = 30.0


def _run_phase(phase: list[SuiteRun], execute: Callable[[SuiteRun], bool], workers: int,
               stop: threading.Event) -> list[tuple[SuiteRun, bool]]:
    """Execute `phase` in `workers` threads; on Ctrl-C stop the running notebooks, then raise KeyboardInterrupt.

    The main thread only waits, so that Ctrl-C reaches it at once; the notebooks' kernels run in their own process
    sessions, out of reach of the terminal's signal, so they are interrupted from here (`_stop_running`).
    """
    results: list[tuple[SuiteRun, bool]] = []
    if not phase:
        return results
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
    futures = {pool.submit(execute, run): run for run in phase}
    pending = set(futures)
    try:
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
            results += [(futures[f], f.result()) for f in finished]
    except KeyboardInterrupt:
        stop.set()
        for future in pending:
            future.cancel()  # not started yet: never starts
        _stop_running(pending)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    order = {id(r): i for i, r in enumerate(phase)}
    return sorted(results, key=lambda item: order[id(item[0])])


def _stop_running(pending: set[concurrent.futures.Future]) -> None:
    """Interrupt every kernel until the running notebooks have ended; kill the kernels after the grace period or
    at a second Ctrl-C."""
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    while True:
        try:
            _signal_kernels(signal.SIGINT)
            _, pending = concurrent.futures.wait(pending, timeout=2.0)
            if not pending:
                return
            if time.monotonic() > deadline:
                break
        except KeyboardInterrupt:
            break
    log.warning("killing the kernels of %d notebook(s) that did not stop", len(pending))
    _signal_kernels(signal.SIGKILL)
    concurrent.futures.wait(pending, timeout=INTERRUPT_GRACE_SECONDS)


_KERNELS: weakref.WeakSet[Any] = weakref.WeakSet()
_KERNELS_GUARD = threading.Lock()


@functools.cache
def _tracked_kernel_manager() -> type:
    """nbclient's kernel manager, registering each kernel it starts so that Ctrl-C can interrupt it."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        async def _async_post_start_kernel(self, **kw: Any) -> None:
            await super()._async_post_start_kernel(**kw)
            with _KERNELS_GUARD:
                _KERNELS.add(self)

    return TrackedKernelManager


def _signal_kernels(signum: int) -> None:
    """Send `signum` to the process group of every live kernel this process started."""
    with _KERNELS_GUARD:
        kernels = list(_KERNELS)
    for km in kernels:
        provisioner = getattr(km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        if process is None or process.poll() is not None:  # ended: its group id may belong to another process now
            continue
        try:
            os.killpg(getattr(provisioner, "pgid", None) or process.pid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def _summarises_suite(notebook: Path) -> bool:
    """Whether a notebook declares a `suite_dir` parameter (it reads the suite's other runs)."""
    return "suite_dir" in (_declared_parameters(notebook) or ())


def _declared_parameters(notebook: Path) -> frozenset[str] | None:
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


#: parameters the runner sets itself
_INJECTED = frozenset({"output_dir", "suite_dir"})


def _execute_run(run: SuiteRun, *, suite_dir: Path, notebooks: Path, kernel_name: str,
                 overrides: dict[str, Any], stop: threading.Event | None = None) -> bool:
    """Execute one run's notebook into its folder and write its `status.json`; True when it succeeded.

    The status is `running` while the notebook runs, then `ok`, `failed` or `interrupted` (Ctrl-C, `stop` set).
    """
    import papermill as pm

    run_dir = suite_dir / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    source = notebooks / run.notebook
    declared = _declared_parameters(source) or frozenset()
    params = {**{k: v for k, v in run.defaults.items() if k in declared}, **run.parameters,
              **{k: v for k, v in overrides.items() if k in declared}, "output_dir": str(run_dir.resolve())}
    if "suite_dir" in declared:
        params["suite_dir"] = str(suite_dir.resolve())  # notebooks that summarise the suite's other runs
    if "progress" in declared:
        params.setdefault("progress", False)  # a batch run's log is no place for progress bars
    started = time.perf_counter()
    status: dict[str, Any] = {"notebook": run.notebook, "parameters": params}
    atomic_write_json(run_dir / STATUS_FILE, {**status, "status": "running", "cell": None, "error": None,
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    try:
        pm.execute_notebook(str(source), str(run_dir / Path(run.notebook).name), parameters=params,
                            kernel_name=kernel_name, cwd=str(Path.cwd()), progress_bar=False,
                            kernel_manager_class=_tracked_kernel_manager())
        status["status"] = "ok"
    except pm.PapermillExecutionError as err:
        status.update(status="failed", error=f"{err.ename}: {err.evalue}", cell=err.exec_count,
                      source=err.source[-2000:])
        log.error("%s failed in cell %s: %s: %s", run.name, err.exec_count, err.ename, err.evalue)
    except Exception as err:  # a notebook that cannot start (bad JSON, missing kernel) must not stop the suite
        status.update(status="failed", error=f"{type(err).__name__}: {err}", cell=None, source="")
        log.error("%s could not run: %s", run.name, err)
    if stop is not None and stop.is_set() and status["status"] != "ok":
        status.update(status="interrupted", error=f"interrupted (Ctrl-C) — {status['error']}")
    status["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(run_dir / STATUS_FILE, status)
    return status["status"] == "ok"


_UNLISTED_PARAMETERS = {"output_dir", "data_root", "device", "progress", "suite_dir"}


def collect(suite_dir: str | Path, *, prefix: str | None = None, running: bool = False) -> pd.DataFrame:
    """One row per run (optionally only runs whose name starts with `prefix`): status, seconds, the notebook's
    parameters as `param/<name>`, the seed, the recorded headline metrics as `<split>/<metric>` and every
    method's as `<method>:<split>/<metric>` (a run's results are read only if its last execution succeeded).

    Runs still executing (status `running`: a summarising notebook itself, or runs a killed runner left) are left
    out unless `running`; the index lists them.
    """
    rows = []
    for status_file in sorted(paths.resolve(suite_dir).glob(f"*/{STATUS_FILE}")):
        run_dir = status_file.parent
        if prefix is not None and not run_dir.name.startswith(prefix):
            continue
        status = json.loads(status_file.read_text())
        if status.get("status") == "running" and not running:
            continue
        row: dict[str, Any] = {"run": run_dir.name, "notebook": status.get("notebook"),
                               "status": status.get("status"), "seconds": status.get("seconds")}
        row.update({f"param/{k}": v for k, v in (status.get("parameters") or {}).items()
                    if k not in _UNLISTED_PARAMETERS and isinstance(v, (int, float, str, bool))})
        results_file = run_dir / RESULTS_FILE
        if results_file.exists() and row["status"] == "ok":
            results = json.loads(results_file.read_text())
            row["seed"] = results.get("seed")
            row.update(metric_columns(results.get("metrics", {})))
            for method, values in (results.get("methods") or {}).items():
                row.update({f"{method}:{column}": value for column, value in metric_columns(values).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, *, digits: int = 2) -> str:
    """A GitHub-flavoured markdown table of `frame` (floats rounded)."""
    if frame.empty:
        return "_(empty)_"
    cols = [str(c) for c in frame.columns]
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


_OVERVIEW_SPLITS = ("test", "test_bg", "test_cooc", "test_shift")
_OVERVIEW_COLUMNS = ("run", "notebook", "status", "seconds", "seed",
                     *(f"{split}/{metric}" for metric in ("mAP", "CF1", "OF1") for split in _OVERVIEW_SPLITS))


def write_index(suite_dir: str | Path, *, wall_seconds: float | None = None) -> Path:
    """Write `index.md` and `index.html` for a suite folder; returns the markdown path.

    `timings.json` lists each run's seconds, their sum, and (from `run_suite`) the wall time of the last call.
    """
    suite_dir = Path(suite_dir)
    summary = collect(suite_dir, running=True)
    md = [f"# Report: {suite_dir.name}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    body = [f"<h1>Report: {html.escape(suite_dir.name)}</h1>"]
    failures = summary[summary["status"] != "ok"] if not summary.empty else summary
    atomic_write_text(suite_dir / "runs.csv", summary.to_csv(index=False))
    overview = summary[[c for c in _OVERVIEW_COLUMNS if c in summary.columns]]
    md += ["## Runs", "", markdown_table(overview), "",
           "Every parameter and metric of every run: [runs.csv](runs.csv).", ""]
    body += ["<h2>Runs</h2>", overview.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""),
             "<p>Every parameter and metric of every run: <a href='runs.csv'>runs.csv</a>.</p>"]
    if not failures.empty:
        md += ["## Failures", ""]
        body += ["<h2>Failures</h2><ul>"]
        for run in failures["run"]:
            status = json.loads((suite_dir / run / STATUS_FILE).read_text())
            md.append(f"- **{run}** (cell {status.get('cell')}): `{status.get('error')}`")
            body.append(f"<li><b>{html.escape(run)}</b> (cell {status.get('cell')}): "
                        f"<code>{html.escape(str(status.get('error')))}</code></li>")
        md.append("")
        body.append("</ul>")
    timings = {row["run"]: row["seconds"] for _, row in summary.iterrows()} if not summary.empty else {}
    if wall_seconds is None and (suite_dir / "timings.json").exists():  # `mlic report` keeps the run's wall time
        wall_seconds = json.loads((suite_dir / "timings.json").read_text()).get("wall_seconds_last_call")
    atomic_write_json(suite_dir / "timings.json", {"runs": timings, "total_seconds": sum(timings.values()),
                                                    "wall_seconds_last_call": wall_seconds})
    for run_dir in sorted(p.parent for p in suite_dir.glob(f"*/{STATUS_FILE}")):
        md_run, html_run = _run_section(suite_dir, run_dir)
        md += md_run
        body += html_run
    atomic_write_text(suite_dir / "index.md", "\n".join(md) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>mlic report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    atomic_write_text(suite_dir / "index.html", page)
    return suite_dir / "index.md"


def _run_section(suite_dir: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    status = json.loads((run_dir / STATUS_FILE).read_text())
    rel = run_dir.relative_to(suite_dir)
    nb = rel / Path(status.get("notebook", "")).name
    md = [f"## {run_dir.name}", "", f"Notebook: [{nb}]({nb}) — status **{status.get('status')}**, "
          f"{status.get('seconds', 0):.0f} s.", ""]
    body = [f"<h2>{html.escape(run_dir.name)}</h2>",
            f"<p>Notebook: <a href='{nb}'>{nb}</a> — status <b>{status.get('status')}</b>, "
            f"{status.get('seconds', 0):.0f} s.</p>"]
    results_file = run_dir / RESULTS_FILE
    if status.get("status") != "ok":  # what is in the folder is an earlier execution's, not this one's
        if results_file.exists() or list((run_dir / "figures").glob("*.png")):
            note = ("Its results and figures are not shown: this execution did not finish, so those in its folder "
                    "are an earlier execution's (or incomplete).")
            md += [f"_{note}_", ""]
            body.append(f"<p><i>{html.escape(note)}</i></p>")
        return md, body
    if results_file.exists():
        results = json.loads(results_file.read_text())
        vers = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
        md += [f"Seed {results.get('seed')}; {vers}.", ""]
        body.append(f"<p>Seed {results.get('seed')}; {html.escape(vers)}.</p>")
        for table_name in results.get("tables", []):
            frame = pd.read_csv(run_dir / "tables" / f"{table_name}.csv")
            md += [f"### {table_name}", "", markdown_table(frame), ""]
            body += [f"<h3>{html.escape(table_name)}</h3>",
                     frame.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="")]
    for figure in sorted((run_dir / "figures").glob("*.png")):
        fig_rel = figure.relative_to(suite_dir)
        md += [f"![{figure.stem}]({fig_rel})", ""]
        body.append(f"<figure><img src='{fig_rel}' alt='{figure.stem}'><figcaption>{figure.stem}</figcaption>"
                    "</figure>")
    return md, body
