"""The one scheduling function every executor shares: which runs execute (a run whose last execution succeeded is
skipped unless forced), in which order (notebooks that summarise the suite after all the others), and the recording
of each outcome in the run's `status.json` — the only place a run's final status is written.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlic.core.errors import ConfigError
from mlic.core.io import atomic_write_json, atomic_write_text
from mlic.report.notebook import STATUS_FILE, NotebookTask, read_source
from mlic.report.suite import SuiteRun, declared_parameters, summarises_suite

log = logging.getLogger(__name__)

#: a random token in the suite folder; a worker that reads the same token there writes into the folder directly
TOKEN_FILE = ".suite-token"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C reached an executor: the outcomes of the runs it stopped travel with it."""

    def __init__(self, outcomes: list[tuple[NotebookTask, dict[str, Any]]]) -> None:
        super().__init__("interrupted")
        self.outcomes = outcomes


class Executor(Protocol):
    """Runs notebook tasks somewhere (threads here, a Dask cluster) and yields their outcomes as they finish.

    `run` executes each task into `suite_dir / task.run` (or, on a worker without the suite's disk, elsewhere, and
    brings the folder's files back) and yields `(task, outcome)`; an execution whose worker was lost yields a failed
    outcome. On Ctrl-C it stops the running notebooks and raises `Interrupted` with their outcomes; `stop` does the
    same when Ctrl-C arrives between two outcomes.
    """

    def run(self, tasks: Sequence[NotebookTask], suite_dir: Path) -> Iterator[tuple[NotebookTask, dict[str, Any]]]:
        ...

    def stop(self) -> list[tuple[NotebookTask, dict[str, Any]]]:
        ...

    def close(self) -> None:
        ...


@dataclass
class SuiteResult:
    """Outcome of a suite: its folder and the names of the runs that succeeded, failed or were skipped."""

    suite_dir: Path
    succeeded: list[str]
    failed: list[str]
    skipped: list[str]


def schedule(runs: Sequence[SuiteRun], *, suite_dir: Path, notebooks: Path, executor: Executor,
             summary_executor: Executor | None = None, kernel_name: str = "python3",
             overrides: dict[str, Any] | None = None, force: bool = False, cwd: str | None = None,
             on_outcome: Callable[[NotebookTask, dict[str, Any]], None] | None = None) -> SuiteResult:
    """Execute `runs` on `executor` in `execution_waves` (a run after the entries it is `after`), summarising
    notebooks last on `summary_executor` (default the same).

    Raises:
        KeyboardInterrupt: after Ctrl-C, once the executor stopped the running notebooks and their status is
            recorded (`interrupted`).
    """
    suite_dir.mkdir(parents=True, exist_ok=True)
    token = suite_token(suite_dir)
    done: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    tasks: list[tuple[SuiteRun, NotebookTask]] = []
    for run in runs:
        if not force and _last_status(suite_dir / run.name) == "ok":
            skipped.append(run.name)
            continue
        try:
            task = build_task(run, suite_dir=suite_dir, notebooks=notebooks, kernel_name=kernel_name,
                              overrides=overrides or {}, token=token, cwd=cwd)
        except (OSError, ValueError) as err:  # a missing or broken notebook fails its run, the others still run
            log.error("%s could not run: %s", run.name, err)
            record_outcome(suite_dir, run.name, {"notebook": run.notebook, "parameters": dict(run.parameters),
                                                 "status": "failed", "error": f"{type(err).__name__}: {err}",
                                                 "cell": None, "source": "", "seconds": 0.0})
            failed.append(run.name)
            continue
        tasks.append((run, task))
    waves = execution_waves(tasks)
    active = executor
    try:
        for wave, summarising in waves:
            active = (summary_executor or executor) if summarising else executor
            for task, outcome in active.run(wave, suite_dir):
                record_outcome(suite_dir, task.run, outcome)
                (done if outcome["status"] == "ok" else failed).append(task.run)
                if on_outcome is not None:
                    on_outcome(task, outcome)
    except KeyboardInterrupt as err:
        stopped = err.outcomes if isinstance(err, Interrupted) else active.stop()
        for task, outcome in stopped:
            record_outcome(suite_dir, task.run, outcome, interrupted=True)
        for _, task in tasks:  # runs a lost or stopped worker left marked as running
            if _last_status(suite_dir / task.run) == "running":
                record_outcome(suite_dir, task.run, {"notebook": task.notebook, "parameters": task.parameters,
                                                     "status": "failed", "error": "stopped before it finished",
                                                     "cell": None, "source": ""}, interrupted=True)
        raise KeyboardInterrupt("interrupted") from None
    order = {r.name: i for i, r in enumerate(runs)}
    return SuiteResult(suite_dir, sorted(done, key=order.get), sorted(failed, key=order.get), skipped)


def execution_waves(tasks: Sequence[tuple[SuiteRun, NotebookTask]]) -> list[tuple[list[NotebookTask], bool]]:
    """The order of execution: waves of tasks that may run at once, each flagged whether it summarises the suite.

    A run starts in the wave after every run of the entries it is `after` (those executing now; a skipped or
    filtered-out entry is not waited for); notebooks that summarise the suite come last, after everything.

    Raises:
        ConfigError: the `after` relations form a cycle.
    """
    regular = [(run, task) for run, task in tasks if "suite_dir" not in task.parameters]
    by_entry: dict[str, list[str]] = {}
    for run, _ in regular:
        by_entry.setdefault(run.entry, []).append(run.name)
    level: dict[str, int] = {}
    pending = list(regular)
    while pending:
        ready = [(run, task) for run, task in pending
                 if all(name in level for entry in run.after for name in by_entry.get(entry, []))]
        if not ready:
            cycle = sorted({run.entry for run, _ in pending})
            raise ConfigError(f"the 'after' relations of entries {cycle} form a cycle")
        for run, _ in ready:
            level[run.name] = 1 + max((level[name] for entry in run.after for name in by_entry.get(entry, [])),
                                      default=-1)
        pending = [item for item in pending if item not in ready]
    waves: list[tuple[list[NotebookTask], bool]] = []
    for depth in range(max(level.values(), default=-1) + 1):
        waves.append(([task for run, task in regular if level[run.name] == depth], False))
    summaries = [task for run, task in tasks if "suite_dir" in task.parameters]
    if summaries:
        waves.append((summaries, True))
    return waves


def build_task(run: SuiteRun, *, suite_dir: Path, notebooks: Path, kernel_name: str, overrides: dict[str, Any],
               token: str = "", cwd: str | None = None) -> NotebookTask:
    """The task of one run: its notebook's JSON and the parameters papermill gives it — the suite's defaults and the
    overrides where the notebook declares them, the entry's own, `suite_dir` for notebooks that summarise the suite
    and `progress=False` (a batch log is no place for progress bars)."""
    source_file = notebooks / run.notebook
    source = read_source(source_file)
    declared = declared_parameters(source_file) or frozenset()
    params = {**{k: v for k, v in run.defaults.items() if k in declared}, **run.parameters,
              **{k: v for k, v in overrides.items() if k in declared}}
    if summarises_suite(source_file):
        params["suite_dir"] = str(suite_dir.resolve())
    if "progress" in declared:
        params.setdefault("progress", False)
    return NotebookTask(run=run.name, notebook=run.notebook, source=source, parameters=params,
                        kernel_name=kernel_name, cwd=cwd, suite_dir=str(suite_dir.resolve()), token=token)


def record_outcome(suite_dir: Path, run: str, outcome: dict[str, Any], *, interrupted: bool = False) -> None:
    """Write a run's final `status.json` (an interrupted execution that did not succeed reads `interrupted`)."""
    status = {k: v for k, v in outcome.items() if k != "files"}
    if interrupted and status.get("status") != "ok":
        status.update(status="interrupted", error=f"interrupted (Ctrl-C) — {status.get('error')}")
    atomic_write_json(suite_dir / run / STATUS_FILE, status)


def suite_token(suite_dir: Path) -> str:
    """The suite folder's token, created on first use."""
    path = suite_dir / TOKEN_FILE
    if not path.exists():
        atomic_write_text(path, uuid.uuid4().hex)
    return path.read_text().strip()


def _last_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text()).get("status")
    except (OSError, ValueError):
        return None
