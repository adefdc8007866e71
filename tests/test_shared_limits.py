"""Limits shared across processes through a real redis-server: per-key rpm, tpm and daily budgets, and the
upstream pacer (the :free 20 requests/minute belong to the account), with two proxies on one Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY
from tests.conftest import LOCAL_KEY
from tests.helpers import AUTH, upstream_calls
from tests.roo import roo_body


async def _pair(aiohttp_client: Any, make_config: Any, tmp_path: Path, redis_server: Any, redis_prefix: str,
                **sections: Any) -> tuple[Any, Any]:
    redis = {"url": redis_server.url, "prefix": redis_prefix, "timeout": "2s"}
    out = []
    for name in ("a", "b"):
        cfg = make_config(server={"state_dir": str(tmp_path / name)}, cache={"redis": redis}, **sections)
        out.append(await aiohttp_client(create_app(cfg)))
    return out[0], out[1]


async def _ask(client: Any, text: str, model: str = "deepseek-r1") -> tuple[int, Any]:
    r = await client.post("/chat/completions", json=roo_body(text=text, stream=False, model=model), headers=AUTH)
    return r.status, await r.json()


KEY = {"name": "roo", "key": LOCAL_KEY}


async def test_a_keys_rpm_is_shared(aiohttp_client: Any, make_config: Any, fake_server: Any, tmp_path: Path,
                                    redis_server: Any, redis_prefix: str) -> None:
    a, b = await _pair(aiohttp_client, make_config, tmp_path, redis_server, redis_prefix, keys=[{**KEY, "rpm": 3}])
    assert (await _ask(a, "one"))[0] == 200
    assert (await _ask(b, "two"))[0] == 200
    assert (await _ask(a, "three"))[0] == 200
    status, body = await _ask(b, "four")  # b alone has used 1 of 3: only the shared count says no
    assert status == 429 and "shared across r1proxy processes" in body["error"]["message"]
    assert upstream_calls(fake_server) == 3


async def test_tpm_and_daily_budgets_are_shared(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                                tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    a, b = await _pair(aiohttp_client, make_config, tmp_path, redis_server, redis_prefix,
                       keys=[{**KEY, "tpm": 10}])
    assert (await _ask(a, "uses more than ten tokens"))[0] == 200
    gw = a.app[GATEWAY_KEY]
    gw.flush_accounting()
    await gw.shared_limits.settle()
    status, body = await _ask(b, "another")
    assert status == 429 and "(tpm" in body["error"]["message"]

    c, d = await _pair(aiohttp_client, make_config, tmp_path / "day", redis_server, redis_prefix + "day:",
                       keys=[{**KEY, "daily_tokens": 10}])
    assert (await _ask(c, "spend the day"))[0] == 200
    c.app[GATEWAY_KEY].flush_accounting()
    await c.app[GATEWAY_KEY].shared_limits.settle()
    status, body = await _ask(d, "more")
    assert status == 429 and body["error"]["code"] == "budget_exceeded"


async def test_the_upstream_pacer_is_shared(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                            tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    models = [{"name": "deepseek-r1-free", "model": "deepseek/deepseek-r1:free", "rpm": 1, "max_queue_s": "0.2s"}]
    a, b = await _pair(aiohttp_client, make_config, tmp_path, redis_server, redis_prefix, models=models)
    assert (await _ask(a, "free one", "deepseek-r1-free"))[0] == 200
    status, body = await _ask(b, "free two", "deepseek-r1-free")  # b's own pacer is empty; the account's is not
    assert status == 429 and "shared" in body["error"]["message"]
    assert upstream_calls(fake_server) == 1


async def test_a_hung_redis_leaves_the_local_limits_in_charge(aiohttp_client: Any, make_config: Any,
                                                              fake_server: Any, tmp_path: Path) -> None:
    from tests.test_redis_tier import HungServer

    hung = HungServer()
    try:
        url = await hung.start()
        cfg = make_config(cache={"redis": {"url": url, "timeout": "50ms", "breaker_failures": 2}},
                          keys=[{**KEY, "rpm": 2, "tpm": 100000, "daily_tokens": 100000}],
                          models=[{"name": "deepseek-r1", "model": "deepseek/deepseek-r1", "rpm": 50}])
        p = await aiohttp_client(create_app(cfg))
        assert (await _ask(p, "one"))[0] == 200
        assert (await _ask(p, "two"))[0] == 200
        status, body = await _ask(p, "three")  # the local rpm still holds
        assert status == 429 and "shared" not in body["error"]["message"]
        limits = p.app[GATEWAY_KEY].shared_limits
        assert limits.fallbacks >= 2 and limits.refused == 0
    finally:
        await hung.stop()
