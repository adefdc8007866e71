"""What finished requests leave behind: one definition of "served from cache" (a coalesced
follower costs nothing), and failed upstream attempts counted from the flight's own record."""

from __future__ import annotations

import asyncio
import json
import time
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


class _Log:
    """A RequestLog that only counts what it is handed (rows per record_many call, usage calls)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.usage: list[tuple[str, str, int, int, float]] = []
        self.rows: list[Any] = []

    def record_values(self, rows: list[Any]) -> None:
        self.batches.append(len(rows))
        self.rows = rows

    def add_usage(self, key_name: str, day: str, requests: int, tokens: int, usd: float) -> None:
        self.usage.append((key_name, day, requests, tokens, usd))

    def prune(self, older_than_ts: float) -> None:
        pass


class _Tiers:
    async def touch_slow(self, hits: Any) -> None:
        pass


def _accounting(log: _Log) -> Any:
    from r1proxy.accounting import Accounting
    from r1proxy.clock import Clock
    from r1proxy.config import build_config
    from r1proxy.metrics import Metrics
    from r1proxy.ratelimit import KeyLimiter

    cfg = build_config({}, env={})
    return Accounting(cfg, Metrics(process_metrics=False), KeyLimiter(cfg.keys), log,  # type: ignore[arg-type]
                      _Tiers(), lambda t: None, Clock())  # type: ignore[arg-type]


def _hit(i: int) -> Any:
    from r1proxy.accounting import RequestRecord

    return RequestRecord(request_id=f"r{i}", t0=0.0, key_name="local", alias="r1", cache=HIT, tier="memory",
                         latency=0.0002, ts=1.0e9 + i)


async def test_the_request_log_goes_to_the_writer_in_few_large_batches() -> None:
    """Accounting batches (every 32 requests under load) hand their rows and key usage to the writer
    together, at most LOG_DELAY_S after the first: each hand-off is a commit and a trip to the writer
    thread, and bigger batches cost the writer less per row. ``flush`` hands everything over at once
    (limits, /stats, shutdown), so nothing waits or is lost at a stop."""
    from r1proxy import accounting
    from r1proxy.rules import utc_day

    log = _Log()
    day = utc_day(time.time())
    acc = _accounting(log)
    for i in range(200):  # seven accounting batches, well within LOG_DELAY_S
        acc.finished(_hit(i))
        await asyncio.sleep(0)
    await asyncio.sleep(accounting.DELAY_S + 0.02)
    assert log.batches == [] and not acc._pending  # accounted (metrics, usage in memory), log rows held
    assert acc.usage[("local", day)][0] == 200
    await asyncio.sleep(accounting.LOG_DELAY_S + 0.2)
    assert log.batches == [200] and [u[:3] for u in log.usage] == [("local", day, 200)]
    for i in range(5):
        acc.finished(_hit(i))
    acc.flush()  # at once: what /stats, limits and a shutdown want
    assert log.batches == [200, 5] and [u[2] for u in log.usage] == [200, 5]
    await asyncio.sleep(accounting.LOG_DELAY_S + 0.1)
    assert log.batches == [200, 5]  # nothing written twice


def test_a_request_log_row_holds_every_column_of_the_record() -> None:
    """The accounting builds the row as values in REQUEST_COLUMNS order: each column gets its own fact."""
    from r1proxy.accounting import RequestRecord
    from r1proxy.logsetup import Access, access_line
    from r1proxy.rollups import REQUEST_COLUMNS
    from r1proxy.route import FailedAttempt
    from r1proxy.usage import Usage

    log = _Log()
    acc = _accounting(log)
    usage = Usage(prompt=11, completion=22, reasoning=3, cost=0.5, cost_reported=True, cached=4, cache_write=5)
    rec = RequestRecord(request_id="rid", t0=0.0, key_name="kn", alias="al", upstream_model="um", stream=True,
                        cache=MISS, tier="ti", status=502, error_type="et", ttfb=0.0123456, route="ro",
                        cache_key="ck", request_bytes=7, response_bytes=8, usage=usage, generation_id="gi",
                        latency=0.0456789, ts=1234.5, prompt="pr", provider="pv", session_id="si",
                        failed_attempts=[FailedAttempt("up/m", 0, "timeout")], semantic_source="ss",
                        semantic_similarity=0.9)
    acc._pending = [rec]
    acc.flush()
    (values,) = log.rows
    assert len(values) == len(REQUEST_COLUMNS)
    assert dict(zip(REQUEST_COLUMNS, values, strict=True)) == {
        "ts": 1234.5, "request_id": "rid", "key_name": "kn", "alias": "al", "upstream_model": "um", "route": "ro",
        "stream": 1, "cache": MISS, "tier": "ti", "status": 502, "error_type": "et", "latency_ms": 45.679,
        "ttfb_ms": 12.346, "prompt_tokens": 11, "completion_tokens": 22, "reasoning_tokens": 3, "cost": 0.5,
        "cost_saved": 0.0, "request_bytes": 7, "response_bytes": 8, "generation_id": "gi", "cache_key": "ck",
        "prompt": "pr", "cached_tokens": 4, "cache_write_tokens": 5, "cost_source": "reported",
        "prefix_saved": 0.0, "failed_attempts": 1, "provider": "pv", "session_id": "si", "semantic_source": "ss",
        "semantic_similarity": 0.9}
    line = Access("rid", "kn", "al", 502, MISS, "ti", 45.679, 12.346, 11, 22, 8, "ro", "et")
    assert access_line(line.fields()) == ("request_id=rid key_name=kn model=al status=502 cache=MISS tier=ti "
                                          "ms=45.679 ttfb_ms=12.346 tokens=11/22 bytes=8 route=ro error=et")


def test_a_batch_prices_the_hits_of_one_entry_once() -> None:
    """Hits of one entry share its Usage: a batch works their money out once (figures runs per
    distinct request shape, not per request); every row and total is what it was per request."""
    from r1proxy.rules import utc_day
    from r1proxy.usage import Usage

    log = _Log()
    acc = _accounting(log)
    calls: list[Any] = []
    figures = acc.costing.figures

    def counted(*args: Any) -> Any:
        calls.append(args)
        return figures(*args)

    acc.costing.figures = counted
    usage, other = (Usage(prompt=10, completion=5, cost=c, cost_reported=True) for c in (0.01, 0.02))
    pending = [_hit(i) for i in range(33)]
    for i, rec in enumerate(pending):
        rec.usage = other if i == 32 else usage
    acc._pending = pending
    acc.flush()
    assert len(calls) == 2
    assert [row[17] for row in log.rows] == [0.01] * 32 + [0.02]  # cost_saved, per row
    assert acc.usage[("local", utc_day(time.time()))] == [33, 0, 0.0]
    assert acc.metrics.snapshot()["usd_saved"] == round(32 * 0.01 + 0.02, 6)
