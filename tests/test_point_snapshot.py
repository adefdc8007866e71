"""The cache's point reads share a read snapshot while nothing is committed (r1proxy/pointread.py), and
that never costs correctness: whatever this process or another one committed (put, replace, delete,
purge, eviction, a dictionary) is seen by the next read, the snapshot ends by itself when reads stop
(another connection's checkpoint then completes), none is held while this process's writer runs, and
the WAL keeps restarting under reads and writes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from r1proxy import pointread
from r1proxy.cache import CacheEntry
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database

FAR = 4e9  # expires in 2096: eviction of what expired leaves it alone


def entry(key: str, text: str = "answer", *, created_at: float = 1000.0, expires_at: float = 2000.0,
          model: str = "m") -> CacheEntry:
    doc = {"id": key, "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    return CacheEntry(key=key, completion=doc, created_at=created_at, expires_at=expires_at, model=model)


async def committed(tier: SqliteTier) -> None:
    """Every put's row landed (reads come from the file, not from the pending map)."""
    await tier.settle()
    while tier._pending:
        await asyncio.sleep(0.001)


async def test_point_reads_share_a_snapshot_until_anything_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    tier = SqliteTier(db)
    other = sqlite3.connect(path, isolation_level=None, timeout=1)  # another process
    statements: list[str] = []
    try:
        await tier.put(entry("v1:a", expires_at=FAR))
        await committed(tier)
        assert db._point is not None
        db._point._conn.set_trace_callback(statements.append)
        for _ in range(3):
            got = await tier.get("v1:a")
            assert got is not None and got.hits == 0
            assert await tier.get("v1:nope") is None
        assert db.in_read_snapshot and statements.count("BEGIN") == 1  # six reads, one read transaction
        other.execute("UPDATE cache_entries SET hits = 7 WHERE key = 'v1:a'")  # committed elsewhere
        got = await tier.get("v1:a")
        assert got is not None and got.hits == 7  # seen by the very next read
        assert statements.count("BEGIN") == 2
        other.execute("DELETE FROM cache_entries WHERE key = 'v1:a'")
        assert await tier.get("v1:a") is None
        await asyncio.sleep(pointread.SNAPSHOT_S * 2 + 0.05)
        assert not db.in_read_snapshot  # ended by its timer: nothing holds the WAL back
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0  # another process's checkpoint is not held back
    finally:
        other.close()
        await tier.close()
        await db.close()


async def test_what_this_process_wrote_is_seen_by_the_next_point_read(tmp_path: Path) -> None:
    """A replaced, deleted, purged or evicted entry is never served from an older snapshot."""
    db = await Database.open(tmp_path / "r1proxy.db")
    tier = SqliteTier(db)
    try:
        await tier.put(entry("v1:a", "first"))
        await committed(tier)
        got = await tier.get("v1:a")
        assert got is not None and got.completion["choices"][0]["message"]["content"] == "first"
        assert db.in_read_snapshot

        await tier.put(entry("v1:a", "second"))  # replaced
        await committed(tier)
        got = await tier.get("v1:a")
        assert got is not None and got.completion["choices"][0]["message"]["content"] == "second"

        assert await tier.delete("v1:a") is True  # deleted
        assert await tier.get("v1:a") is None

        await tier.put(entry("v1:b", model="gone"))
        await tier.put(entry("v1:c", created_at=10.0))
        await committed(tier)
        assert await tier.get("v1:b") is not None and await tier.get("v1:c") is not None
        assert await tier.purge(model="gone") == 1  # purged by model
        assert await tier.get("v1:b") is None
        assert await tier.purge(older_than_s=100, now=1000.0) == 1  # purged by age
        assert await tier.get("v1:c") is None

        await tier.put(entry("v1:d", expires_at=500.0))  # expired: the tier still returns it (stale-if-error)
        await committed(tier)
        assert await tier.get("v1:d") is not None
        assert await tier.evict(now=1000.0) == 1  # eviction of what expired
        assert await tier.get("v1:d") is None

        await tier.put(entry("v1:e"))
        await committed(tier)
        assert await tier.get("v1:e") is not None
        assert await tier.purge(all=True) == 1  # emptied
        assert await tier.get("v1:e") is None
    finally:
        await tier.close()
        await db.close()


async def test_no_snapshot_is_held_while_the_writer_runs(tmp_path: Path) -> None:
    """The writer's checkpoint (after its commit) must never find the point reader on an older snapshot."""
    db = await Database.open(tmp_path / "r1proxy.db")
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def slow_writer(conn: sqlite3.Connection, rows: list[Any]) -> int:
        started.set()
        release.wait(5)
        return 0

    try:
        db.fetchone_now("SELECT 1")
        assert db.in_read_snapshot
        db.submit_rows(slow_writer, [()], label="slow")
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        assert not db.in_read_snapshot  # ended when the batch went to the writer thread
        db.fetchone_now("SELECT 1")  # a read meanwhile: a plain one, no snapshot started
        seen.append(db.in_read_snapshot)
        release.set()
        await db.flush()
        db.fetchone_now("SELECT 1")
        assert seen == [False] and db.in_read_snapshot  # after the batch, snapshots again
    finally:
        release.set()
        await db.close()


async def test_the_wal_restarts_under_steady_reads_and_writes(tmp_path: Path) -> None:
    """Checkpoints complete and the WAL is reused while point reads go on between the writes (a reader
    on an old snapshot would keep every checkpoint short of the end, and the WAL would only grow)."""
    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    tier = SqliteTier(db)
    try:
        await tier.put(entry("v1:hot", expires_at=FAR))
        await committed(tier)
        for i in range(800):  # ~16 MB of answers (~20 KB each after zstd) through a 4 MB autocheckpoint
            await tier.put(entry(f"v1:{i}", os.urandom(20_000).hex(), expires_at=FAR))
            for _ in range(3):
                assert await tier.get("v1:hot") is not None
            await asyncio.sleep(0)
        await committed(tier)
        assert path.with_name(path.name + "-wal").stat().st_size < 8 * 1024 * 1024
    finally:
        await tier.close()
        await db.close()


async def test_a_dictionary_stored_by_another_process_is_found_in_a_snapshot(tmp_path: Path) -> None:
    """An unknown dictionary id is remembered as missing: it must be looked up in the file as it is now."""
    from r1proxy.cache.zdict import Compression

    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    other = sqlite3.connect(path, isolation_level=None, timeout=1)
    try:
        compression = Compression(3, db)
        db.fetchone_now("SELECT 1")
        assert db.in_read_snapshot  # begun before the other process's commit
        other.execute("INSERT INTO zstd_dicts (id, created_at, samples, body, request) VALUES (?, ?, ?, ?, ?)",
                      (4242, 1.0, 16, b"answer text " * 100, b""))
        assert compression.has(4242)
    finally:
        other.close()
        await db.close()
