"""One behaviour contract for every CacheTier: memory, SQLite and Redis (a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry, CacheTier, MemoryTier, TieredCache
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database


@dataclass
class TierUnderTest:
    tier: CacheTier
    settle: Callable[[], Awaitable[None]]  # wait until queued writes are visible to get()


async def _nothing() -> None:
    return None


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def tut(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TierUnderTest]:
    if request.param == "redis":
        from r1proxy.cache.redistier import RedisTier, connect
        from r1proxy.config import RedisConfig

        server = request.getfixturevalue("redis_server")
        cfg = RedisConfig(url=server.url, prefix=request.getfixturevalue("redis_prefix"), timeout=5.0)
        rt = RedisTier(connect(cfg), cfg)
        yield TierUnderTest(rt, rt.settle)
        await rt.close()
        return
    if request.param == "memory":
        mem = MemoryTier(max_bytes=16 * 1024 * 1024)
        yield TierUnderTest(mem, _nothing)
        await mem.close()
        return
    db = await Database.open(tmp_path / "state" / "r1proxy.db")
    tier = SqliteTier(db, max_bytes=64 * 1024 * 1024, stale_if_error=3600)
    try:
        yield TierUnderTest(tier, tier.settle)
    finally:
        await tier.close()
        await db.close()


def completion(text: str = "The answer is 42.") -> dict[str, Any]:
    return {
        "id": "gen-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "deepseek/deepseek-r1",
        "choices": [{
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": text,
                "reasoning_content": "Let me think… ünïcødé ✓ \"quoted\"\n",
                "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "read_file", "arguments": "{\"path\": \"a.py\"}"},
                }],
            },
        }],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "completion_tokens_details": {"reasoning_tokens": 5}},
    }


def make_entry(key: str = "v1:abc", *, text: str = "The answer is 42.", created_at: float = 1000.0,
               expires_at: float = 2000.0) -> CacheEntry:
    return CacheEntry(
        key=key, completion=completion(text), created_at=created_at, expires_at=expires_at,
        model="deepseek-r1", namespace="team-a", request=b'{"model":"deepseek-r1","messages":[]}',
        prompt_tokens=11, completion_tokens=7, reasoning_tokens=5, cost=0.0123,
        preview_user="what is the answer?", preview_answer=text[:40], raw_bytes=600,
    )


def same(a: CacheEntry, b: CacheEntry) -> None:
    """Equal in everything a tier must preserve (raw_bytes is the tier's own measure). The canonical
    request is kept for people inspecting a persistent tier; the memory tier drops it (hits never need
    it), so it is either kept exactly or not at all."""
    for f in ("key", "completion", "created_at", "expires_at", "model", "namespace",
              "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost", "hits",
              "last_hit_at", "preview_user", "preview_answer"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.request in (b.request, b""), "request"


async def test_get_missing_is_none(tut: TierUnderTest) -> None:
    assert await tut.tier.get("v1:nope") is None


async def test_put_get_roundtrip(tut: TierUnderTest) -> None:
    e = make_entry()
    await tut.tier.put(e)
    await tut.settle()
    got = await tut.tier.get(e.key)
    assert got is not None
    same(got, make_entry())
    get_full = getattr(tut.tier, "get_full", None)
    if get_full is not None:  # a persistent tier keeps the canonical request for inspection
        full = await get_full(e.key)
        assert full is not None and full.request == make_entry().request
    msg = got.completion["choices"][0]["message"]
    assert msg["reasoning_content"].startswith("Let me think…")
    assert msg["tool_calls"][0]["function"]["name"] == "read_file"


async def test_put_replaces(tut: TierUnderTest) -> None:
    await tut.tier.put(make_entry(text="first"))
    await tut.tier.put(make_entry(text="second", expires_at=3000.0))
    await tut.settle()
    got = await tut.tier.get("v1:abc")
    assert got is not None
    assert got.completion["choices"][0]["message"]["content"] == "second"
    assert got.expires_at == 3000.0
    assert (await tut.tier.stats()).entries == 1


async def test_delete(tut: TierUnderTest) -> None:
    await tut.tier.put(make_entry("v1:a"))
    await tut.tier.put(make_entry("v1:b"))
    await tut.settle()
    assert await tut.tier.delete("v1:a") is True
    assert await tut.tier.delete("v1:a") is False
    assert await tut.tier.get("v1:a") is None
    assert await tut.tier.get("v1:b") is not None


async def test_touch_counts_hits(tut: TierUnderTest) -> None:
    await tut.tier.put(make_entry())
    await tut.settle()
    await tut.tier.touch("v1:abc", 1500.0)
    await tut.tier.touch("v1:abc", 1600.0)
    await tut.tier.touch("v1:missing", 1600.0)  # no error for an absent key
    await tut.settle()
    got = await tut.tier.get("v1:abc")
    assert got is not None
    assert (got.hits, got.last_hit_at) == (2, 1600.0)


async def test_touch_many_counts_every_hit_in_order(tut: TierUnderTest) -> None:
    """What production calls (TieredCache.touch_slow batches the hot path's hits into touch_many)."""
    await tut.tier.put(make_entry("v1:a"))
    await tut.tier.put(make_entry("v1:b"))
    await tut.settle()
    await tut.tier.touch_many([])  # an empty batch is fine
    await tut.tier.touch_many([("v1:a", 1500.0), ("v1:b", 1550.0), ("v1:missing", 1560.0), ("v1:a", 1600.0)])
    await tut.tier.touch_many([("v1:b", 1700.0)])
    await tut.settle()
    a, b = await tut.tier.get("v1:a"), await tut.tier.get("v1:b")
    assert a is not None and b is not None
    assert (a.hits, a.last_hit_at) == (2, 1600.0)
    assert (b.hits, b.last_hit_at) == (2, 1700.0)
    assert await tut.tier.get("v1:missing") is None  # a hit on an absent key creates nothing


async def test_stats(tut: TierUnderTest) -> None:
    empty = await tut.tier.stats()
    assert (empty.name, empty.entries, empty.bytes) == (tut.tier.name, 0, 0)
    for i in range(3):
        await tut.tier.put(make_entry(f"v1:{i}"))
    await tut.settle()
    st = await tut.tier.stats()
    assert st.entries == 3
    assert st.bytes > 0 and st.raw_bytes > 0
    await tut.tier.delete("v1:0")
    assert (await tut.tier.stats()).entries == 2


async def test_expired_entry_is_still_returned(tut: TierUnderTest) -> None:
    await tut.tier.put(make_entry(created_at=10.0, expires_at=20.0))
    await tut.settle()
    got = await tut.tier.get("v1:abc")
    assert got is not None
    assert not got.fresh(now=25.0)
    assert got.fresh(now=15.0)


async def test_tiered_cache_promotes_slow_hits(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    slow = SqliteTier(db)
    mem = MemoryTier(max_bytes=1024 * 1024)
    cache = TieredCache(mem, [slow])
    try:
        await slow.put(make_entry("v1:disk"))
        await db.flush()
        assert cache.get_nowait("v1:disk") is None
        entry, tier = await cache.get("v1:disk")
        assert entry is not None and tier == "sqlite"
        assert cache.get_nowait("v1:disk") is entry
        assert (await cache.get("v1:disk"))[1] == "memory"
        assert await cache.get("v1:none") == (None, None)

        await cache.put(make_entry("v1:both"))
        cache.touch_nowait("v1:both", 1234.0)  # memory now; the slower tiers in a batch later
        await cache.touch_slow([("v1:both", 1234.0)])
        await slow.settle()  # hit counts wait in memory for up to a second (SqliteTier.TOUCH_DELAY_S)
        assert [s.entries for s in await cache.stats()] == [2, 2]
        row = await db.fetchone("SELECT hits, last_hit_at FROM cache_entries WHERE key = 'v1:both'")
        assert tuple(row or ()) == (1, 1234.0)
        assert await cache.delete("v1:both") is True
        assert await cache.get("v1:both") == (None, None)
    finally:
        await cache.close()
        await db.close()


async def test_tiered_cache_without_memory(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    cache = TieredCache(None, [SqliteTier(db)])
    try:
        await cache.put(make_entry())
        await db.flush()
        assert cache.get_nowait("v1:abc") is None
        entry, tier = await cache.get("v1:abc")
        assert entry is not None and tier == "sqlite"
    finally:
        await cache.close()
        await db.close()
