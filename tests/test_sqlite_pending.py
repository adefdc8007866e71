"""The SQLite tier's queued writes: a put is readable (and deletable, purgeable) before the writer
commits, survives close, and entries whose rows landed are forgotten even while writes keep coming.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import until


async def test_sqlite_put_is_readable_before_the_writer_commits(tmp_path: Any) -> None:
    from r1proxy.cache import CacheEntry
    from r1proxy.cache.sqlite import SqliteTier
    from r1proxy.db import Database

    def entry(key: str, model: str = "m", created_at: float = 1000.0) -> CacheEntry:
        doc = {"id": key, "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": key}}]}
        return CacheEntry(key=key, completion=doc, created_at=created_at, expires_at=created_at + 60, model=model)

    path = tmp_path / "db" / "r1proxy.db"
    db = await Database.open(path)
    tier = SqliteTier(db)
    await tier.put(entry("v1:a"))
    got = await tier.get("v1:a")  # no flush: still queued
    assert got is not None and got.completion["id"] == "v1:a"
    await tier.put(entry("v1:b"))
    assert await tier.delete("v1:b") is True  # the queued INSERT ran first
    assert await tier.get("v1:b") is None
    await tier.put(entry("v1:c", model="other"))
    await tier.put(entry("v1:d", created_at=10.0))
    assert await tier.purge(model="other") == 1
    assert await tier.get("v1:c") is None
    assert await tier.purge(older_than_s=100, now=1000.0) == 1
    assert await tier.get("v1:d") is None
    await db.flush()
    await until(lambda: not tier._pending, "the queued puts settled")  # reads come from the rows again
    got = await tier.get("v1:a")
    assert got is not None and got.completion["id"] == "v1:a"
    await tier.put(entry("v1:e"))
    await tier.close()
    await db.close()  # close drains the queue: the put survives a restart
    db = await Database.open(path)
    tier = SqliteTier(db)
    try:
        assert {k for k in ("v1:a", "v1:b", "v1:c", "v1:d", "v1:e") if await tier.get(k)} == {"v1:a", "v1:e"}
    finally:
        await tier.close()
        await db.close()


async def test_sqlite_pending_puts_do_not_pile_up_under_steady_writes(tmp_path: Any) -> None:
    """Under a steady stream of writes the writer's queue never drains; entries whose row has landed
    must still be forgotten (each holds ~25 KB: 10,000 misses once cost 500 MB of RSS)."""
    from r1proxy.cache import CacheEntry
    from r1proxy.cache.sqlite import SqliteTier
    from r1proxy.db import Database

    db = await Database.open(tmp_path / "r1proxy.db")
    tier = SqliteTier(db)
    stop = asyncio.Event()

    async def keep_writing() -> None:  # like the request log under load
        while not stop.is_set():
            db.submit("UPDATE cache_entries SET hits = hits WHERE key = ?", ("v1:none",))
            await asyncio.sleep(0.0002)

    busy = asyncio.create_task(keep_writing())
    try:
        for i in range(200):
            doc = {"id": str(i), "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "x" * 2000}}]}
            await tier.put(CacheEntry(key=f"v1:{i}", completion=doc, created_at=1.0, expires_at=9e9,
                                      request=b"r" * 20000))
            await asyncio.sleep(0)
        await until(lambda: not tier._pending, "the queued puts settled while writes kept coming")
        assert await tier.get("v1:0") is not None  # served from its row
    finally:
        stop.set()
        await busy
        await tier.close()
        await db.close()
