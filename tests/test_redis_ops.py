"""Operating the shared tier: /metrics shows it; `cache purge --tier redis` empties it and every running
proxy drops its own copies (a broadcast); a purge of one machine's SQLite still clears servers' memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.cli import main
from tests.helpers import answer, settle, upstream_calls
from tests.roo import roo_body


async def _pair(aiohttp_client: Any, make_config: Any, tmp_path: Path, redis: dict[str, Any]) -> tuple[Any, Any]:
    out = []
    for name in ("a", "b"):
        cfg = make_config(server={"state_dir": str(tmp_path / name)}, cache={"redis": redis})
        out.append(await aiohttp_client(create_app(cfg)))
    return out[0], out[1]


async def _listeners(client: Any, channel: str, want: int) -> None:
    for _ in range(500):  # bounded
        (_, n), = await client.pubsub_numsub(channel)
        if n >= want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the proxies never subscribed to purge broadcasts")


async def test_metrics_show_the_shared_tier(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                            tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    a, b = await _pair(aiohttp_client, make_config, tmp_path, {"url": redis_server.url, "prefix": redis_prefix,
                                                                "timeout": "2s"})
    await answer(a, roo_body())
    await settle(a)
    await a.app[GATEWAY_KEY].cache.tiers[-1].settle()
    r, _ = await answer(b, roo_body(stream=False))
    assert r.headers["X-Cache-Tier"] == "redis"
    text = await (await b.get("/metrics")).text()
    assert 'r1proxy_shared_tier_events_total{event="hits",tier="redis"} 1.0' in text
    assert 'r1proxy_shared_tier_breaker_open{tier="redis"} 0.0' in text
    assert 'r1proxy_cache_entries{tier="redis"} 1.0' in text
    assert 'r1proxy_shared_tier_events_total{event="led",tier="redis_coalescing"}' in text


@pytest.mark.parametrize("tier", ["redis", "sqlite"])
async def test_purge_reaches_every_process(aiohttp_client: Any, make_config: Any, fake_server: Any, tmp_path: Path,
                                           redis_server: Any, redis_prefix: str, tier: str) -> None:
    redis = {"url": redis_server.url, "prefix": redis_prefix, "timeout": "2s"}
    a, b = await _pair(aiohttp_client, make_config, tmp_path, redis)
    rtier = a.app[GATEWAY_KEY].cache.tiers[-1]
    await _listeners(rtier.client, redis_prefix + "purge", 2)
    await answer(a, roo_body())
    await settle(a)
    await rtier.settle()
    r, _ = await answer(b, roo_body())  # b now holds it in memory and SQLite too
    assert r.headers["X-Cache-Tier"] == "redis"
    await b.app[STORE_KEY].db.flush()

    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "a"}"\n[cache.redis]\nurl = "{redis_server.url}"\n'
                   f'prefix = "{redis_prefix}"\n')
    assert await asyncio.to_thread(main, ["--config", str(cfg), "cache", "purge", "--all", "--tier", tier]) == 0
    mem_b = b.app[GATEWAY_KEY].cache.memory
    disk_b = b.app[GATEWAY_KEY].cache.tiers[0]

    async def reached() -> bool:  # a team-wide purge also empties b's SQLite, after its memory
        if mem_b.entries or a.app[GATEWAY_KEY].cache.memory.entries:
            return False
        return tier != "redis" or (await disk_b.stats()).entries == 0

    for _ in range(500):  # the broadcast arrives asynchronously, and b purges as it receives it: bounded wait
        if await reached():
            break
        await asyncio.sleep(0.02)
    assert await reached()
    redis_left = (await rtier.stats()).entries if tier == "sqlite" else 0
    if tier == "redis":
        rtier._stats = None
        assert (await rtier.stats()).entries == 0
        r, _ = await answer(b, roo_body())  # gone everywhere: b's SQLite was purged by the broadcast too
        assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2
    else:  # only a's disk was purged; memory copies dropped everywhere; b still has its SQLite row
        assert redis_left == 1
        r, _ = await answer(b, roo_body())
        assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "sqlite")


async def test_purge_key_reaches_redis_and_every_process(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                                         tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    redis = {"url": redis_server.url, "prefix": redis_prefix, "timeout": "2s"}
    a, b = await _pair(aiohttp_client, make_config, tmp_path, redis)
    rtier = a.app[GATEWAY_KEY].cache.tiers[-1]
    await _listeners(rtier.client, redis_prefix + "purge", 2)
    r, _ = await answer(a, roo_body())
    key = r.headers["X-Cache-Key"]
    await settle(a)
    await rtier.settle()
    r, _ = await answer(b, roo_body())
    assert r.headers["X-Cache-Tier"] == "redis"
    await b.app[STORE_KEY].db.flush()

    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "a"}"\n[cache.redis]\nurl = "{redis_server.url}"\n'
                   f'prefix = "{redis_prefix}"\n')
    assert await asyncio.to_thread(main, ["--config", str(cfg), "cache", "purge", "--key", key]) == 0
    assert await rtier.client.exists(rtier.entry_key(key)) == 0
    mem_b = b.app[GATEWAY_KEY].cache.memory
    for _ in range(500):  # the broadcast arrives asynchronously; bounded wait
        if key not in mem_b and key not in a.app[GATEWAY_KEY].cache.memory:
            break
        await asyncio.sleep(0.02)
    for _ in range(500):  # b deletes it from its own SQLite too (a key purge is everywhere)
        if await b.app[STORE_KEY].db.fetchone("SELECT 1 FROM cache_entries WHERE key = ?", (key,)) is None:
            break
        await asyncio.sleep(0.02)
    r, _ = await answer(b, roo_body())
    assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2, r.headers.get("X-Cache-Tier")
