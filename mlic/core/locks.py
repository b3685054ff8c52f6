"""One owner per folder: a lock file that names its owner, held with an operating-system lock while the owner lives.

A training run writes many files into its folder (history, checkpoints, predictions); two processes writing the same
folder interleave them silently. `FolderLock` makes the first process the folder's owner and fails the second one
at once with `FolderInUseError` ("<folder> is used by process <pid> on <host> since <time>").

How it decides:

- The lock file holds the owner's pid, host and start time as one JSON line. A POSIX `flock` on it is held for the
  owner's life; the kernel drops it when the process ends, however it ends (`kill -9` included), so the file left
  by a dead process is *stale* and the next process takes it over (with a log line naming the dead owner).
- A lock file that names another host is never taken over: whether that process lives cannot be told from here
  (the message says which file to delete once it has ended).
- Where `fcntl` is missing the file is created exclusively and a stale one is recognised by its pid being gone.

The lock is re-entrant within one thread (the engine's `fit` and `Trainer.fit` both take it) and released on exit,
also after an exception; the folder itself is removed again if the lock created it and nothing else was written.
No well-kept library records the owner for the message (`filelock` locks, but cannot say who holds a lock), which is
why this is written here on top of `fcntl`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlic.core.errors import FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_HELD: dict[Path, tuple[int, int, int, Owner]] = {}  # lock file -> (thread id, depth, descriptor, owner) here
_HELD_GUARD = threading.Lock()


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: process id, host name and the time the lock was taken (local time, ISO format)."""

    pid: int
    host: str
    since: str

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner recorded in a lock file's text (None if the text is empty or not a complete record)."""
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None

    def is_alive(self) -> bool:
        """Whether the owner is a live process on this host (True when the host is another one: cannot tell)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a live process of another user
            return True
        return True


def _in_use(folder: Path, owner: Owner | None, lock_file: Path) -> FolderInUseError:
    if owner is None:
        return FolderInUseError(f"{folder} is used by another process (its lock {lock_file} is being written); "
                                "wait for it to finish or choose another output folder")
    hint = ("wait for it to finish or choose another output folder" if owner.host == socket.gethostname() else
            f"if that process has ended, delete {lock_file}; else choose another output folder")
    return FolderInUseError(f"{folder} is used by process {owner.pid} on {owner.host} since {owner.since}; {hint}")


def _read_owner(fd: int, *, patience: float = 0.0) -> Owner | None:
    """The record in an open lock file; waits up to `patience` seconds for an owner that is still writing it."""
    deadline = time.monotonic() + patience
    while True:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        owner = Owner.parse(text)
        if owner is not None or time.monotonic() >= deadline:
            return owner
        time.sleep(0.02)


def _write_owner(fd: int, owner: Owner) -> None:
    data = owner.to_json().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)  # one write of a few bytes: readers see the whole record or nothing (and retry)
    os.fsync(fd)


class FolderLock:
    """Exclusive ownership of `folder` by this process, through the lock file `lock_file` inside it.

    Use as a context manager; `FolderInUseError` when a live process holds it.
    """

    def __init__(self, folder: str | Path, lock_file: str | Path) -> None:
        self.folder = Path(folder)
        self.lock_file = Path(lock_file)
        self._created_folder = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _key(self) -> Path:
        return self.lock_file.absolute()

    def acquire(self) -> None:
        """Take the lock (re-entrant in one thread); `FolderInUseError` naming the owner otherwise."""
        key = self._key()
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                thread, depth, fd, owner = held
                if thread != threading.get_ident():  # another thread of this process
                    raise _in_use(self.folder, owner, self.lock_file)
                _HELD[key] = (thread, depth + 1, fd, owner)
                return
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = Owner.current()
        fd = self._acquire_flock(owner) if fcntl is not None else self._acquire_exclusive(owner)
        with _HELD_GUARD:
            _HELD[key] = (threading.get_ident(), 1, fd, owner)

    def _acquire_flock(self, owner: Owner) -> int:
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd, patience=1.0)
                os.close(fd)
                raise _in_use(self.folder, owner, self.lock_file) from None
            try:  # the previous owner may have removed the file between our open and our flock: lock the new one
                same = os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_owner(fd)
            if previous is not None and previous.host != socket.gethostname():
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise _in_use(self.folder, previous, self.lock_file)
            if previous is not None and previous.pid != os.getpid():
                log.warning("%s: taking over the lock of process %d (since %s), which has ended", self.folder,
                            previous.pid, previous.since)
            _write_owner(fd, owner)
            return fd

    def _acquire_exclusive(self, owner: Owner) -> int:  # pragma: no cover - platforms without fcntl
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.lock_file, "rb") as handle:
                    owner = Owner.parse(handle.read().decode(errors="replace"))
                if owner is None or owner.is_alive():
                    raise _in_use(self.folder, owner, self.lock_file) from None
                log.warning("%s: removing the stale lock of process %d, which has ended", self.folder, owner.pid)
                self.lock_file.unlink(missing_ok=True)
                continue
            _write_owner(fd, owner)
            return fd
        raise _in_use(self.folder, None, self.lock_file)

    def release(self) -> None:
        """Give the lock up (the outermost release removes the lock file, and the folder if the lock made it and it
        is empty)."""
        key = self._key()
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            thread, depth, fd, owner = held
            if depth > 1:
                _HELD[key] = (thread, depth - 1, fd, owner)
                return
            del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            self.lock_file.unlink()  # while still locked: nobody can take the old file over in between
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty: a run that failed before writing anything leaves nothing


def owner_of(lock_file: str | Path) -> Owner | None:
    """The owner recorded in `lock_file` (None if absent or unreadable); for messages and tests."""
    try:
        return Owner.parse(Path(lock_file).read_text())
    except OSError:
        return None
