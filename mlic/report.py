"""Suites of notebooks under papermill, and the report they leave in `reports/<suite>/`.

- `record(output_dir, ...)`: a notebook's last cell; writes `results.json` (metrics, values, versions, seed) and
  tables as CSV, which the report collects.
- `run_suite(suite_file)`: executes every notebook entry of a suite YAML (each grid point is one run, in its own
  folder), records failures with the failing cell and goes on, skips runs that already succeeded unless `force`.
- `write_index(suite_dir)`: `index.md` and `index.html` with every figure, the collected tables, links to the
  executed notebooks, versions and seeds, timings and the failures.

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
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from mlic.core import paths
from mlic.core.io import atomic_write_json, atomic_write_text
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
    """One notebook execution of a suite: which notebook, under which name, with which parameters."""

    notebook: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


def load_suite(path: str | Path) -> tuple[str, list[SuiteRun]]:
    """Parse a suite YAML into its name and its list of runs (grids expanded)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or "entries" not in spec:
        raise ValueError(f"{path}: a suite needs a mapping with an 'entries' list")
    defaults = spec.get("defaults") or {}
    runs: list[SuiteRun] = []
    for i, entry in enumerate(spec["entries"]):
        if "notebook" not in entry:
            raise ValueError(f"{path}: entries[{i}] has no 'notebook'")
        base = Path(entry["notebook"]).stem
        name = entry.get("name", base)
        params = {**defaults, **(entry.get("parameters") or {})}
        grid = entry.get("grid") or {}
        keys = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            suffix = "".join(f"__{k}-{_slug(v)}" for k, v in point.items())
            runs.append(SuiteRun(entry["notebook"], f"{name}{suffix}", {**params, **point}))
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{path}: run names repeat: {duplicated}; give entries distinct 'name's")
    return spec.get("name", path.stem), runs


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
    """

    suite_file = Path(suite_file)
    name, runs = load_suite(suite_file)
    if only:
        runs = [r for r in runs if any(r.name.startswith(o) for o in only)]
    notebooks = Path(notebooks_dir) if notebooks_dir else suite_file.parent.parent
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
    execute = functools.partial(_execute_run, suite_dir=suite_dir, notebooks=notebooks, kernel_name=kernel_name,
                                overrides=overrides or {})
    with tqdm(total=len(todo), desc=f"suite {name}", disable=not progress) as bar:
        for phase in phases:
            with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
                for run, ok in zip(phase, pool.map(execute, phase)):
                    (done if ok else failed).append(run.name)
                    bar.update()
    order = {r.name: i for i, r in enumerate(runs)}
    done.sort(key=order.get)
    failed.sort(key=order.get)
    write_index(suite_dir, wall_seconds=time.perf_counter() - started)
    return SuiteResult(suite_dir, done, failed, skipped)


def _summarises_suite(notebook: Path) -> bool:
    """Whether a notebook declares a `suite_dir` parameter (it reads the suite's other runs)."""
    return notebook.exists() and _declares_suite_dir(str(notebook), notebook.stat().st_mtime_ns)


@functools.cache
def _declares_suite_dir(notebook: str, _mtime_ns: int) -> bool:
    """Cached per file version: papermill's inspection logs a line and parses the notebook each time."""
    import papermill as pm

    quiet = logging.getLogger("papermill")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return "suite_dir" in pm.inspect_notebook(notebook)
    finally:
        quiet.setLevel(level)


def _execute_run(run: SuiteRun, *, suite_dir: Path, notebooks: Path, kernel_name: str,
                 overrides: dict[str, Any]) -> bool:
    """Execute one run's notebook into its folder and write its `status.json`; True when it succeeded."""
    import papermill as pm

    run_dir = suite_dir / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**run.parameters, **overrides, "output_dir": str(run_dir.resolve())}
    source = notebooks / run.notebook
    if _summarises_suite(source):
        params["suite_dir"] = str(suite_dir.resolve())  # notebooks that summarise the suite's other runs
    started = time.perf_counter()
    status: dict[str, Any] = {"notebook": run.notebook, "parameters": params}
    try:
        pm.execute_notebook(str(source), str(run_dir / Path(run.notebook).name), parameters=params,
                            kernel_name=kernel_name, cwd=str(Path.cwd()), progress_bar=False)
        status["status"] = "ok"
    except pm.PapermillExecutionError as err:
        status.update(status="failed", error=f"{err.ename}: {err.evalue}", cell=err.exec_count,
                      source=err.source[-2000:])
        log.error("%s failed in cell %s: %s: %s", run.name, err.exec_count, err.ename, err.evalue)
    except Exception as err:  # a notebook that cannot start (bad JSON, missing kernel) must not stop the suite
        status.update(status="failed", error=f"{type(err).__name__}: {err}", cell=None, source="")
        log.error("%s could not run: %s", run.name, err)
    status["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(run_dir / STATUS_FILE, status)
    return status["status"] == "ok"


_UNLISTED_PARAMETERS = {"output_dir", "data_root", "device", "progress", "suite_dir"}


def collect(suite_dir: str | Path, *, prefix: str | None = None) -> pd.DataFrame:
    """One row per run (optionally only runs whose name starts with `prefix`): status, seconds, the notebook's
    parameters as `param/<name>`, the seed, the recorded headline metrics as `<split>/<metric>` and every
    method's as `<method>:<split>/<metric>` (a failed run's stale results are not read)."""
    rows = []
    for status_file in sorted(paths.resolve(suite_dir).glob(f"*/{STATUS_FILE}")):
        run_dir = status_file.parent
        if prefix is not None and not run_dir.name.startswith(prefix):
            continue
        status = json.loads(status_file.read_text())
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
    summary = collect(suite_dir)
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
