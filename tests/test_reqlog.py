"""Request log and key usage: rows written through the writer, read back for `r1proxy stats`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from r1proxy.db import Database
from r1proxy.reqlog import RequestLog
from r1proxy.rules import utc_day

DAY1 = 86_400.0 * 19_000  # 2022-01-08 00:00 UTC
DAY2 = DAY1 + 86_400.0


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "r1proxy.db")
    try:
        yield database
    finally:
        await database.close()


def row(ts: float, cache: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ts": ts, "request_id": f"r-{ts}", "key_name": "alice", "alias": "deepseek-r1",
                            "upstream_model": "deepseek/deepseek-r1", "cache": cache, "status": 200,
                            "prompt_tokens": 100, "completion_tokens": 50, "cost": 0.0, "cost_saved": 0.0}
    base.update(kw)
    return base


async def test_record_ignores_unknown_keys(db: Database) -> None:
    log = RequestLog(db)
    log.record({**row(DAY1, "MISS"), "not_a_column": "x", "messages": ["secret prompt"]})
    log.record({"ts": DAY1 + 1})  # everything else NULL
    await db.flush()
    assert db.write_errors == 0
    rows = await db.fetchall("SELECT ts, alias, cache, status FROM requests ORDER BY ts")
    assert [tuple(r) for r in rows] == [(DAY1, "deepseek-r1", "MISS", 200), (DAY1 + 1, None, None, None)]


async def test_prune(db: Database) -> None:
    log = RequestLog(db)
    for ts in (DAY1, DAY1 + 10, DAY2):
        log.record(row(ts, "MISS"))
    log.prune(DAY1 + 10)
    await db.flush()
    assert [r[0] for r in await db.fetchall("SELECT ts FROM requests ORDER BY ts")] == [DAY1 + 10, DAY2]


async def test_usage_accumulates_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    log = RequestLog(db)
    day = utc_day(DAY1)
    assert day == "2022-01-08"
    log.add_usage("alice", day, 1, 150, 0.01)
    log.add_usage("alice", day, 2, 300, 0.02)
    log.add_usage("bob", day, 1, 10, 0.0)
    log.add_usage("alice", utc_day(DAY2), 5, 5, 5.0)
    await db.flush()
    usage = await log.load_usage(day)
    assert usage.keys() == {"alice", "bob"}
    assert usage["alice"][:2] == (3, 450) and usage["alice"][2] == pytest.approx(0.03)
    await db.close()

    db = await Database.open(path)
    try:
        assert (await RequestLog(db).load_usage(day))["bob"] == (1, 10, 0.0)
        assert await RequestLog(db).load_usage("1999-01-01") == {}
    finally:
        await db.close()


async def test_summary_async_and_sync_agree(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    log = RequestLog(db)
    log.record(row(DAY1, "MISS", cost=0.05))
    log.record(row(DAY1 + 5, "HIT", cost_saved=0.05, tier="memory"))
    log.record(row(DAY1 + 9, "MISS", status=502, error_type="upstream_error", alias="other"))
    log.record(row(DAY2 + 1, "MISS", cost=0.04))
    log.record(row(DAY2 + 2, "STALE", cost_saved=0.04))
    log.record(row(DAY2 + 3, "COALESCED", cost_saved=0.04))
    log.record(row(DAY2 + 4, "BYPASS", status=429, error_type="rate_limited", cost=0.0))
    await db.flush()
    got = await log.summary(now=DAY2 + 100)
    await db.close()

    assert got["day"] == "2022-01-09"
    overall, today = got["overall"], got["today"]
    assert (overall["requests"], overall["hits"], overall["upstream_errors"]) == (7, 3, 1)
    assert overall["hit_rate"] == round(3 / 7, 4)
    assert overall["tokens_saved"] == 450
    assert overall["usd_saved"] == pytest.approx(0.13)
    assert overall["usd_spent"] == pytest.approx(0.09)
    assert (today["requests"], today["hits"], today["upstream_errors"]) == (4, 2, 0)
    assert today["hit_rate"] == 0.5 and today["usd_spent"] == pytest.approx(0.04)
    assert got["top_models"] == [{"model": "deepseek-r1", "requests": 6}, {"model": "other", "requests": 1}]


async def test_summary_of_an_empty_log(db: Database) -> None:
    got = await RequestLog(db).summary(now=DAY1)
    assert got["overall"] == {"requests": 0, "hits": 0, "tokens_saved": 0, "usd_saved": 0,
                              "upstream_errors": 0, "usd_spent": 0, "usd_prefix_saved": 0, "hit_rate": 0.0}
    assert got["top_models"] == []
