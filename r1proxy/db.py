"""The SQLite database: one writer task, reads, close (opening the file: dbfile.py).

``Database`` owns the connections to ``r1proxy.db``: an aiosqlite connection for reads, a
point-read connection for the cache's key lookups, and a writer connection on its own thread.
Writes never block or fail a caller: ``submit()`` queues them and a single background task
runs them in batches, each batch one transaction in ONE trip to the writer thread (an await
per statement would make the writer crawl when the event loop is busy: every await waits for
a full loop iteration); while writes keep coming a batch starts at most every ``BATCH_INTERVAL_S``
(one commit for several accounting batches; the first write after a pause, and awaited writes,
go at once); errors are counted in ``write_errors`` and logged once per state change (storage.py); a file
deleted or replaced while serving is noticed by a periodic (device, inode) check and reopened.
A file that is not a database (or fails ``quick_check``, when the opener asks for it: the server
does only after a failed background check, see integrity.py) is moved aside at open and a fresh
one is started; a database held locked by another process raises ``DatabaseLocked``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from r1proxy.dbfile import (
    DatabaseLocked,
    DatabaseUnavailable,
    connect_reader,
    connect_writer,
    is_busy,
    is_corrupt,
    move_aside,
    point_reader,
    prepare,
)
from r1proxy.storage import WriteHealth, file_id

__all__ = ["Database", "DatabaseLocked", "DatabaseUnavailable", "move_aside"]

log = logging.getLogger(__name__)

Params = Sequence[Any]
# The writer starts a batch at most this often while writes keep coming (each batch is a commit).
BATCH_INTERVAL_S = 0.01
# Writes a batch of parameter rows itself (on the writer thread, inside the batch's transaction);
# returns a rowcount. For writes that are more than one statement, e.g. rollups.insert_requests.
RowsWriter = Callable[[sqlite3.Connection, list[Params]], int]


@dataclass(slots=True)
class _Op:
    sql: str
    params: Any  # one parameter sequence, or an iterable of them when many
    many: bool = False
    done: asyncio.Future[int] | None = None  # set for awaited writes: receives the rowcount
    seq: int = 0  # position in the writer's queue (see Database.wait_written)
    writer: RowsWriter | None = None  # runs the op's rows instead of executemany(sql, rows)


class Database:
    """The writer connection and task, a read connection, read helpers.

    Build with ``await Database.open(path)``. Reads use their own connection (WAL lets it
    read while the writer holds a transaction) so a get never waits behind a write batch;
    they see committed data, i.e. everything ``flush()`` or ``execute()`` has waited for.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, pool: ThreadPoolExecutor,
                 reader: aiosqlite.Connection, *, batch_size: int = 256) -> None:
        self.path = path
        self.recovered_from: Path | None = None  # where a corrupt file was moved at open
        self._conn = conn  # the writer's: touched only on the pool's one thread
        self._pool = pool
        self._reader = reader
        self._batch_size = batch_size
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._errors = WriteHealth()
        self.reopens = 0  # times the file was found deleted or replaced and opened again
        self.watch_s = 2.0  # how often the file's identity (and a full disk) is checked
        self.batch_interval_s = BATCH_INTERVAL_S
        self._busy_ms = 5000
        self._ident = file_id(path)
        self._closed = False
        self._point: sqlite3.Connection | None = None
        self._seq = 0  # writes queued so far
        self._written = 0  # the highest sequence number the writer has finished
        self._progress = asyncio.Event()  # set (and replaced) after every batch
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="r1proxy-db-writer")
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(), name="r1proxy-db-watch")

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout_ms: int = 5000, batch_size: int = 256,
                   check: bool = True, quick_check: bool = True) -> Database:
        """Open (creating parent dirs), recover from a corrupt file, migrate, start the writer.

        ``check`` sniffs the file header and moves a damaged file aside; with ``quick_check`` it
        also runs ``PRAGMA quick_check`` first (the server passes False unless integrity.py asks).

        Raises DatabaseLocked when another process holds the lock past busy_timeout_ms, and
        DatabaseUnavailable for other errors that moving the file aside would not fix.
        """
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnavailable(f"{path}: cannot create directory: {e.strerror}") from None
        moved: Path | None = None
        try:
            await asyncio.to_thread(prepare, path, busy_timeout_ms, check, quick_check)
        except sqlite3.Error as e:
            if is_busy(e):
                raise DatabaseLocked(f"{path}: database is locked by another process "
                                     f"(waited {busy_timeout_ms} ms)") from None
            if not is_corrupt(e):
                raise DatabaseUnavailable(f"{path}: cannot open database: {e}") from None
            moved = move_aside(path)
            log.warning("!!! DATABASE %s IS CORRUPT (%s): moved it to %s and started an EMPTY one "
                        "(cache and request log are gone; the old file is kept for inspection)",
                        path, e, moved)
            try:
                await asyncio.to_thread(prepare, path, busy_timeout_ms, False)
            except sqlite3.Error as e2:
                raise DatabaseUnavailable(f"{path}: cannot create a fresh database: {e2}") from None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1proxy-db-writer")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(pool, connect_writer, path, busy_timeout_ms)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        try:
            reader = await connect_reader(path, busy_timeout_ms)
        except BaseException:
            await loop.run_in_executor(pool, conn.close)
            pool.shutdown(wait=False)
            raise
        db = cls(path, conn, pool, reader, batch_size=batch_size)
        db.recovered_from = moved
        db._busy_ms = busy_timeout_ms
        db._point = point_reader(path)
        return db

    @property
    def write_errors(self) -> int:
        """Writes that failed and were skipped since open."""
        return self._errors.count

    @property
    def degraded(self) -> str:
        """Why storage is not working right now ("" when it is), for ``/health``."""
        return self._errors.degraded

    @property
    def last_event(self) -> str:
        return self._errors.event

    async def check_file(self) -> bool:
        """Whether the file is still the one opened; if it was deleted or replaced, log it and reopen."""
        now = file_id(self.path)
        if now == self._ident or self._closed:
            return True
        what = "deleted" if now is None else "replaced by another file"
        log.error("database %s was %s while serving; answers written since then are lost. Reopening it.",
                  self.path, what)
        await self._reopen()
        self.reopens += 1
        self._errors.event = (f"{time.strftime('%H:%M:%SZ', time.gmtime())}: the database file was {what} "
                              f"and has been reopened")
        return False

    async def _reopen(self) -> None:
        loop = asyncio.get_running_loop()

        def swap_writer() -> None:  # on the writer thread, between batches
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            try:
                prepare(self.path, self._busy_ms, True, False)
            except sqlite3.Error as e:
                if not is_corrupt(e):
                    raise
                log.error("database %s: the new file is not a database; moved it to %s", self.path,
                          move_aside(self.path))
                prepare(self.path, self._busy_ms, False, False)
            self._conn = connect_writer(self.path, self._busy_ms)

        await loop.run_in_executor(self._pool, swap_writer)
        old, self._reader = self._reader, await connect_reader(self.path, self._busy_ms)
        await old.close()
        if self._point is not None:
            self._point.close()
        self._point = point_reader(self.path)
        self._ident = file_id(self.path)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.watch_s)
            try:
                await self.check_file()
                if self._errors.full:  # a WAL that filled the disk keeps it full: give the space back
                    await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, OSError, DatabaseUnavailable) as e:
                log.debug("database check: %s", e)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def written(self) -> int:
        """The sequence number of the last write the writer finished (ran or skipped)."""
        return self._written

    @property
    def queued(self) -> int:
        """The sequence number of the last write queued: ``wait_written(db.queued)`` waits for what is
        queued now, not for writes queued later (``flush`` may never return under steady writes)."""
        return self._seq

    @property
    def pending(self) -> int:
        """Writes queued but not yet executed."""
        return self._queue.qsize()

    def submit(self, sql: str, params: Params = ()) -> int:
        """Queue one write; returns at once with its sequence number, never raises for database errors."""
        return self._enqueue(_Op(sql, params))

    def submit_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Queue one statement over many parameter rows (executemany)."""
        return self._enqueue(_Op(sql, list(rows), many=True))

    def submit_rows(self, writer: RowsWriter, rows: Iterable[Params], *, label: str) -> int:
        """Queue rows for ``writer`` (called on the writer thread within the batch's transaction;
        runs of the same writer in a batch are merged into one call). ``label`` names the write in
        error reports (like a statement's SQL)."""
        return self._enqueue(_Op(label, list(rows), many=True, writer=writer))

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one write through the writer, in order with queued ones; returns the rowcount.

        Unlike ``submit`` this waits and raises ``sqlite3.Error`` (also counted) to the caller.
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: database is closed")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._seq += 1
        self._queue.put_nowait(_Op(sql, params, done=done, seq=self._seq))
        return await done

    async def flush(self) -> None:
        """Wait until every write queued so far has been executed (or skipped on error)."""
        await self._queue.join()

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """First row of a query, or None (for queries that return one row or few)."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def fetchone_now(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """A primary-key lookup run right here on the event loop, for the cache's disk hits.

        Such a lookup costs tens of microseconds in SQLite's C code; a trip to the reader thread
        (queue, future, loop wake-up) costs several times that. WAL readers never wait for the
        writer, and busy_timeout bounds the rare wait on a checkpoint. Only for single-row reads.
        """
        if self._point is None:
            raise RuntimeError(f"{self.path}: database is closed")
        return self._point.execute(sql, params).fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """All rows of a query, fetched in one trip to the database thread."""
        return [tuple(row) for row in await self._reader.execute_fetchall(sql, params)]

    async def close(self) -> None:
        """Drain the queue, checkpoint the WAL into the main file, close both connections."""
        if self._closed:
            return
        self._closed = True
        self._progress.set()  # wake anyone in wait_written: nothing more will be written
        self._watch.cancel()
        await self.flush()
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("%s: WAL checkpoint at close failed: %s", self.path, e)
        if self._point is not None:
            self._point.close()
            self._point = None
        await self._reader.close()
        await loop.run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)

    def _enqueue(self, op: _Op) -> int:
        if self._closed:
            self._errors.failed(RuntimeError("database is closed"), op.sql)
            return 0
        self._seq += 1
        op.seq = self._seq
        self._queue.put_nowait(op)
        return op.seq

    async def wait_written(self, seq: int) -> None:
        """Wait until the write numbered ``seq`` (what ``submit`` returned) ran (or was skipped).

        Unlike ``flush`` this does not wait for writes queued later, so it returns under load."""
        while self._written < seq and not self._closed:
            ev = self._progress
            await ev.wait()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -self.batch_interval_s
        while True:
            batch = [await self._queue.get()]
            # Under load, batches start at most every batch_interval_s: one commit (and one trip
            # to the writer thread) for several accounting batches. After a pause, at once.
            wait = last + self.batch_interval_s - loop.time()
            if wait > 0 and batch[0].done is None and not self._closed:
                await asyncio.sleep(wait)
            last = loop.time()
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the writer must not die: skip and count the batch
                for op in batch:
                    self._errors.failed(e, op.sql)
                    self._resolve(op, error=e)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self._written = max(self._written, max(op.seq for op in batch))
                ev, self._progress = self._progress, asyncio.Event()
                ev.set()

    async def _run_batch(self, batch: list[_Op]) -> None:
        ops = self._coalesce(batch)
        outcomes = await asyncio.get_running_loop().run_in_executor(self._pool, self._write, batch, ops)
        for op, count, error in outcomes:
            if error is not None:
                self._errors.failed(error, op.sql)
                self._resolve(op, error=error)
            else:
                self._errors.succeeded(op.sql)
                self._resolve(op, count=count)

    def _write(self, batch: list[_Op], ops: list[_Op]) -> list[tuple[_Op, int, sqlite3.Error | None]]:
        """On the writer thread: the batch as one transaction; (op, rowcount, error) for each op."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # the lock first: no snapshot another process can make stale
            counts = [self._run(op) for op in ops]
            conn.execute("COMMIT")
            return [(op, n, None) for op, n in zip(ops, counts, strict=True)]
        except sqlite3.Error:
            # Some errors (disk full, I/O) roll the whole transaction back: redo op by op in
            # autocommit so the good writes land and only the bad ones are skipped.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            out: list[tuple[_Op, int, sqlite3.Error | None]] = []
            for op in batch:
                try:
                    out.append((op, self._run(op), None))
                except sqlite3.Error as e:
                    out.append((op, 0, e))
            return out

    def _coalesce(self, batch: list[_Op]) -> list[_Op]:
        """Merge runs of the same fire-and-forget statement into one executemany."""
        out: list[_Op] = []
        for op in batch:
            prev = out[-1] if out else None
            if (op.done is None and prev is not None and prev.done is None and prev.sql == op.sql
                    and prev.writer is op.writer):
                rows = op.params if op.many else [op.params]
                if prev.many:
                    prev.params.extend(rows)
                else:
                    out[-1] = _Op(prev.sql, [prev.params, *rows], many=True)
            else:
                out.append(_Op(op.sql, list(op.params) if op.many else op.params, op.many, op.done, writer=op.writer))
        return out

    def _run(self, op: _Op) -> int:
        if op.writer is not None:
            return op.writer(self._conn, op.params)
        cur = self._conn.executemany(op.sql, op.params) if op.many else self._conn.execute(op.sql, op.params)
        n = cur.rowcount
        cur.close()
        return n

    @staticmethod
    def _resolve(op: _Op, *, count: int = 0, error: BaseException | None = None) -> None:
        if op.done is None or op.done.done():
            return
        if error is not None:
            op.done.set_exception(error)
        else:
            op.done.set_result(count)
