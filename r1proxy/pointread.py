"""The cache's point reads: primary-key lookups run inline on the event loop, consecutive ones in one
read snapshot for as long as nothing is committed.

Every SQLite read transaction in WAL mode takes and drops a read mark in the -shm file and checks the
files (``fcntl`` and ``stat`` calls, 2-6 µs each on a VM; bench/ANALYSIS.md). Point reads share one
read transaction instead, under these rules, so that a read sees exactly what a read in a transaction
of its own would have seen, and the WAL is never held back:

- a read first compares the WAL-index header (the first 48 bytes of the -shm file, which every commit
  of any process rewrites: https://www.sqlite.org/walformat.html) with its value when the snapshot
  began; if anything was committed since, the snapshot is ended and a fresh one begun;
- the snapshot ends before every trip to this process's writer thread and none starts while one is
  under way (``writing``), so the writer's checkpoint (right after its commit) never finds this
  connection on an older snapshot;
- it ends ``SNAPSHOT_S`` after it began at the latest (a timer: also when no read follows), so
  another process's checkpoint is held back at most that long.

Where the header cannot be read (no -shm file, an unknown WAL-index version) every read is a
transaction of its own, as before.
"""

from __future__ import annotations

import asyncio
import mmap
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1proxy.dbfile import point_reader

SNAPSHOT_S = 0.05  # the longest one read snapshot is kept (how long it may hold a checkpoint back)
_HEADER = 48  # bytes of the WAL-index header's first copy
_WAL_INDEX_VERSION = 3007000  # its iVersion field, the same since SQLite 3.7.0


def _map_header(path: Path) -> mmap.mmap | None:
    """A read-only shared mapping of the WAL-index header in ``path``'s -shm file, or None."""
    try:
        with open(f"{path}-shm", "rb") as f:
            m = mmap.mmap(f.fileno(), _HEADER, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    if struct.unpack_from("=I", m, 0)[0] != _WAL_INDEX_VERSION:
        m.close()
        return None
    return m


class PointReader:
    """One read-only connection for inline single-row reads (event-loop thread only)."""

    def __init__(self, path: Path, snapshot_s: float = SNAPSHOT_S) -> None:
        self._path = path
        self._conn = point_reader(path)
        self.snapshot_s = snapshot_s
        self._shm: mmap.mmap | None = None
        self._mapped = False  # tried to map the header (once per file)
        self._seen = b""  # the header when the snapshot began
        self._open = False  # a read transaction is open (BEGIN was run)
        self._timer: asyncio.TimerHandle | None = None
        self._writing = 0  # trips to the writer thread under way: no snapshot meanwhile

    @property
    def in_snapshot(self) -> bool:
        return self._open

    def fetchone(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None:
        """The first row of ``sql`` as of now (in the current snapshot while nothing was committed)."""
        if self._open:
            assert self._shm is not None
            if self._shm[:_HEADER] != self._seen:  # a commit since the snapshot began
                self.end()
                self._begin()
        elif not self._writing and self.snapshot_s > 0:
            self._begin()
        try:
            row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error:
            self.end()
            raise
        return row

    def end(self) -> None:
        """End the snapshot now (the next read starts a fresh one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._open:
            self._open = False
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a trip to the writer thread: no snapshot is held or started until it is over."""
        self.end()
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    def reopen(self, path: Path) -> None:
        """A new connection to ``path`` (the file was replaced)."""
        self.close()
        self._path = path
        self._conn = point_reader(path)

    def close(self) -> None:
        self.end()
        self._conn.close()
        if self._shm is not None:
            self._shm.close()
        self._shm, self._mapped = None, False

    def _begin(self) -> None:
        if not self._mapped:
            self._mapped = True
            self._shm = _map_header(self._path)
        if self._shm is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: no timer would end it
            return
        self._seen = self._shm[:_HEADER]  # before BEGIN: a commit in between only renews it once more
        self._conn.execute("BEGIN")
        self._open = True
        self._timer = loop.call_later(self.snapshot_s, self.end)
