"""``[cache.redis]`` config, and two real proxies sharing one real redis-server end to end:
a Redis hit (X-Cache-Tier: redis), and a hung Redis that costs nothing but the sharing."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY
from r1proxy.config import ConfigError, RedisConfig, build_config
from r1proxy.ops import format_stats
from tests.helpers import answer, settle, upstream_calls
from tests.roo import roo_body
from tests.test_redis_tier import HungServer

ROOT = Path(__file__).resolve().parent.parent


def cfg(redis: dict[str, Any], env: dict[str, str] | None = None) -> RedisConfig:
    return build_config({"cache": {"redis": redis}}, source="t.toml", env=env or {}).cache.redis


def test_documented_config_is_the_default() -> None:
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    assert build_config(raw, env={}).cache.redis == RedisConfig()
    assert not RedisConfig().enabled


def test_redis_config_is_validated(tmp_path: Path) -> None:
    assert cfg({"url": "unix:///run/redis.sock", "timeout": "50ms", "breaker_reset": "1m"}) == RedisConfig(
        url="unix:///run/redis.sock", timeout=0.05, breaker_reset=60.0)
    for bad, where in [({"url": "http://x"}, "cache.redis.url"),
                       ({"url": "redis://:hunter2@host:6379"}, "cache.redis.url"),
                       ({"url": "redis://u:hunter2@host"}, "cache.redis.url"),
                       ({"url": "redis://host/0?password=hunter2"}, "cache.redis.url"),
                       ({"timeout": 0}, "cache.redis.timeout"),
                       ({"ttl": 0}, "cache.redis.ttl"),
                       ({"password": "x"}, "cache.redis.password"),
                       ({"bogus": 1}, "cache.redis.bogus")]:
        with pytest.raises(ConfigError) as e:
            cfg(bad)
        assert where in str(e.value) and "hunter2" not in str(e.value)


def test_password_comes_from_env_or_file_and_is_never_shown(tmp_path: Path) -> None:
    assert cfg({"url": "redis://h"}, {"REDIS_PASSWORD": "s3cret"}).password == "s3cret"
    assert cfg({"url": "redis://h", "password_env": "MY_PW"}, {"MY_PW": "other"}).password == "other"
    f = tmp_path / "pw"
    f.write_text("fromfile\n")
    c = build_config({"cache": {"redis": {"url": "redis://h", "password_file": str(f)}}}, env={})
    assert c.cache.redis.password == "fromfile"
    assert "fromfile" not in repr(c) and "fromfile" not in str(c.redacted())
    assert c.redacted()["cache"]["redis"]["password"] == "(set)"


async def _proxy(aiohttp_client: Any, make_config: Any, state: Path, redis: dict[str, Any]) -> Any:
    return await aiohttp_client(create_app(make_config(server={"state_dir": str(state)},
                                                       cache={"redis": redis})))


async def test_two_proxies_share_answers_through_redis(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                                       redis_server: Any, redis_prefix: str, tmp_path: Path) -> None:
    shared = {"url": redis_server.url, "prefix": redis_prefix, "timeout": "5s"}
    a = await _proxy(aiohttp_client, make_config, tmp_path / "a", shared)
    b = await _proxy(aiohttp_client, make_config, tmp_path / "b", shared)
    r, first = await answer(a, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    await settle(a)
    redis_tier = a.app[GATEWAY_KEY].cache.tiers[-1]
    await redis_tier.settle()

    r, shared_answer = await answer(b, roo_body())
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "redis")
    assert shared_answer["content"] == first["content"] and shared_answer["reasoning"] == first["reasoning"]
    r, _ = await answer(b, roo_body(stream=False))
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "memory")  # promoted
    assert upstream_calls(fake_server) == 1
    health = await (await b.get("/health")).json()
    assert health["status"] == "ok" and health["degraded"] == []


async def test_a_hung_redis_fails_no_request(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                             tmp_path: Path) -> None:
    hung = HungServer()
    try:
        url = await hung.start()
        p = await _proxy(aiohttp_client, make_config, tmp_path / "a",
                         {"url": url, "timeout": "50ms", "breaker_failures": 2, "breaker_reset": "1h"})
        for i in range(4):
            r, got = await answer(p, roo_body(text=f"question {i}", stream=bool(i % 2)))
            assert r.headers["X-Cache"] == "MISS" and got["content"]
        r, _ = await answer(p, roo_body(text="question 0", stream=False))
        assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "memory")
        health = await (await p.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["degraded"][0].startswith("redis breaker open")
        assert upstream_calls(fake_server) == 4
        live = await (await p.get("/stats")).json()
        assert live["degraded"] == health["degraded"]
        report = live["tier_reports"]["redis"]
        assert report["state"] == "open" and report["errors"] >= 1 and report["skipped"] >= 1
        assert live["coalescing"]["fallbacks"] >= 1  # the hung server could not coordinate: each went alone
        period = {"requests": 0, "hit_rate": 0.0, "tokens_saved": 0, "usd_saved": 0.0, "usd_spent": 0.0,
                  "upstream_errors": 0}
        text = format_stats({"database": "x", "server": "up", "overall": period, "today": period,
                             "disk": {"entries": 0, "stored_bytes": 0, "raw_bytes": 0}, "top_models": [],
                             "memory": {"entries": 0, "bytes": 0}, "live": live})
        assert "degraded: redis breaker open" in text and "redis tier    open" in text
    finally:
        await hung.stop()
