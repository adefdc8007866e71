"""The store at scale without scans: running totals kept on write, batched eviction and purge.

Sizes come from ``cache_totals`` (kept by triggers), so they must equal what a SUM over the table
says after every kind of write: put, replace, touch, delete, purge, eviction, an upgrade, and an
INSERT OR REPLACE from outside r1proxy's own statements.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry
from r1proxy.cache import sqlite as store
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database
from r1proxy.migrations import MIGRATIONS, migrate


def entry(key: str, *, size: int = 1000, created_at: float = 1000.0, expires_at: float = 99_999.0,
          model: str = "deepseek-r1") -> CacheEntry:
    text = os.urandom(size // 2).hex()  # incompressible: stored size tracks `size`
    return CacheEntry(key=key, completion={"choices": [{"message": {"content": text}}]},
                      created_at=created_at, expires_at=expires_at, model=model, request=b'{"messages":[]}')


async def sums(db: Database) -> tuple[int, int, int]:
    row = await db.fetchone("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0), COALESCE(SUM(raw_bytes), 0) "
                            "FROM cache_entries")
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]))


class Spy:
    """Records the rowcount of every awaited write (eviction and purge batches)."""

    def __init__(self, db: Database) -> None:
        self.counts: list[int] = []
        real = db.execute

        async def execute(sql: str, params: Any = ()) -> int:
            n = await real(sql, params)
            if sql.lstrip().startswith("DELETE"):
                self.counts.append(n)
            return n

        db.execute = execute  # type: ignore[method-assign]


async def test_totals_follow_every_kind_of_write(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        assert tier.totals() == (0, 0, 0)
        for i in range(10):
            await tier.put(entry(f"v1:{i}", size=1000 + 100 * i, created_at=1000.0 + i))
        await tier.put(entry("v1:3", size=5000, created_at=1003.0))  # replaces a row: an update, counted once
        await db.flush()
        await tier.touch("v1:4", 5000.0)
        assert await tier.delete("v1:5") is True
        assert await tier.purge(older_than_s=0, now=1001.5) == 2  # v1:0, v1:1
        await db.flush()
        assert tier.totals() == await sums(db)
        assert tier.totals()[0] == 7
        stats = await tier.stats()
        assert (stats.entries, stats.bytes, stats.raw_bytes) == await sums(db)
        # another program replacing a row through a connection of ours (recursive_triggers on)
        row = await db.fetchone("SELECT stored_bytes FROM cache_entries WHERE key = 'v1:6'")
        assert row is not None
        await db.execute("INSERT OR REPLACE INTO cache_entries (key, stored_bytes, raw_bytes) VALUES ('v1:6', 7, 9)")
        assert tier.totals() == await sums(db)
    finally:
        await db.close()


def test_upgrade_seeds_totals_and_last_hit(tmp_path: Path) -> None:
    """A database from before m020 gets totals equal to its rows and last_hit_at for never-hit rows."""
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        old = [fn for fn in MIGRATIONS if fn.__name__ < "m020"]
        for fn in old:
            fn(conn)
            conn.execute("INSERT INTO _r1proxy_migrations VALUES (?, 0)", (fn.__name__,))
        conn.executemany("INSERT INTO cache_entries (key, created_at, last_hit_at, stored_bytes, raw_bytes) "
                         "VALUES (?, ?, ?, ?, ?)", [("a", 10.0, None, 100, 300), ("b", 20.0, 25.0, 50, 80)])
        assert {"m020_cache_totals", "m021_last_hit_at_set"} <= set(migrate(conn))
        assert conn.execute("SELECT entries, stored_bytes, raw_bytes FROM cache_totals").fetchall() == [(2, 150, 380)]
        assert conn.execute("SELECT key, last_hit_at FROM cache_entries ORDER BY key").fetchall() == [
            ("a", 10.0), ("b", 25.0)]
    finally:
        conn.close()


async def test_eviction_deletes_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "EVICT_BATCH", 3)
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db, stale_if_error=0.0)
        for i in range(30):
            await tier.put(entry(f"v1:{i}", size=2000, created_at=1000.0 + i))
        await tier.put(entry("v1:expired", expires_at=10.0))
        await tier.touch("v1:0", 9000.0)  # the oldest, but just used
        await db.flush()
        spy = Spy(db)
        _, total, _ = tier.totals()
        tier.max_bytes = total // 3
        deleted = await tier.evict(now=5000.0)
        assert deleted == sum(spy.counts) and len(spy.counts) > 5
        assert max(spy.counts) <= 3
        entries, stored, _ = tier.totals()
        assert stored <= tier.max_bytes * 0.9 and (entries, stored) == (await sums(db))[:2]
        assert await tier.get("v1:expired") is None
        assert await tier.get("v1:0") is not None and await tier.get("v1:29") is not None
        assert await tier.get("v1:1") is None
    finally:
        await db.close()


async def test_a_lowered_cap_is_enforced_without_new_puts(tmp_path: Path) -> None:
    """Once started, the tier checks the cap by itself: no need to wait for the 256th put."""
    db = await Database.open(tmp_path / "r1proxy.db")
    tier = SqliteTier(db)
    try:
        for i in range(20):
            await tier.put(entry(f"v1:{i}", size=2000, created_at=1000.0 + i))
        await db.flush()
        _, total, _ = tier.totals()
        tier.max_bytes = total // 2
        tier.start(interval=0.02)
        for _ in range(500):
            if tier.totals()[1] <= tier.max_bytes:
                break
            await asyncio.sleep(0.01)
        assert tier.totals()[1] <= tier.max_bytes * 0.9
        assert tier.evicted > 0
    finally:
        await tier.close()
        await db.close()


async def test_purge_deletes_in_batches_by_rowid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PURGE_BATCH", 4)
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        for i in range(40):  # alternate models and ages so every batch is a mix
            await tier.put(entry(f"v1:{i}", size=500, created_at=100.0 * (i % 4), model=f"m{i % 2}"))
        await db.flush()
        spy = Spy(db)
        assert await tier.purge(older_than_s=150.0, now=300.0) == 20  # created at 0 and 100
        assert len(spy.counts) >= 5 and max(spy.counts) <= 4
        assert await tier.purge(model="m1") == 10
        assert await tier.purge(all=True) == 10
        assert tier.totals() == (0, 0, 0) == await sums(db)
    finally:
        await db.close()
