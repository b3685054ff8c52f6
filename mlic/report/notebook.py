"""One notebook execution under papermill: a `NotebookTask` (everything a run needs, picklable, so that it can run
in another process or on another machine) executed into a run folder, whose `status.json` says `running` meanwhile.

The task writes only the `running` status; the outcome it returns is recorded by the scheduler
(`mlic.report.schedule`), so that an execution whose process died never reads as finished.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic.core.io import atomic_write_json

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


@dataclass(frozen=True)
class NotebookTask:
    """One run of a suite, self-contained: the notebook's JSON travels with it.

    Attributes:
        run: the run's name (its folder under the suite).
        notebook: the notebook's file name (the executed copy keeps it).
        source: the notebook's JSON text.
        parameters: papermill parameters except `output_dir`, which is the folder the task executes into.
        kernel_name: the Jupyter kernel.
        cwd: the working directory of the kernel (None: the executing process's).
        suite_dir: the suite folder on the machine that scheduled the task.
        token: the suite folder's token (`.suite-token`): a worker that reads the same token there shares its disk.
    """

    run: str
    notebook: str
    source: str
    parameters: dict[str, Any] = field(default_factory=dict)
    kernel_name: str = "python3"
    cwd: str | None = None
    suite_dir: str = ""
    token: str = ""


def execute(task: NotebookTask, run_dir: Path, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Execute `task` into `run_dir`; returns its outcome (`status` ok or failed, the failing cell and error, the
    seconds, the parameters, where it ran). `env` is added to the kernel's environment (threads, GPUs)."""
    import nbformat
    import papermill as pm

    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**task.parameters, "output_dir": str(run_dir.resolve())}
    outcome: dict[str, Any] = {"notebook": task.notebook, "parameters": params,
                               "worker": f"{socket.gethostname()}:{os.getpid()}", "cell": None, "error": None}
    atomic_write_json(run_dir / STATUS_FILE, {**outcome, "status": "running",
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    started = time.perf_counter()
    cwd = task.cwd if task.cwd and Path(task.cwd).is_dir() else os.getcwd()  # a worker may lack the client's folder
    try:
        notebook = nbformat.reads(task.source, as_version=4)
        pm.execute_notebook(notebook, str(run_dir / Path(task.notebook).name), parameters=params,
                            kernel_name=task.kernel_name, cwd=cwd, progress_bar=False,
                            kernel_manager_class=tracked_kernel_manager(tuple(sorted((env or {}).items()))))
        outcome["status"] = "ok"
    except pm.PapermillExecutionError as err:
        outcome.update(status="failed", error=f"{err.ename}: {err.evalue}", cell=err.exec_count,
                       source=err.source[-2000:])
        log.error("%s failed in cell %s: %s: %s", task.run, err.exec_count, err.ename, err.evalue)
    except Exception as err:  # a notebook that cannot start (bad JSON, missing kernel) must not stop the suite
        outcome.update(status="failed", error=f"{type(err).__name__}: {err}", source="")
        log.error("%s could not run: %s", task.run, err)
    outcome["seconds"] = round(time.perf_counter() - started, 2)
    return outcome


def read_source(notebook: Path) -> str:
    """The notebook's JSON text, checked to be JSON (a broken notebook fails its own run, not the suite)."""
    text = notebook.read_text(encoding="utf-8")
    json.loads(text)
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Kernels this process started, so that Ctrl-C can reach them
# ---------------------------------------------------------------------------------------------------------------------
_KERNELS: weakref.WeakSet[Any] = weakref.WeakSet()
_KERNELS_GUARD = threading.Lock()


@functools.cache
def tracked_kernel_manager(env: tuple[tuple[str, str], ...] = ()) -> type:
    """nbclient's kernel manager, registering each kernel it starts (for `signal_kernels`) and adding `env` to the
    kernel's environment."""
    from jupyter_client.manager import AsyncKernelManager

    extra = dict(env)

    class TrackedKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
            if extra:
                kw["env"] = {**(kw.get("env") or os.environ), **extra}
            return await super()._async_pre_start_kernel(**kw)

        async def _async_post_start_kernel(self, **kw: Any) -> None:
            await super()._async_post_start_kernel(**kw)
            with _KERNELS_GUARD:
                _KERNELS.add(self)

    return TrackedKernelManager


def signal_kernels(signum: int) -> None:
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
