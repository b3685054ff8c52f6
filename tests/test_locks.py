"""One owner per run folder: a second process is refused naming the owner, a dead owner's lock is taken over, the
lock goes away on exit (after an exception too), and two `mlic train` runs into one folder cannot both run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlic.core.errors import FolderInUseError
from mlic.core.io import read_jsonl
from mlic.core.locks import FolderLock, owner_of
from mlic.runs import Run

ROOT = Path(__file__).resolve().parent.parent

_HOLDER = """
import sys, time
from mlic.runs import Run
lock = Run(sys.argv[1]).lock()
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1"}


def _hold_in_subprocess(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_owner_is_refused_naming_the_pid_the_host_and_the_time(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    proc = _hold_in_subprocess(folder)
    try:
        with pytest.raises(FolderInUseError) as err:
            Run(folder).lock().acquire()
        message = str(err.value)
        assert message.startswith(f"{folder} is used by process {proc.pid} on {socket.gethostname()} since ")
        recorded = owner_of(Run(folder).lock_file)
        assert recorded is not None and recorded.pid == proc.pid and recorded.since in message
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "run"
    proc = _hold_in_subprocess(folder)
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the lock file stays, naming the dead process
    proc.wait()
    assert owner_of(Run(folder).lock_file).pid == proc.pid
    with Run(folder).lock():
        assert owner_of(Run(folder).lock_file).pid == os.getpid()
    assert f"process {proc.pid}" in caplog.text and "has ended" in caplog.text
    assert not Run(folder).lock_file.exists()


def test_the_lock_is_released_after_an_exception_and_an_empty_folder_it_made_is_removed(tmp_path: Path) -> None:
    made = tmp_path / "made"
    with pytest.raises(RuntimeError, match="boom"), Run(made).lock():
        assert Run(made).lock_file.is_file()
        raise RuntimeError("boom")
    assert not made.exists()  # a run that failed before writing anything leaves no folder
    kept = tmp_path / "kept"
    with Run(kept).lock():
        (kept / "config.yaml").write_text("x: 1\n")
    assert not Run(kept).lock_file.exists() and (kept / "config.yaml").exists()
    with Run(kept).lock():  # free again
        pass


def test_re_entrant_in_its_thread_refused_in_another(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            Run(folder).lock().acquire()
        except FolderInUseError as err:
            errors.append(err)

    with Run(folder).lock(), Run(folder).lock():  # the engine's fit and Trainer.fit both take it
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert Run(folder).lock_file.exists()
    assert len(errors) == 1 and f"process {os.getpid()}" in str(errors[0])
    assert not Run(folder).lock_file.exists()


def test_a_lock_naming_another_host_is_never_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = Run(folder).lock_file
    lock_file.write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "since": "2026-01-01 10:00:00"}))
    with pytest.raises(FolderInUseError, match="process 4242 on elsewhere.example since 2026-01-01 10:00:00") as err:
        FolderLock(folder, lock_file).acquire()
    assert f"delete {lock_file}" in str(err.value)
    assert owner_of(lock_file).host == "elsewhere.example"  # left as it was


def _train_command(scenes_root: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "mlic", "train", "--data-root", str(scenes_root), "--image-size", "32",
            "--batch-size", "16", "--backbone", "test_efficientnet", "--no-pretrained", "--no-progress",
            "--epochs", str(epochs), "--output-dir", str(out)]


@pytest.mark.slow
def test_two_train_runs_into_one_folder_the_second_fails_at_once(scenes_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(_train_command(scenes_root, out, 40), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not Run(out).lock_file.exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.05)
        started = time.perf_counter()
        second = subprocess.run(_train_command(scenes_root, out, 3), env=_env(), capture_output=True, text=True,
                                timeout=120)
        took = time.perf_counter() - started
        assert second.returncode == 1, "the second run was not refused (did the first one end before?)"
        errors = [line for line in second.stderr.splitlines() if line.startswith("mlic: error:")]
        assert errors == [f"mlic: error: {out} is used by process {first.pid} on {socket.gethostname()} since "
                          f"{owner_of(Run(out).lock_file).since}; wait for it to finish or choose another output "
                          "folder"]
        assert "Traceback" not in second.stderr
        assert took < 30  # at once: refused before any data or model is built (the process start is most of it)
        assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    assert [row["epoch"] for row in read_jsonl(Run(out).history_file)] == list(range(40))  # one run's rows only
    final = Run(out).final
    assert final["epochs_run"] == 40 and Run(out).state("last")["epoch"] == 39
    assert Run(out).config.train.epochs == 40
    assert not Run(out).lock_file.exists()
