"""The ±1 % target (#14): a replay of Roo-shaped traffic through the proxy, every request's spent + saved
compared with what the fake OpenRouter billed (its /generation record: total_cost, cache_discount).

Covered: misses (JSON and streamed, with reasoning tokens), a hit of each shape, coalesced followers,
a stale answer, an upstream prefix-cache hit with cache writes, a miss whose usage carried no cost
(computed from the listed prices) and its hit, and a :free model. The reference for a request
served from the cache is the bill of the call whose answer it got; for one that made a call, that
call's bill, and its cache_discount for the prefix saving.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.rules import served_from_cache
from tests.conftest import LOCAL_KEY
from tests.fake_upstream import Script
from tests.roo import roo_body
from tests.test_costing import started

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
T0 = 1_800_000_000.0
TOLERANCE = 0.01


async def send(client: Any, body: dict[str, Any], rid: str) -> str:
    """Posts one request; returns the generation id of the answer it got."""
    r = await client.post("/chat/completions", json=body, headers={**AUTH, "X-Request-Id": rid})
    text = await r.text()
    assert r.status == 200, text
    if body.get("stream"):
        first = next(line for line in text.splitlines() if line.startswith("data: {"))
        return str(json.loads(first[6:])["id"])
    return str(json.loads(text)["id"])


def task(text: str, **kw: Any) -> dict[str, Any]:
    # a long Roo system prompt: realistic prompt sizes (thousands of tokens), so the costs are not tiny
    body = roo_body(text, **kw)
    body["messages"][0]["content"] = "You are Roo, a highly skilled software engineer. " * 400
    return body


async def test_spent_plus_saved_matches_the_bill_within_one_percent(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy, cache={"stale_if_error": 3600}, retry={"max_attempts": 1})
    gw = client.app[GATEWAY_KEY]
    now = [T0]
    gw.clock.wall = lambda: now[0]
    served: dict[str, str] = {}  # request id -> generation id of its answer
    big = Script(answer_size=3000, reasoning="Let me think. " * 300)

    fake_server.script(big)
    served["miss-json"] = await send(client, task("task A", stream=False), "miss-json")
    served["hit-stream"] = await send(client, task("task A"), "hit-stream")
    fake_server.script(Script(delay_first_byte=0.3, answer_size=2000))
    ids = await asyncio.gather(*(send(client, task("task B", stream=False), f"co-{i}") for i in range(4)))
    served.update({f"co-{i}": g for i, g in enumerate(ids)})
    fake_server.script(Script(cached_tokens=4000, cache_write_tokens=500, answer_size=1000))
    served["prefix"] = await send(client, task("task C"), "prefix")
    fake_server.script(Script(report_cost=False, cached_tokens=1000, answer_size=1500))
    served["computed"] = await send(client, task("task D", stream=False), "computed")
    served["computed-hit"] = await send(client, task("task D", stream=False), "computed-hit")
    served["to-stale"] = await send(client, task("task E", stream=False, cache={"ttl": 60}), "to-stale")
    now[0] = T0 + 100  # expired, inside stale_if_error
    fake_server.script(Script(status=503))
    served["stale"] = await send(client, task("task E", stream=False, cache={"ttl": 60}), "stale")
    served["free"] = await send(client, task("task F", model="deepseek-r1-free", stream=False), "free")
    fake_server.script(Script(reasoning="Hmm. " * 2000, answer_size=500))
    served["reasoning-stream"] = await send(client, task("task G"), "reasoning-stream")

    await gw.stop(5)
    snap = gw.metrics.snapshot()
    db = client.app[STORE_KEY].db
    await db.flush()
    cols = ("request_id", "cache", "cost", "cost_saved", "prefix_saved", "cost_source", "reasoning_tokens")
    rows = {r[0]: dict(zip(cols, r, strict=True))
            for r in await db.fetchall(f"SELECT {', '.join(cols)} FROM requests")}
    bills = fake_server.fake.generations
    assert set(rows) == set(served)
    assert sorted(r["cache"] for r in rows.values()) == sorted(
        ["MISS", "HIT", "MISS", "COALESCED", "COALESCED", "COALESCED", "MISS", "MISS", "HIT", "MISS", "STALE",
         "MISS", "MISS"])
    worst = 0.0
    totals = {"spent": 0.0, "saved": 0.0, "prefix": 0.0}
    for rid, row in rows.items():
        bill = bills[served[rid]]
        from_cache = served_from_cache(row["cache"])
        ref_spent, ref_saved = (0.0, bill["total_cost"]) if from_cache else (bill["total_cost"], 0.0)
        ref_prefix = 0.0 if from_cache else bill["cache_discount"]
        assert (row["cost"] == 0) == (ref_spent == 0) and (row["cost_saved"] == 0) == (ref_saved == 0), (rid, row)
        for got, ref in ((row["cost"] + row["cost_saved"], ref_spent + ref_saved), (row["prefix_saved"], ref_prefix)):
            if ref == 0:
                assert got == 0, (rid, row, bill)
            else:
                err = abs(got - ref) / ref
                worst = max(worst, err)
                assert err <= TOLERANCE, (rid, row, bill)
        totals["spent"] += ref_spent
        totals["saved"] += ref_saved
        totals["prefix"] += ref_prefix
    assert worst <= TOLERANCE
    assert rows["computed"]["cost_source"] == "computed" and rows["computed-hit"]["cost_source"] == "computed"
    assert rows["miss-json"]["cost_source"] == "reported" and rows["reasoning-stream"]["reasoning_tokens"] > 1000
    assert rows["free"]["cost"] == 0 and rows["free"]["cost_saved"] == 0
    # the same money in /stats, v_daily and the key's daily budget
    assert abs(snap["usd_spent"] - totals["spent"]) <= max(1e-6, TOLERANCE * totals["spent"])
    assert abs(snap["usd_saved"] - totals["saved"]) <= max(1e-6, TOLERANCE * totals["saved"])
    assert abs(snap["usd_saved_prefix"] - totals["prefix"]) <= max(1e-6, TOLERANCE * totals["prefix"])
    days = await db.fetchall("SELECT SUM(usd_spent), SUM(usd_saved), SUM(usd_prefix_saved) FROM v_daily")
    spent, saved, prefix = days[0]
    assert abs(spent - totals["spent"]) <= TOLERANCE * totals["spent"]
    assert abs(saved - totals["saved"]) <= TOLERANCE * totals["saved"]
    assert abs(prefix - totals["prefix"]) <= TOLERANCE * totals["prefix"]
    (usd,) = await db.fetchone("SELECT SUM(usd) FROM key_usage") or (0.0,)
    assert abs(usd - totals["spent"]) <= TOLERANCE * totals["spent"]
