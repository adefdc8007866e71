"""daily_totals: maintained on write (rollups.insert_requests); v_daily reads it and agrees with the request log."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.db import Database
from r1proxy.migrations import MIGRATIONS, SERVED_FROM_CACHE, migrate
from r1proxy.reqlog import RequestLog

DAY1 = 86_400.0 * 19_000
DAY2 = DAY1 + 86_400.0


def row(ts: float, cache: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ts": ts, "request_id": f"r-{ts}", "cache": cache, "status": 200,
                            "prompt_tokens": 1000, "completion_tokens": 100, "reasoning_tokens": 60,
                            "cost": 0.0, "cost_saved": 0.0}
    base.update(kw)
    return base


ROWS = [
    row(DAY1, "MISS", cost=0.001, cached_tokens=800, prefix_saved=0.0004, cost_source="reported"),
    row(DAY1 + 1, "HIT", cost_saved=0.001, tier="memory"),
    row(DAY1 + 2, "COALESCED", cost_saved=0.001),
    row(DAY1 + 3, "MISS", cost=0.002, cost_source="computed", cache_write_tokens=50, failed_attempts=2),
    row(DAY2, "STALE", cost_saved=0.002),
    row(DAY2 + 1, "BYPASS", status=502, error_type="upstream_error", prompt_tokens=0, completion_tokens=0,
        reasoning_tokens=0, failed_attempts=3),
    {"ts": DAY2 + 2},  # everything else NULL
]

# What v_daily meant before the table (m004): the same figures aggregated from the request log.
FROM_LOG = f"""
SELECT date(ts, 'unixepoch'), COUNT(*), SUM(cache IN {SERVED_FROM_CACHE}),
       SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN prompt_tokens + completion_tokens ELSE 0 END),
       ROUND(COALESCE(SUM(cost_saved), 0), 9), SUM(status >= 500 OR COALESCE(error_type, '') LIKE 'upstream%'),
       ROUND(COALESCE(SUM(cost), 0), 9)
FROM requests GROUP BY 1 ORDER BY 1
"""
FROM_VIEW = ("SELECT day, requests, hits, tokens_saved, ROUND(usd_saved, 9), upstream_errors, ROUND(usd_spent, 9) "
             "FROM v_daily ORDER BY day")


async def test_v_daily_is_maintained_on_write_and_matches_the_log(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        log = RequestLog(db)
        log.record_many(ROWS[:3])
        for r in ROWS[3:]:
            log.record(r)
        await db.flush()
        assert await db.fetchall(FROM_VIEW) == [tuple(r) for r in await db.fetchall(FROM_LOG)]
        day1 = dict(zip(("day", "prefix_hit_rate", "usd_prefix_saved", "upstream_cached_tokens",
                         "upstream_cache_write_tokens", "upstream_reasoning_tokens", "costs_computed",
                         "failed_attempts", "upstream_requests"),
                        (await db.fetchall("SELECT day, prefix_hit_rate, usd_prefix_saved, upstream_cached_tokens, "
                                           "upstream_cache_write_tokens, upstream_reasoning_tokens, costs_computed, "
                                           "failed_attempts, upstream_requests FROM v_daily"))[0], strict=True))
        assert day1["prefix_hit_rate"] == 0.4  # 800 cached of 2000 upstream prompt tokens
        assert day1["usd_prefix_saved"] == pytest.approx(0.0004)
        assert (day1["upstream_cached_tokens"], day1["upstream_cache_write_tokens"]) == (800, 50)
        assert day1["upstream_reasoning_tokens"] == 120  # hits' reasoning is not upstream work
        assert (day1["costs_computed"], day1["failed_attempts"], day1["upstream_requests"]) == (1, 2, 2)
        # pruning the request log keeps the days
        log.prune(DAY2 + 100)
        await db.flush()
        assert (await db.fetchone("SELECT COUNT(*) FROM requests")) == (0,)
        assert [r[:3] for r in await db.fetchall(FROM_VIEW)] == [("2022-01-08", 4, 2), ("2022-01-09", 3, 1)]
    finally:
        await db.close()


def test_upgrade_backfills_the_days_already_logged(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    before = [fn for fn in MIGRATIONS if fn.__name__ < "m010"]
    for fn in before:
        fn(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    conn.executemany("INSERT INTO _r1proxy_migrations VALUES (?, 0)", [(fn.__name__,) for fn in before])
    cols = ("ts", "cache", "status", "prompt_tokens", "completion_tokens", "cost", "cost_saved")
    conn.executemany(f"INSERT INTO requests ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(DAY1, "MISS", 200, 10, 5, 0.5, 0), (DAY1 + 1, "HIT", 200, 10, 5, 0, 0.5),
                      (DAY2, "COALESCED", 200, 10, 5, 0, 0.5)])
    old = conn.execute("SELECT day, requests, hits, hit_rate, tokens_saved, usd_saved, upstream_errors, usd_spent "
                       "FROM v_daily").fetchall()
    assert "m012_daily_totals" in migrate(conn)
    new = conn.execute("SELECT day, requests, hits, hit_rate, tokens_saved, usd_saved, upstream_errors, usd_spent "
                       "FROM v_daily").fetchall()
    assert new == old == [("2022-01-08", 2, 1, 0.5, 15, 0.5, 0, 0.5), ("2022-01-09", 1, 1, 1.0, 15, 0.5, 0, 0)]
    conn.close()
