"""Money per request through the whole proxy: reported vs computed cost, hits saved, the upstream's
prompt cache, config prices, the free quota in /stats and the status text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.fake_upstream import PRICES, Script
from tests.helpers import AUTH, until
from tests.roo import roo_body

P = float(PRICES["deepseek/deepseek-r1"]["prompt"])
C = float(PRICES["deepseek/deepseek-r1"]["completion"])
READ = float(PRICES["deepseek/deepseek-r1"]["input_cache_read"])


async def started(proxy: Any, **sections: Any) -> Any:
    """A proxy whose account watch has read the fake's /models (prices known)."""
    client = await proxy(**sections)
    gw = client.app[GATEWAY_KEY]
    await until(lambda: gw.costing.prices.lookup("openrouter", "deepseek/deepseek-r1") is not None, "prices")
    return client


async def post(client: Any, body: dict[str, Any], rid: str) -> dict[str, Any]:
    r = await client.post("/chat/completions", json=body, headers={**AUTH, "X-Request-Id": rid})
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def rows(client: Any) -> dict[str, dict[str, Any]]:
    gw = client.app[GATEWAY_KEY]
    await gw.stop(5)
    db = client.app[STORE_KEY].db
    await db.flush()
    cols = ("request_id", "cache", "cost", "cost_saved", "cost_source", "prefix_saved", "cached_tokens",
            "cache_write_tokens", "prompt_tokens", "completion_tokens", "reasoning_tokens", "provider")
    got = await db.fetchall(f"SELECT {', '.join(cols)} FROM requests")
    return {r[0]: dict(zip(cols, r, strict=True)) for r in got}


async def test_reported_cost_is_the_record_and_a_hit_saves_it(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    miss = await post(client, roo_body(stream=False), "m")
    await post(client, roo_body(stream=False), "h")
    got = await rows(client)
    assert got["m"]["cost"] == miss["usage"]["cost"] and got["m"]["cost_source"] == "reported"
    assert got["m"]["provider"] == "FakeProvider" and got["m"]["reasoning_tokens"] > 0
    assert (got["h"]["cache"], got["h"]["cost"], got["h"]["cost_saved"]) == ("HIT", 0, miss["usage"]["cost"])


async def test_without_a_reported_cost_it_is_computed_from_listed_prices(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    fake_server.script(Script(report_cost=False, cached_tokens=40))
    miss = await post(client, roo_body(stream=False), "m")
    assert "cost" not in miss["usage"]
    u = miss["usage"]
    expected = (u["prompt_tokens"] - 40) * P + 40 * READ + u["completion_tokens"] * C
    await post(client, roo_body(stream=False), "h")
    got = await rows(client)
    assert got["m"]["cost_source"] == "computed" and got["m"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert got["m"]["prefix_saved"] == pytest.approx(40 * (P - READ), rel=1e-9)
    assert got["h"]["cost_saved"] == pytest.approx(expected, rel=1e-9) and got["h"]["cost_source"] == "computed"


async def test_config_prices_override_the_list(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy, models=[{"name": "r1", "model": "deepseek/deepseek-r1",
                                           "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 4.0}])
    fake_server.script(Script(report_cost=False))
    miss = await post(client, roo_body(model="r1", stream=False), "m")
    u = miss["usage"]
    got = await rows(client)
    assert got["m"]["cost"] == pytest.approx(u["prompt_tokens"] * 1e-6 + u["completion_tokens"] * 4e-6, rel=1e-9)


async def test_upstream_prompt_cache_saving_in_the_log_stats_and_metrics(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    fake_server.script(Script(cached_tokens=30, cache_write_tokens=5))
    miss = await post(client, roo_body(stream=False), "m")
    assert miss["usage"]["prompt_tokens_details"]["cached_tokens"] == 30
    assert miss["usage"]["cache_read_input_tokens"] == 30  # what Roo reads
    stats = await (await client.get("/stats")).json()
    assert stats["usd_saved_prefix"] == pytest.approx(30 * (P - READ), abs=1e-6)
    assert stats["prefix_cached_tokens"] == 30 and 0 < stats["prefix_hit_rate"] < 1
    text = await (await client.get("/metrics")).text()
    assert 'r1proxy_prefix_cache_tokens_total{model="deepseek-r1",type="read"} 30.0' in text
    assert 'r1proxy_prefix_cache_tokens_total{model="deepseek-r1",type="write"} 5.0' in text
    got = await rows(client)
    assert (got["m"]["cached_tokens"], got["m"]["cache_write_tokens"]) == (30, 5)
    db = client.app[STORE_KEY].db
    day = await db.fetchone("SELECT usd_prefix_saved, upstream_cached_tokens, prefix_hit_rate FROM v_daily")
    assert day is not None and day[0] == pytest.approx(30 * (P - READ)) and day[1] == 30 and day[2] > 0


async def test_free_quota_counts_upstream_calls_only(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    gw = client.app[GATEWAY_KEY]
    await until(lambda: "openrouter" in gw.costing.quota.keys, "/key")
    body = roo_body(model="deepseek-r1-free", stream=False)
    await post(client, body, "a")
    await post(client, body, "b")  # a hit: no quota spent
    fake_server.script(Script(delay_first_byte=0.2))
    other = roo_body(text="another task", model="deepseek-r1-free", stream=False)
    await asyncio.gather(*(post(client, other, f"c{i}") for i in range(3)))  # one call, two followers
    stats = await (await client.get("/stats")).json()
    assert stats["free_quota"]["openrouter"]["used_today"] == 2
    assert stats["free_quota"]["openrouter"]["left_today"] == 48  # the fake's key is on the free tier
    assert stats["free_quota_text"] == "free requests left today: 48 (resets 00:00 UTC)"
    text = await (await client.get("/metrics")).text()
    assert 'r1proxy_free_requests_left_today{upstream="openrouter"} 48.0' in text
    assert 'r1proxy_free_requests_used_today{upstream="openrouter"} 2.0' in text


async def test_daily_limit_429_sets_the_quota_from_its_headers(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(daily_quota=True))
    r = await client.post("/chat/completions", json=roo_body(model="deepseek-r1-free", stream=False), headers=AUTH)
    assert r.status == 429
    stats = await (await client.get("/stats")).json()
    assert stats["free_quota"]["openrouter"]["left_today"] == 0


def test_status_text_carries_the_free_quota() -> None:
    from r1proxy.heartbeat import Heartbeat

    beat = Heartbeat(lambda: (10, 4), lambda: 0, lambda: 0, env={})
    beat.extra = lambda: "free requests left today: 7 (resets 00:00 UTC)"
    assert beat.text().endswith("hit rate 40 % — free requests left today: 7 (resets 00:00 UTC)")


async def test_r1proxy_stats_shows_spent_saved_prefix_saved_and_free_quota(
        proxy: Any, fake_server: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from r1proxy.cli import main
    from tests.test_cli import write_config

    client = await started(proxy)
    fake_server.script(Script(cached_tokens=30))
    await post(client, roo_body(stream=False), "m")
    await post(client, roo_body(stream=False), "h")
    await post(client, roo_body(model="deepseek-r1-free", stream=False), "f")
    await client.close()
    cfg = str(write_config(tmp_path, fake_server.base_url))

    def run() -> str:
        assert main(["--config", cfg, "stats"]) == 0
        return capsys.readouterr().out

    out = await asyncio.to_thread(run)
    lines = {line.split("today")[0].strip(): line for line in out.splitlines() if "today" in line}
    assert "(local cache)" in out and "(upstream prompt cache)" in out, out
    assert "free quota    openrouter: free requests left today: 49 of 50 (resets 00:00 UTC)" in out, out
    assert any(k.startswith("$ spent") for k in lines) and float(lines["$ spent"].split()[3]) > 0


@pytest.mark.parametrize("hit_usage", ["real", "cache-read"])
async def test_hit_usage_decides_what_roo_prices(proxy: Any, fake_server: Any, hit_usage: str) -> None:
    client = await proxy(server={"hit_usage": hit_usage})
    miss = await post(client, roo_body(stream=False), "m")
    hit = await post(client, roo_body(stream=False), "h")
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    usage_chunk = [json.loads(line[6:]) for line in (await r.text()).splitlines()
                   if line.startswith("data: {") and '"usage"' in line][-1]
    prompt = miss["usage"]["prompt_tokens"]
    for u in (hit["usage"], usage_chunk["usage"]):
        assert u["prompt_tokens"] == prompt and u["completion_tokens"] == miss["usage"]["completion_tokens"]
        assert u["cost"] == 0 and u["cost_saved"] == miss["usage"]["cost"]
        if hit_usage == "cache-read":  # Roo prices the prompt at its cache-read price
            assert u["cache_read_input_tokens"] == prompt and u["prompt_tokens_details"]["cached_tokens"] == prompt
        else:  # the original's figures, which Roo prices in full
            assert u.get("cache_read_input_tokens", 0) == miss["usage"].get("cache_read_input_tokens", 0) == 0
    assert miss["usage"].get("cache_read_input_tokens", 0) == 0  # a miss is never changed


@pytest.mark.parametrize("cancel", [True, False], ids=["handler-cancelled", "handler-kept"])
async def test_a_leader_that_leaves_still_pays_for_the_answer_finished_for_the_cache(
        aiohttp_client: Any, make_config: Any, fake_server: Any, cancel: bool) -> None:
    """finish_on_disconnect reads the answer to the end (and the upstream bills it): the money is
    recorded on the request that started the call, even though its client left."""
    from tests.helpers import leave_after, settle, start

    client = await start(aiohttp_client, make_config, cancel)
    fake_server.script(Script(gap=0.02, chunk_chars=8))
    await leave_after(client, roo_body(), 2)
    await settle(client)
    (bill,) = fake_server.fake.generations.values()
    await post(client, roo_body(stream=False), "h")
    got = await rows(client)
    (leader,) = [r for rid, r in got.items() if rid != "h"]
    assert leader["cost"] == pytest.approx(bill["total_cost"]) and leader["cost_source"] == "reported"
    assert got["h"]["cost_saved"] == pytest.approx(bill["total_cost"])
    db = client.app[STORE_KEY].db
    (usd,) = await db.fetchone("SELECT SUM(usd) FROM key_usage") or (0.0,)
    assert usd == pytest.approx(bill["total_cost"])  # and against the key's daily budget


def test_a_reported_cost_needs_no_price_lookup() -> None:
    """A hit (or a call) whose upstream reported its cost is priced by that figure: no price is looked
    up for it (figures runs for every finished request). A computed cost or prefix saving still is."""
    from r1proxy.config import build_config
    from r1proxy.costing import COMPUTED, REPORTED, Costing
    from r1proxy.prices import Price
    from r1proxy.usage import Usage

    costing = Costing(build_config({}, env={}))
    looked: list[tuple[str, str]] = []

    def lookup(upstream: str, model: str) -> Price | None:
        looked.append((upstream, model))
        return Price(1e-6, 2e-6, 5e-7, None)

    costing.price = lookup  # type: ignore[method-assign]
    reported = Usage(prompt=100, completion=10, cost=0.25, cost_reported=True)
    assert costing.figures("HIT", reported, "openrouter", "m").saved == 0.25
    assert costing.figures("MISS", reported, "openrouter", "m").source == REPORTED
    assert costing.figures("MISS", Usage(prompt=100, cost=0.25, cost_reported=True, cache_discount=0.01),
                           "openrouter", "m").prefix_saved == 0.01
    assert looked == []
    assert costing.figures("HIT", Usage(prompt=100, completion=10), "openrouter", "m").source == COMPUTED
    cached = costing.figures("MISS", Usage(prompt=100, cost=0.25, cost_reported=True, cached=40), "openrouter", "m")
    assert cached.prefix_saved == pytest.approx(40 * (1e-6 - 5e-7)) and cached.source == REPORTED
    assert looked == [("openrouter", "m")] * 2
