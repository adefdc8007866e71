"""The state directory's lock: one ``r1proxy serve`` per state directory.

Two servers on one database would each batch writes and evict against totals the other does
not see. ``acquire`` takes an exclusive ``flock`` on ``<state_dir>/serve.lock`` (released by the
kernel when the process ends, however it ends) and writes the holder's pid into it; a second
server gets ``StateLocked`` naming that pid. Lifted when a multi-process mode exists.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "serve.lock"


class StateLocked(Exception):
    """Another process holds the state directory."""


class StateLock:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def acquire(state_dir: Path) -> StateLock:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateLocked(f"another r1proxy (pid {holder}) is already serving from {state_dir}; "
                          "stop it first, or give this one its own server.state_dir") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path)
