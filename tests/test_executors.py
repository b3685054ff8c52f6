"""Where suites execute: each concurrent slot's environment (GPU pinning, threads), the local executor's kernels,
and Dask — a `LocalCluster` of two processes runs a suite with a failing entry, a worker killed mid-run leaves its run
failed and a rerun completes it, and a worker without the suite's disk sends the run's files back."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mlic.core.errors import ConfigError
from mlic.report import load_suite, run_suite
from mlic.report.executors import slot_environments
from tests.conftest import write_notebook


def _notebook(path: Path, parameters: str, body: str) -> None:
    write_notebook(path, parameters, body, imports="import os, time\nimport mlic")


# ---------------------------------------------------------------------------------------------------------------------
# Slots
# ---------------------------------------------------------------------------------------------------------------------
def test_gpu_slots_pin_their_own_devices_and_split_the_cores() -> None:
    slots = slot_environments(None, 2, gpus=["0", "1", "2", "3"], cores=16)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert {s["OMP_NUM_THREADS"] for s in slots} == {"8"}
    # the parent's own CUDA_VISIBLE_DEVICES names the devices a slot may get
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slot_environments(None, None, gpus=["3", "5"], cores=4)] == ["3", "5"]
    assert len(slot_environments(1, 1, gpus=["0", "1"], cores=4)) == 1  # --jobs caps the slots
    with pytest.raises(ConfigError, match="--gpus-per-run 3: this machine has 2 visible GPU"):
        slot_environments(None, 3, gpus=["0", "1"])


def test_cpu_slots_split_the_cores_and_a_single_slot_keeps_the_environment() -> None:
    slots = slot_environments(3, 0, gpus=[], cores=8)
    assert len(slots) == 3 and all(s == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                         "OPENBLAS_NUM_THREADS": "2"} for s in slots)
    assert slot_environments(None, None, gpus=[], cores=8) == [{}]
    assert slot_environments(2, 0, gpus=["0"], cores=2)[0]["CUDA_VISIBLE_DEVICES"] == ""  # CPU runs hide the GPU
    with pytest.raises(ConfigError, match="--jobs must be"):
        slot_environments(0, 0, gpus=[])


_ENVIRONMENT = "mlic.report.record(output_dir, threads=os.environ.get('OMP_NUM_THREADS'), pid=os.getpid())"


@pytest.mark.notebook
def test_local_kernels_get_their_slots_threads(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    _notebook(nbs / "env.ipynb", "output_dir: str = 'x'\nvalue: int = 0", _ENVIRONMENT)
    (nbs / "suites").mkdir()
    (nbs / "suites" / "env.yaml").write_text("name: env\nentries:\n  - notebook: env.ipynb\n"
                                             "    grid: {value: [1, 2]}\n")
    result = run_suite(nbs / "suites" / "env.yaml", reports_dir=tmp_path / "reports", notebooks_dir=nbs,
                       progress=False, workers=2)
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    for run in result.succeeded:
        assert json.loads((result.suite_dir / run / "results.json").read_text())["values"]["threads"] == expected
    assert len(result.succeeded) == 2


# ---------------------------------------------------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------------------------------------------------
_WORK = """
time.sleep(seconds)
if fail:
    raise ValueError("deliberate failure")
mlic.report.record(output_dir, metrics={"test": {"mAP": 10.0 * value}}, pid=os.getpid())
"""


def _suite(tmp_path: Path, entries: str) -> tuple[Path, Path]:
    nbs = tmp_path / "notebooks"
    _notebook(nbs / "work.ipynb", "output_dir: str = 'x'\nvalue: int = 1\nseconds: float = 0.0\nfail: bool = False",
              _WORK)
    (nbs / "suites").mkdir(exist_ok=True)
    suite = nbs / "suites" / "d.yaml"
    suite.write_text(f"name: d\nentries:\n{entries}")
    return nbs, suite


@pytest.mark.notebook
@pytest.mark.slow
def test_a_dask_cluster_runs_the_suite_records_the_failure_and_a_rerun_skips_the_successes(tmp_path: Path) -> None:
    nbs, suite = _suite(tmp_path, "  - notebook: work.ipynb\n    name: bad\n    parameters: {fail: true}\n"
                                  "  - notebook: work.ipynb\n    grid: {value: [1, 2, 3]}\n")
    assert len(load_suite(suite)[1]) == 4
    environment = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")}
    result = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False,
                       executor="dask", workers=2)
    assert result.failed == ["bad"] and result.succeeded == ["work__value-1", "work__value-2", "work__value-3"]
    status = json.loads((result.suite_dir / "bad" / "status.json").read_text())
    assert status["status"] == "failed" and "deliberate failure" in status["error"] and status["cell"] is not None
    index = (result.suite_dir / "index.md").read_text()
    assert "## Failures" in index and "| 30.00 |" in index
    # the cluster's nannies leave this process's environment (inherited by every later subprocess) as it was
    assert {k: os.environ.get(k) for k in environment} == {**environment, "PYTHONHASHSEED":
                                                           environment["PYTHONHASHSEED"] or "random"}
    workers = {json.loads((result.suite_dir / r / "status.json").read_text())["worker"] for r in result.succeeded}
    assert all(w.split(":")[1] != str(os.getpid()) for w in workers)  # executed by the cluster's processes

    again = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False, executor="dask",
                      workers=2)
    assert again.skipped == ["work__value-1", "work__value-2", "work__value-3"] and again.failed == ["bad"]


def _kill_worker_when_running(status_file: Path, killed: list[int], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("status") == "running":
            time.sleep(2.0)  # the kernel is executing the notebook's long cell by now
            pid = int(status["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


@pytest.mark.notebook
@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_the_run_failed_and_the_rerun_completes_it(tmp_path: Path) -> None:
    nbs, suite = _suite(tmp_path, "  - notebook: work.ipynb\n    name: slow\n    parameters: {seconds: 30}\n"
                                  "  - notebook: work.ipynb\n    name: quick\n")
    status_file = tmp_path / "reports" / "d" / "slow" / "status.json"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_worker_when_running, args=(status_file, killed), daemon=True)
    killer.start()
    result = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False,
                       executor="dask", workers=2)
    killer.join(timeout=5)
    assert killed, "the slow run never started"
    assert result.failed == ["slow"] and result.succeeded == ["quick"]
    status = json.loads(status_file.read_text())
    assert status["status"] == "failed" and "worker lost" in status["error"]
    assert "slow" not in set(__import__("mlic").report.collect(result.suite_dir)
                             .query("status == 'ok'")["run"])  # never shown as done

    again = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False, executor="dask",
                      workers=2, overrides={"seconds": 0})
    assert again.succeeded == ["slow"] and again.skipped == ["quick"]
    assert json.loads((result.suite_dir / "slow" / "results.json").read_text())["metrics"] == {"test": {"mAP": 10.0}}


_FILES = """
import pathlib
pathlib.Path(output_dir, "small.txt").write_text("kept")
pathlib.Path(output_dir, "checkpoints").mkdir(exist_ok=True)
pathlib.Path(output_dir, "checkpoints", "big.bin").write_bytes(b"0" * 50_000)
mlic.report.record(output_dir, metrics={"test": {"mAP": 50.0}})
"""


@pytest.mark.notebook
@pytest.mark.slow
def test_a_worker_without_the_suites_disk_sends_the_run_folder_back(tmp_path: Path) -> None:
    from mlic.report.dask_cluster import DaskExecutor
    from mlic.report.schedule import schedule

    nbs = tmp_path / "notebooks"
    _notebook(nbs / "files.ipynb", "output_dir: str = 'x'", _FILES)
    (nbs / "suites").mkdir()
    (nbs / "suites" / "f.yaml").write_text("name: f\nentries:\n  - notebook: files.ipynb\n")
    _, runs = load_suite(nbs / "suites" / "f.yaml")
    suite_dir = tmp_path / "reports" / "f"
    worker_dir = tmp_path / "worker"
    os.environ["MLIC_WORKER_DIR"] = str(worker_dir)  # inherited by the cluster's processes
    try:
        executor = DaskExecutor(jobs=1, share_disk=False, max_file_bytes=20_000)
        try:
            result = schedule(runs, suite_dir=suite_dir, notebooks=nbs, executor=executor)
        finally:
            executor.close()
    finally:
        del os.environ["MLIC_WORKER_DIR"]
    assert result.succeeded == ["files"]
    run_dir = suite_dir / "files"
    assert (run_dir / "small.txt").read_text() == "kept" and (run_dir / "files.ipynb").exists()
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == {"test": {"mAP": 50.0}}
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["left_on_worker"] == ["checkpoints/big.bin"]
    assert status["worker_dir"].endswith(str(worker_dir / "mlic-suites" / "f" / "files"))
    assert not (run_dir / "checkpoints" / "big.bin").exists()
    assert (worker_dir / "mlic-suites" / "f" / "files" / "checkpoints" / "big.bin").stat().st_size == 50_000


# ---------------------------------------------------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------------------------------------------------
def test_runs_wait_for_the_entries_they_come_after_and_summaries_come_last(tmp_path: Path) -> None:
    from mlic.report.notebook import NotebookTask
    from mlic.report.schedule import execution_waves
    from mlic.report.suite import SuiteRun

    def item(name: str, entry: str, after: tuple[str, ...] = (), summary: bool = False) -> tuple:
        params = {"suite_dir": "x"} if summary else {}
        return SuiteRun("n.ipynb", name, entry=entry, after=after), NotebookTask(name, "n.ipynb", "{}", params)

    tasks = [item("report", "report", summary=True), item("cams", "cams", ("cpsd",)),
             item("cpsd__k-3", "cpsd"), item("cpsd__k-5", "cpsd"), item("explain", "explain", ("cams", "quick")),
             item("quick", "quick"), item("skipped_dep", "skipped_dep", ("not_running",))]
    waves = [([t.run for t in wave], summary) for wave, summary in execution_waves(tasks)]
    assert waves == [(["cpsd__k-3", "cpsd__k-5", "quick", "skipped_dep"], False), (["cams"], False),
                     (["explain"], False), (["report"], True)]
    with pytest.raises(ConfigError, match="form a cycle"):
        execution_waves([item("a", "a", ("b",)), item("b", "b", ("a",))])


def test_after_must_name_other_entries(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nentries:\n  - notebook: a.ipynb\n  - notebook: b.ipynb\n    after: [c]\n")
    with pytest.raises(ConfigError, match=r"s.yaml: entry 'b': 'after' names \['c'\], which is not an entry"):
        load_suite(suite)


_PRODUCER = "time.sleep(2)\nopen(os.path.join(shared, 'made.txt'), 'w').write('made')\nmlic.report.record(output_dir)"
_CONSUMER = ("found = os.path.exists(os.path.join(shared, 'made.txt'))\n"
             "mlic.report.record(output_dir, metrics={'test': {'found': float(found)}})")


@pytest.mark.notebook
def test_with_two_jobs_a_run_starts_only_after_the_runs_it_reads(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    shared = tmp_path / "shared"
    shared.mkdir()
    _notebook(nbs / "producer.ipynb", "output_dir: str = 'x'\nshared: str = ''", _PRODUCER)
    _notebook(nbs / "consumer.ipynb", "output_dir: str = 'x'\nshared: str = ''", _CONSUMER)
    (nbs / "suites").mkdir()
    (nbs / "suites" / "o.yaml").write_text(
        f"name: o\ndefaults: {{shared: {shared}}}\nentries:\n  - notebook: producer.ipynb\n"
        "  - notebook: consumer.ipynb\n    after: [producer]\n")
    result = run_suite(nbs / "suites" / "o.yaml", reports_dir=tmp_path / "reports", notebooks_dir=nbs,
                       progress=False, workers=2)
    assert result.succeeded == ["producer", "consumer"]
    found = json.loads((result.suite_dir / "consumer" / "results.json").read_text())["metrics"]
    assert found == {"test": {"found": 1.0}}
