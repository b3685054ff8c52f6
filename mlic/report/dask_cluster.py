"""Suites on Dask (`distributed`): every run is one task, on an embedded cluster sized to the machine or on an
existing one (`scheduler="tcp://host:8786"`, e.g. a `dask-jobqueue` SLURMCluster's).

A worker that reads the suite folder's token (`.suite-token`) shares the client's disk and executes into the suite
folder directly. Any other worker executes into a folder of its own (`$MLIC_WORKER_DIR`, default the temporary
folder, `/mlic-suites/<suite>/<run>`) and the task returns the folder's files up to `max_file_bytes` each; larger
ones (checkpoints) stay there and the run's status names them (`worker_dir`, `left_on_worker`). A worker lost
mid-run yields a failed outcome: the run is recorded `failed` and the next `mlic run` executes it again.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlic.core.io import atomic_write_bytes
from mlic.report.executors import EXECUTORS, slot_environments, visible_gpus
from mlic.report.notebook import NotebookTask, execute
from mlic.report.schedule import TOKEN_FILE, Interrupted

log = logging.getLogger(__name__)

#: files up to this size come back from a worker that does not share the suite's disk
MAX_FILE_BYTES = 64 * 2**20
#: CPU cores per notebook on an embedded CPU cluster
CORES_PER_CPU_WORKER = 4


def run_on_worker(task: NotebookTask, max_file_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """The task a Dask worker executes: the notebook into the suite folder if this machine shares it, else into a
    folder of the worker's whose files travel back in the outcome (`files`: relative path → bytes)."""
    suite_dir = Path(task.suite_dir)
    if _shares_disk(suite_dir, task.token):
        return execute(task, suite_dir / task.run)
    base = Path(os.environ.get("MLIC_WORKER_DIR") or tempfile.gettempdir()) / "mlic-suites"
    run_dir = base / suite_dir.name / task.run
    outcome = execute(task, run_dir)
    files, left = {}, []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if path.stat().st_size <= max_file_bytes:
            files[rel] = path.read_bytes()
        else:
            left.append(rel)
    outcome.update(files=files, left_on_worker=left, worker_dir=f"{socket.gethostname()}:{run_dir}")
    return outcome


def _shares_disk(suite_dir: Path, token: str) -> bool:
    try:
        return bool(token) and (suite_dir / TOKEN_FILE).read_text().strip() == token
    except OSError:
        return False


#: what a nanny puts into *this* process's environment before it spawns a worker (distributed's default sets
#: OMP_NUM_THREADS=1 and a fixed PYTHONHASHSEED here, which every later subprocess of the client would inherit):
#: the slots' own environments set the threads, the hash seed stays random
_PRE_SPAWN_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None,
                      "OPENBLAS_NUM_THREADS": None, "PYTHONHASHSEED": "random"}


def local_cluster(jobs: int | None = None, gpus_per_run: int | None = None) -> Any:
    """A cluster of this machine's processes: one worker per GPU slot, each pinned to its devices with
    `CUDA_VISIBLE_DEVICES`, or on CPUs `jobs` workers (default a worker per `CORES_PER_CPU_WORKER` cores) whose
    torch threads share the cores. A task whose worker dies is not retried on another (the suite records it failed
    and a rerun executes it)."""
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = visible_gpus()
    per_run = (1 if gpus else 0) if gpus_per_run is None else gpus_per_run
    cpu_workers = jobs or max(1, (os.cpu_count() or 1) // CORES_PER_CPU_WORKER)
    environments = slot_environments(jobs if per_run else cpu_workers, per_run, gpus=gpus)
    workers = {f"mlic-{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": env, "memory_limit": 0,
                                                        "silence_logs": logging.WARNING}}
               for i, env in enumerate(environments)}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.nanny.pre-spawn-environ": _PRE_SPAWN_ENVIRON}):
        cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard": False}},
                              silence_logs=logging.WARNING, name="mlic")
    log.info("local Dask cluster: %d worker(s) %s", len(workers), environments)
    return cluster


@EXECUTORS.register("dask")
class DaskExecutor:
    """Each run a `distributed` task, on an embedded `local_cluster` or the cluster at `scheduler`.

    Args:
        jobs: workers of the embedded cluster (on CPUs; on GPUs one per slot of `gpus_per_run` devices).
        gpus_per_run: GPUs each run needs; on an existing cluster, tasks ask for that many of the workers' `GPU`
            resource (start them with `--resources GPU=<n>`).
        scheduler: the address of an existing scheduler (`tcp://host:8786`); None starts the embedded cluster.
        share_disk: False sends every run's files back even where the worker shares the suite's disk.
        max_file_bytes: the largest file that comes back from a worker without the suite's disk.
    """

    def __init__(self, jobs: int | None = None, gpus_per_run: int | None = None, scheduler: str | None = None,
                 share_disk: bool = True, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        from distributed import Client

        self.cluster = None if scheduler else local_cluster(jobs, gpus_per_run)
        self.client = Client(scheduler or self.cluster)
        self.resources = {"GPU": gpus_per_run} if scheduler and gpus_per_run else None
        self.share_disk = share_disk
        self.max_file_bytes = max_file_bytes
        self._futures: dict[Any, NotebookTask] = {}

    def run(self, tasks: Sequence[NotebookTask], suite_dir: Path) -> Iterator[tuple[NotebookTask, dict[str, Any]]]:
        from distributed import as_completed

        batch = uuid.uuid4().hex[:8]
        self._futures = {}
        for task in tasks:
            sent = task if self.share_disk else _without_token(task)
            future = self.client.submit(run_on_worker, sent, self.max_file_bytes, key=f"mlic-{task.run}-{batch}",
                                        pure=False, resources=self.resources)
            self._futures[future] = task
        try:
            for future in as_completed(list(self._futures)):
                task = self._futures.pop(future)
                yield task, self._outcome(task, future, suite_dir)
        except KeyboardInterrupt:
            raise Interrupted(self.stop()) from None

    def _outcome(self, task: NotebookTask, future: Any, suite_dir: Path) -> dict[str, Any]:
        try:
            outcome = future.result()
        except Exception as err:  # KilledWorker, a lost connection: nothing of the run is trusted
            log.error("%s: its worker was lost (%s: %s)", task.run, type(err).__name__, err)
            return {"notebook": task.notebook, "parameters": task.parameters, "status": "failed", "cell": None,
                    "error": f"worker lost while the notebook ran ({type(err).__name__}: {err}); "
                             "run the suite again to retry it", "source": ""}
        files = outcome.pop("files", None)
        if files is not None:  # the worker does not share the suite's disk: its folder comes back
            run_dir = suite_dir / task.run
            for rel, data in files.items():
                atomic_write_bytes(run_dir / rel, data)
        return outcome

    def stop(self) -> list[tuple[NotebookTask, dict[str, Any]]]:
        """Cancel every task not finished; an embedded cluster is shut down (its workers and kernels end)."""
        self.client.cancel(list(self._futures), force=True)
        self._futures = {}
        self.close()
        return []

    def close(self) -> None:
        for closable in (self.client, self.cluster):
            if closable is not None:
                try:
                    closable.close()
                except Exception as err:  # closing after a lost worker may race its nanny's restart
                    log.debug("closing %s: %s", closable, err)
        self.cluster = None


def _without_token(task: NotebookTask) -> NotebookTask:
    from dataclasses import replace

    return replace(task, token="")
