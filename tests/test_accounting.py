"""What finished requests leave behind: one definition of "served from cache" (a coalesced
follower costs nothing), and failed upstream attempts counted from the flight's own record."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.rules import COALESCED, HIT, MISS, SERVED_FROM_CACHE, STALE, served_from_cache, sql_in
from tests.conftest import LOCAL_KEY
from tests.fake_upstream import Script
from tests.helpers import post
from tests.roo import roo_body

COST = 0.000125


def test_one_definition_of_served_from_cache() -> None:
    assert {HIT, STALE, COALESCED} == SERVED_FROM_CACHE and not served_from_cache(MISS)
    from r1proxy import migrations

    assert sql_in(SERVED_FROM_CACHE) == migrations.SERVED_FROM_CACHE


async def test_coalesced_followers_cost_nothing(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cost": COST}
    fake_server.script(Script(delay_first_byte=0.3, usage=usage))
    results = await asyncio.gather(*(post(client, roo_body(stream=False)) for _ in range(5)))
    assert fake_server.fake.count("/chat/completions") == 1
    assert sorted(r.headers["X-Cache"] for r in results) == ["COALESCED"] * 4 + ["MISS"]
    gw = client.app[GATEWAY_KEY]
    await gw.stop(5)
    snap = gw.metrics.snapshot()
    assert abs(snap["usd_spent"] - COST) < 1e-12, snap
    assert abs(snap["usd_saved"] - 4 * COST) < 1e-12, snap
    db = client.app[STORE_KEY].db
    await db.flush()
    spent, saved = await db.fetchone("SELECT SUM(cost), SUM(cost_saved) FROM requests") or (0, 0)
    assert abs(spent - COST) < 1e-12 and abs(saved - 4 * COST) < 1e-12
    day = await db.fetchone("SELECT usd_spent, usd_saved, hits FROM v_daily") or ()
    assert abs(day[0] - COST) < 1e-12 and abs(day[1] - 4 * COST) < 1e-12 and day[2] == 4
    usage_row = await db.fetchone("SELECT usd FROM key_usage")
    assert usage_row is not None and abs(usage_row[0] - COST) < 1e-12  # the key's daily_usd budget


async def test_failed_upstream_attempts_come_from_the_flight(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(status=503), Script(status=503), Script())
    r = await post(client, roo_body(stream=False))
    assert r.status == 200 and fake_server.fake.count("/chat/completions") == 3
    gw = client.app[GATEWAY_KEY]
    await gw.stop(5)
    snap = gw.metrics.snapshot()
    assert snap["upstream_errors"] == 2, json.dumps(snap)


async def test_stats_show_pacing_queues_and_key_slots(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "paced", "model": "deepseek/deepseek-r1:free", "rpm": 20,
                                  "max_parallel": 1}],
                         keys=[{"name": "roo", "key_sha256": _sha(LOCAL_KEY)}])
    r = await client.get("/stats")
    assert r.status == 200
    stats = await r.json()
    assert stats["keys"] == {"roo": {"in_flight": 0}}
    (paced,) = [u for u in stats["upstreams"] if u["name"].endswith("deepseek-r1:free")]
    assert paced["queued"] == 0 and paced["in_flight"] == 0 and paced["cooling_s"] == 0


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()
