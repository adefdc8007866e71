"""The writer's batches: under a stream of writes one batch (one commit) per ``batch_interval_s``;
the first write after a pause and an awaited write go at once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.db import Database

INSERT = "INSERT INTO key_usage (key_name, day, requests, tokens, usd) VALUES (?, '2026-11-27', 1, 0, 0)"


async def _counting(path: Path, monkeypatch: pytest.MonkeyPatch, interval: float) -> tuple[Database, list[int]]:
    db = await Database.open(path)
    db.batch_interval_s = interval
    sizes: list[int] = []
    write = db._write

    def counted(batch: list[Any], ops: list[Any]) -> Any:
        sizes.append(len(batch))
        return write(batch, ops)

    monkeypatch.setattr(db, "_write", counted)
    return db, sizes


async def test_writes_that_keep_coming_share_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, sizes = await _counting(tmp_path / "r.db", monkeypatch, interval=2.0)
    try:
        db.submit(INSERT, ("first",))
        await db.flush()  # after a pause: at once, though the interval is 2 s
        assert sizes == [1]
        for i in range(5):  # these arrive within the interval: they wait for the next batch together
            db.submit(INSERT, (f"k{i}",))
            await asyncio.sleep(0.01)
        assert sizes == [1]
        await asyncio.wait_for(db.flush(), 10)
        assert sizes == [1, 5]
    finally:
        await db.close()


async def test_an_awaited_write_does_not_wait_for_the_interval(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db, sizes = await _counting(tmp_path / "r.db", monkeypatch, interval=60.0)
    try:
        db.submit(INSERT, ("first",))
        await db.flush()
        assert await asyncio.wait_for(db.execute(INSERT, ("awaited",)), 10) == 1
        assert sizes == [1, 1]
    finally:
        await db.close()


async def test_a_batch_takes_the_write_lock_first(tmp_path: Path) -> None:
    """A batch whose first statement reads (rollups.amend_requests does) must not lose its snapshot
    to another process's commit (server.workers share the file): the batch holds the write lock from
    BEGIN, so it is written once, in its transaction, not failed and redone statement by statement."""
    path = tmp_path / "r.db"
    db = await Database.open(path)
    calls: list[int] = []

    def read_then_write(conn: sqlite3.Connection, rows: list[Any]) -> int:
        calls.append(len(rows))
        conn.execute("SELECT COUNT(*) FROM key_usage").fetchone()
        if len(calls) == 1:  # another process commits right after this batch's first read
            rival = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                rival.execute(INSERT, ("rival",))
            except sqlite3.OperationalError:
                pass  # locked: the batch holds the write lock, as it should
            finally:
                rival.close()
        return conn.executemany(INSERT, rows).rowcount

    try:
        db.submit_rows(read_then_write, [("a",), ("b",)], label="read then write")
        await db.flush()
        assert calls == [2] and db.write_errors == 0
        assert await db.fetchone("SELECT COUNT(*) FROM key_usage WHERE key_name IN ('a', 'b')") == (2,)
    finally:
        await db.close()
