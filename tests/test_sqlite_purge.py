"""``SqliteTier.purge``: exactly the matching rows go, in bounded batches, while the tier keeps serving.

Rows are written in an order unrelated to their age (a re-put keeps its old rowid), so a purge that
walks the table in any order must still judge every row by its own ``created_at``; the running
totals and the semantic vectors follow the rows; hits and puts during a purge are unaffected.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry
from r1proxy.cache import sqlite as store
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database


def entry(key: str, created_at: float, model: str = "m0") -> CacheEntry:
    return CacheEntry(key=key, completion={"choices": [{"message": {"content": f"answer {key}"}}]},
                      created_at=created_at, expires_at=1e12, model=model,  # never expired: no eviction
                      request=b'{"messages":[]}')


async def sums(db: Database) -> tuple[int, int, int]:
    row = await db.fetchone("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0), COALESCE(SUM(raw_bytes), 0) "
                            "FROM cache_entries")
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]))


async def keys(db: Database, table: str = "cache_entries") -> set[str]:
    return {r[0] for r in await db.fetchall(f"SELECT key FROM {table}")}


async def fill(tier: SqliteTier, n: int, seed: int = 7) -> dict[str, tuple[float, str]]:
    """``n`` entries with ages and models in random order, plus a vector each; {key: (created_at, model)}."""
    rng = random.Random(seed)
    made: dict[str, tuple[float, str]] = {}
    for i in range(n):
        created, model = float(rng.randrange(0, 1000)), f"m{rng.randrange(3)}"
        made[f"v1:{i}"] = (created, model)
        await tier.put(entry(f"v1:{i}", created, model))
    for i in range(0, n, 5):  # re-put: the row keeps its rowid but gets a new age
        created = float(rng.randrange(0, 1000))
        made[f"v1:{i}"] = (created, made[f"v1:{i}"][1])
        await tier.put(entry(f"v1:{i}", created, made[f"v1:{i}"][1]))
    tier.db.submit_many("INSERT INTO semantic_vectors (key, partition, text, vector, created_at) "
                        "VALUES (?, 'p', 't', x'00', 0)", [(k,) for k in made])
    await tier.db.flush()
    return made


@pytest.mark.parametrize("batch", [1, 7, 5000])
async def test_purge_by_age_removes_exactly_the_older_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           batch: int) -> None:
    monkeypatch.setattr(store, "PURGE_BATCH", batch)
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        made = await fill(tier, 120)
        cutoff = 500.0
        made["v1:edge"] = (cutoff, "m0")  # created exactly at the cutoff: not older, kept
        await tier.put(entry("v1:edge", cutoff))
        await db.flush()
        old = {k for k, (c, _) in made.items() if c < cutoff}
        assert 0 < len(old) < len(made)
        assert await tier.purge(older_than_s=500.0, now=1000.0) == len(old)
        assert await keys(db) == set(made) - old
        assert await keys(db, "semantic_vectors") == set(made) - old - {"v1:edge"}
        assert tier.totals() == await sums(db)
        for k in ("v1:edge", *sorted(set(made) - old)[:5]):
            assert await tier.get(k) is not None
        for k in sorted(old)[:5]:
            assert await tier.get(k) is None
    finally:
        await db.close()


async def test_purge_by_model_and_age_leaves_everything_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PURGE_BATCH", 9)
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        made = await fill(tier, 90, seed=3)
        gone = {k for k, (c, m) in made.items() if m == "m1" and c < 300.0}
        assert await tier.purge(model="m1", older_than_s=700.0, now=1000.0) == len(gone)
        assert await keys(db) == set(made) - gone
        assert tier.totals() == await sums(db)
        m2 = {k for k, (_, m) in made.items() if m == "m2"}
        assert await tier.purge(model="m2") == len(m2)
        assert await keys(db) == set(made) - gone - m2
        assert await tier.purge(all=True) == len(made) - len(gone) - len(m2)
        assert tier.totals() == (0, 0, 0) == await sums(db)
        assert await keys(db, "semantic_vectors") == set()
    finally:
        await db.close()


async def test_hits_and_puts_during_a_purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hits on surviving entries keep answering and new puts land while the batches run; new
    entries (younger than the cutoff) survive it, the totals stay exact."""
    monkeypatch.setattr(store, "PURGE_BATCH", 3)
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        made = await fill(tier, 150, seed=11)
        young = sorted(k for k, (c, _) in made.items() if c >= 400.0)
        old = {k for k, (c, _) in made.items() if c < 400.0}
        stop = asyncio.Event()
        misses: list[str] = []

        async def client() -> int:
            n = 0
            while not stop.is_set():
                for k in young[:20]:
                    if await tier.get(k) is None:
                        misses.append(k)
                    await tier.touch(k, 2000.0)
                await tier.put(entry(f"v1:new{n}", 990.0))
                n += 1
                await asyncio.sleep(0.001)
            return n

        task = asyncio.create_task(client())
        await asyncio.sleep(0.01)
        purged = await tier.purge(older_than_s=600.0, now=1000.0)
        stop.set()
        puts = await task
        await db.flush()
        assert purged == len(old) and misses == []
        assert await keys(db) == (set(made) - old) | {f"v1:new{i}" for i in range(puts)}
        assert tier.totals() == await sums(db)
    finally:
        await db.close()


async def test_a_purge_leaves_the_writer_as_it_found_it(tmp_path: Path) -> None:
    """The purge may tune the writer for its batches; afterwards (and after a failed purge) the
    writer checkpoints the WAL as before (so the file does not keep growing) and keeps its
    temporary data in memory again."""
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        await fill(tier, 30)

        def autocheckpoint() -> Any:  # the writer's settings a purge changes while it runs
            return [db._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("wal_autocheckpoint", "temp_store")]

        before = autocheckpoint()
        assert before == [1000, 2]  # SQLite's default; dbfile's temp_store = MEMORY
        await tier.purge(older_than_s=500.0, now=1000.0)
        await db.flush()
        assert autocheckpoint() == before

        async def broken(sql: str, params: Any = ()) -> int:
            raise RuntimeError("the database went away")

        real = db.fetchone
        db.fetchone = broken  # type: ignore[method-assign,assignment]
        with pytest.raises(RuntimeError):
            await tier.purge(older_than_s=100.0, now=1000.0)
        db.fetchone = real  # type: ignore[method-assign]
        await db.flush()
        assert autocheckpoint() == before
    finally:
        await db.close()
