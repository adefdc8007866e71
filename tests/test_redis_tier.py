"""The shared Redis tier against a real redis-server: promotion, write-behind, TTLs and keys, size cap,
and the breaker (a server that accepts and never answers; a SIGSTOPped redis-server)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import MemoryTier, TieredCache
from r1proxy.cache.redistier import RedisTier, connect
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.config import RedisConfig
from r1proxy.db import Database
from tests.test_cache_contract import make_entry


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class HungServer:
    """Accepts TCP connections and never answers: what a wedged Redis looks like to a client."""

    def __init__(self) -> None:
        self.connections = 0
        self.bytes = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while data := await reader.read(65536):
            self.bytes += len(data)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def hung() -> AsyncIterator[HungServer]:
    h = HungServer()
    yield h
    await h.stop()


@pytest.fixture
def tier_factory(redis_prefix: str) -> Any:
    def make(url: str, **kw: Any) -> RedisTier:
        clock = kw.pop("monotonic", None)
        cfg = RedisConfig(url=url, prefix=kw.pop("prefix", redis_prefix), **kw)
        return RedisTier(connect(cfg), cfg, **({"monotonic": clock} if clock else {}))

    return make


async def _close(*tiers: RedisTier) -> None:
    for t in tiers:
        await t.close()


async def test_hit_in_redis_is_promoted_to_sqlite_and_memory(tmp_path: Path, redis_server: Any,
                                                             tier_factory: Callable[..., RedisTier]) -> None:
    other_process = tier_factory(redis_server.url, timeout=5.0)
    mine = tier_factory(redis_server.url, timeout=5.0)
    db = await Database.open(tmp_path / "r1proxy.db")
    disk = SqliteTier(db)
    cache = TieredCache(MemoryTier(1 << 20), [disk, mine])
    try:
        await other_process.put(make_entry("r1:shared"))
        await other_process.settle()
        entry, tier = await cache.get("r1:shared")
        assert entry is not None and tier == "redis"
        assert entry.completion["choices"][0]["message"]["content"] == "The answer is 42."
        await db.flush()
        on_disk = await disk.get_full("r1:shared")
        assert on_disk is not None and on_disk.request == make_entry().request  # the whole entry came over
        assert (await cache.get("r1:shared"))[1] == "memory"
        assert mine.counters.hits == 1
    finally:
        await cache.close()
        await db.close()
        await _close(other_process)


async def test_keys_are_content_addressed_under_the_prefix_and_always_expire(
        redis_server: Any, redis_prefix: str, tier_factory: Callable[..., RedisTier]) -> None:
    t = tier_factory(redis_server.url, timeout=5.0, ttl=3600.0)
    try:
        now = time.time()
        await t.put(make_entry("r1:k1", created_at=now, expires_at=now + 10 * 86400))
        await t.put(make_entry("r1:k2", created_at=now, expires_at=now + 60))
        await t.touch("r1:k1", now)
        await t.settle()
        keys = sorted([k.decode() async for k in t.client.scan_iter(match=redis_prefix + "*")])
        assert keys == [f"{redis_prefix}e:{{r1:k1}}", f"{redis_prefix}e:{{r1:k2}}", f"{redis_prefix}h:{{r1:k1}}"]
        for k in keys:
            assert 0 < await t.client.ttl(k) <= 3600, k  # SET … EX always, never past the configured ttl
        assert await t.client.ttl(f"{redis_prefix}e:{{r1:k2}}") <= 60  # nor past the entry's own life
    finally:
        await _close(t)


async def test_entries_over_max_entry_mb_stay_local(redis_server: Any, tier_factory: Callable[..., RedisTier]) -> None:
    import os

    t = tier_factory(redis_server.url, timeout=5.0, max_entry_mb=0.01)
    try:
        big = make_entry("r1:big", text=os.urandom(20_000).hex())  # incompressible, > 10 KB
        await t.put(big)
        await t.put(make_entry("r1:small"))
        await t.settle()
        assert await t.get("r1:big") is None
        assert await t.get("r1:small") is not None
        assert t.counters.too_big == 1
    finally:
        await _close(t)


async def test_a_damaged_value_is_a_miss_and_is_deleted(redis_server: Any, redis_prefix: str,
                                                        tier_factory: Callable[..., RedisTier]) -> None:
    t = tier_factory(redis_server.url, timeout=5.0)
    try:
        await t.client.set(t.entry_key("r1:bad"), b"R1E1 not really", ex=60)
        await t.put(make_entry("r1:other"))
        await t.settle()
        value = await t.client.get(t.entry_key("r1:other"))
        await t.client.set(t.entry_key("r1:moved"), value, ex=60)  # a value filed under the wrong key
        assert await t.get("r1:bad") is None
        assert await t.get("r1:moved") is None
        await t.settle()
        assert await t.client.exists(t.entry_key("r1:bad"), t.entry_key("r1:moved")) == 0
        assert t.counters.damaged == 2
    finally:
        await _close(t)


async def test_writes_are_never_awaited_by_the_caller(hung: HungServer, tier_factory: Callable[..., RedisTier],
                                                      tmp_path: Path) -> None:
    # a generous timeout: the writer is stuck on the hung server for the whole test
    t = tier_factory(await hung.start(), timeout=30.0)
    db = await Database.open(tmp_path / "r1proxy.db")
    cache = TieredCache(MemoryTier(1 << 20), [SqliteTier(db), t])
    try:
        for i in range(5):  # if a put waited for Redis, this would hang for 30 s and wait_for would fail
            await asyncio.wait_for(cache.put(make_entry(f"r1:{i}")), 10)
        assert (await cache.get("r1:3"))[1] == "memory"
    finally:
        t.write_timeout = 0.05
        await cache.close()
        await db.close()


async def test_a_server_that_never_answers_opens_the_breaker(hung: HungServer, caplog: pytest.LogCaptureFixture,
                                                             tier_factory: Callable[..., RedisTier]) -> None:
    clock = Clock()
    t = tier_factory(await hung.start(), timeout=0.05, breaker_failures=3, breaker_reset=30.0, monotonic=clock)
    try:
        with caplog.at_level(logging.INFO, logger="r1proxy.redis"):
            for _ in range(3):
                assert await asyncio.wait_for(t.get("r1:x"), 10) is None
            assert t.breaker.state == "open" and t.degraded.startswith("redis breaker open")
            assert t.counters.errors == 3
            sent = hung.bytes
            for _ in range(50):  # open: nobody waits, nothing is sent
                assert await t.get("r1:x") is None
            await t.put(make_entry("r1:y"))
            await t.settle()
            assert t.counters.skipped == 50 and t.counters.dropped_writes == 1
            assert hung.bytes == sent
            clock.t += 31  # one probe goes out, fails, and the breaker stays open without a new warning
            assert await t.get("r1:x") is None
            assert t.breaker.state == "open" and t.counters.errors == 4
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "degraded" in warnings[0].getMessage()
    finally:
        t.write_timeout = 0.05
        await _close(t)


async def test_a_stopped_redis_costs_the_sharing_only_and_sharing_resumes(
        own_redis: Any, caplog: pytest.LogCaptureFixture, tier_factory: Callable[..., RedisTier]) -> None:
    clock = Clock()
    # 1 s: a live server always answers in time, even on a loaded CI machine; a stopped one never does
    t = tier_factory(own_redis.url, timeout=1.0, breaker_failures=2, breaker_reset=5.0, monotonic=clock)
    try:
        await t.put(make_entry("r1:before", expires_at=time.time() + 3600))  # Redis keeps it (SET EX)
        await t.settle()
        assert await t.get("r1:before") is not None
        own_redis.stop_signal()
        with caplog.at_level(logging.INFO, logger="r1proxy.redis"):
            assert await t.get("r1:before") is None  # times out: a miss, not an error for the caller
            assert await t.get("r1:before") is None
            assert t.breaker.state == "open"
            await t.put(make_entry("r1:during"))
            await t.settle()
            assert t.counters.dropped_writes == 1
            own_redis.cont_signal()
            assert await t.get("r1:before") is None  # still open: not asked until breaker_reset passed
            clock.t += 6
            got = None
            for _ in range(100):  # the probe may meet a connection dropped during the stop; bounded
                got = await t.get("r1:before")
                if got is not None:
                    break
                clock.t += 6
            assert got is not None and t.breaker.state == "closed" and t.degraded == "", t.breaker.last_error
        levels = [(r.levelname, r.getMessage().split(":")[1].strip()[:8]) for r in caplog.records
                  if r.levelno >= logging.INFO]
        assert levels[0][0] == "WARNING" and levels[-1][0] == "INFO"
        assert len([x for x in levels if x[0] == "WARNING"]) == 1
    finally:
        own_redis.cont_signal()
        await _close(t)
