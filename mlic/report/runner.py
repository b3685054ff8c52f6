"""`run_suite`: a suite YAML executed on an executor (`local` threads or `dask`), then its index written."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlic.report import dask_cluster  # noqa: F401 - registers the dask executor
from mlic.report.executors import EXECUTORS, LocalExecutor
from mlic.report.index import write_index
from mlic.report.schedule import SuiteResult, schedule
from mlic.report.suite import check_parameters, load_suite

log = logging.getLogger(__name__)


def run_suite(suite_file: str | Path, *, reports_dir: str | Path = "reports", notebooks_dir: str | Path | None = None,
              force: bool = False, only: list[str] | None = None, kernel_name: str = "python3",
              overrides: dict[str, Any] | None = None, progress: bool = True, workers: int | None = None,
              executor: str = "local", scheduler: str | None = None, gpus_per_run: int | None = None) -> SuiteResult:
    """Execute a suite's notebooks with papermill into `reports_dir/<suite>/<run>/`, then write the index.

    A failing notebook is recorded (failing cell, error) and the others still run; a run whose `status.json` says
    it succeeded is skipped unless `force`. `workers` notebooks run at once (each in its own kernel, the cores or
    GPUs split between them); notebooks that summarise the suite (a `suite_dir` parameter) run after all the
    others, on this machine.

    Args:
        executor: `local` (threads here) or `dask` (each run a `distributed` task: an embedded cluster sized to the
            machine, or the cluster at `scheduler`).
        gpus_per_run: GPUs each run gets (default 1 on a machine with GPUs, else 0).

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
    options: dict[str, Any] = {"jobs": workers, "gpus_per_run": gpus_per_run}
    if scheduler is not None:
        options["scheduler"] = scheduler
    started = time.perf_counter()
    main = EXECUTORS.create(executor, **options)
    summaries = main if executor == "local" else LocalExecutor(1, gpus_per_run)
    try:
        with tqdm(total=len(runs), desc=f"suite {name}", disable=not progress) as bar:
            result = schedule(runs, suite_dir=suite_dir, notebooks=notebooks, executor=main,
                              summary_executor=summaries, kernel_name=kernel_name, overrides=overrides,
                              force=force, cwd=str(Path.cwd()), on_outcome=lambda task, outcome: bar.update())
    except KeyboardInterrupt:
        index = write_index(suite_dir, wall_seconds=time.perf_counter() - started)
        log.warning("interrupted: the running notebooks were stopped; the index of what finished is %s", index)
        raise KeyboardInterrupt(f"the notebooks were stopped; the index of what finished is {index}") from None
    finally:
        main.close()
    write_index(suite_dir, wall_seconds=time.perf_counter() - started)
    return result
