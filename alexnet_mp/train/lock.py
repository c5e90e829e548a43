"""One run per folder: an advisory lock held by the run for its whole life.

``fcntl.flock`` on ``<run>/.lock``: the kernel releases it when the holder exits in any way
(normal exit, exception, SIGKILL, a crash), so a lock is never stale. The file also records
who holds it, for the message the second run prints.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and say so once
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    """Holds ``<run_dir>/.lock`` until :meth:`release` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a ``ConfigError`` naming the run that holds it."""
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"the run folder {self.path.parent} is in use by another run ({holder}); two runs with one "
                "[job] name would overwrite each other's checkpoints and TensorBoard logs. Wait for it to "
                "finish or stop it (the same command then resumes), or choose another name with "
                "--set job.name=<new>.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
