"""One run per stage folder: an advisory ``flock`` on ``DIR/.lock``.

Why flock: the kernel drops the lock when the holding process dies (also on ``kill -9``),
so a stale lock from a killed run is recovered without any pid/host guessing.  The lock
file keeps the holder's pid, host and start time only to write a helpful message; it is
never deleted (deleting a flocked file races with the next locker).  On NFS (a SLURM
cluster's shared disk) Linux maps flock to POSIX byte-range locks, which NFSv4 supports.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pipeline.config import ConfigError

LOCK_NAME = ".lock"


class StageLocked(ConfigError):
    """Another run holds the stage folder (reported as one line, exit status 2)."""


class StageLock:
    """``with StageLock(dir):`` — exclusive, non-blocking; raises :class:`StageLocked`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StageLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StageLocked(f"{self.folder} is in use by another run ({holder}); "
                              "wait for it to finish or stop it") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "StageLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
