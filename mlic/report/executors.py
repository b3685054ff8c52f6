"""Where a suite's notebooks execute: the `EXECUTORS` registry, the local executor (threads, one kernel each), and
the environment of each concurrent slot (GPU pinning, torch threads) that every executor shares.

Two torch processes with default threads on the same cores slow each other down many times over, so concurrent
notebooks split the cores (`OMP_NUM_THREADS` and friends); on GPUs each slot sees only its own devices
(`CUDA_VISIBLE_DEVICES`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlic.core.errors import ConfigError
from mlic.core.registry import Registry
from mlic.report.notebook import NotebookTask, execute, signal_kernels
from mlic.report.schedule import Executor, Interrupted

log = logging.getLogger(__name__)

EXECUTORS: Registry[Executor] = Registry("executor")

#: how long interrupted notebooks get to stop before their kernels are killed
INTERRUPT_GRACE_SECONDS = 30.0
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` would name them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def slot_environments(jobs: int | None, gpus_per_run: int | None = None, *, gpus: Sequence[str] | None = None,
                      cores: int | None = None) -> list[dict[str, str]]:
    """One environment per concurrent notebook.

    With GPUs (`gpus_per_run` defaults to 1 where there are any) each slot gets its own `gpus_per_run` devices and
    there are as many slots as they allow (at most `jobs`); on CPUs there are `jobs` slots (default 1). Each slot's
    torch threads are the cores divided by the slots. A single CPU slot keeps the environment as it is.

    Raises:
        ConfigError: more GPUs per run than the machine has, or fewer than one slot.
    """
    gpus = list(visible_gpus() if gpus is None else gpus)
    cores = cores or os.cpu_count() or 1
    per_run = (1 if gpus else 0) if gpus_per_run is None else gpus_per_run
    if per_run < 0 or (jobs is not None and jobs < 1):
        raise ConfigError(f"--jobs must be ≥ 1 and --gpus-per-run ≥ 0, got {jobs} and {gpus_per_run}")
    if per_run > len(gpus):
        raise ConfigError(f"--gpus-per-run {per_run}: this machine has {len(gpus)} visible GPU(s)")
    if per_run:
        slots = len(gpus) // per_run if jobs is None else min(jobs, len(gpus) // per_run)
        threads = _threads(max(1, cores // slots))
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per_run:(i + 1) * per_run]), **threads}
                for i in range(slots)]
    slots = jobs or 1
    hidden = {"CUDA_VISIBLE_DEVICES": ""} if gpus else {}  # --gpus-per-run 0 on a GPU machine: CPU runs
    if slots == 1:
        return [hidden]
    return [{**hidden, **_threads(max(1, cores // slots))} for _ in range(slots)]


def _threads(n: int) -> dict[str, str]:
    return {name: str(n) for name in _THREAD_VARIABLES}


@EXECUTORS.register("local")
class LocalExecutor:
    """Notebooks on this machine, `jobs` at once, each in its own kernel with its slot's environment.

    The main thread only waits, so that Ctrl-C reaches it at once; the kernels run in their own process sessions,
    out of reach of the terminal's signal, so they are interrupted from here.
    """

    def __init__(self, jobs: int | None = None, gpus_per_run: int | None = None) -> None:
        self.environments = slot_environments(jobs, gpus_per_run)
        self._futures: dict[concurrent.futures.Future, NotebookTask] = {}
        self._reported: set[concurrent.futures.Future] = set()

    def run(self, tasks: Sequence[NotebookTask], suite_dir: Path) -> Iterator[tuple[NotebookTask, dict[str, Any]]]:
        slots: queue.Queue[dict[str, str]] = queue.Queue()
        for env in self.environments:
            slots.put(env)

        def one(task: NotebookTask) -> dict[str, Any]:
            env = slots.get()
            try:
                return execute(task, suite_dir / task.run, env=env)
            finally:
                slots.put(env)

        pool = concurrent.futures.ThreadPoolExecutor(len(self.environments))
        self._futures = {pool.submit(one, task): task for task in tasks}
        self._reported = set()
        order = {id(task): i for i, task in enumerate(tasks)}
        pending = set(self._futures)
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: order[id(self._futures[f])]):
                    self._reported.add(future)
                    yield self._futures[future], future.result()
        except KeyboardInterrupt:
            raise Interrupted(self.stop()) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> list[tuple[NotebookTask, dict[str, Any]]]:
        """Cancel the runs not started, interrupt the running kernels (killed after the grace period or at a second
        Ctrl-C); the outcomes of the runs that were running."""
        pending = {f for f in self._futures if f not in self._reported}
        for future in pending:
            future.cancel()  # not started yet: never starts
        running = {f for f in pending if not f.cancelled()}
        deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
        waiting = set(running)
        try:
            while waiting and time.monotonic() < deadline:
                signal_kernels(signal.SIGINT)
                _, waiting = concurrent.futures.wait(waiting, timeout=2.0)
        except KeyboardInterrupt:
            pass
        if waiting:
            log.warning("killing the kernels of %d notebook(s) that did not stop", len(waiting))
            signal_kernels(signal.SIGKILL)
            concurrent.futures.wait(waiting, timeout=INTERRUPT_GRACE_SECONDS)
        self._reported |= running
        return [(self._futures[f], f.result()) for f in running if f.done() and f.exception() is None]

    def close(self) -> None:
        self._futures = {}
