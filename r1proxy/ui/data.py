"""Every database read the dashboard makes, on its own read-only SQLite connection.

``UiData`` opens ``r1proxy.db`` with ``mode=ro`` on one private thread, so a dashboard query can
never write, never hold the cache writer's lock, and never runs on the event loop. The overview
reads only ``requests_daily`` and ``requests_hourly`` (kept on write with every request-log batch by
rollups.py, m050-m053, m060);
the request browser pages by id (keyset) over the indexes of m051. New request-log columns
(e.g. the cost issue's) are adopted here and nowhere else in ``r1proxy.ui``.
Times are Unix seconds; days and hours are UTC.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zstandard

from r1proxy import rules
from r1proxy.migrations import SERVED_FROM_CACHE

T = TypeVar("T")

HOUR = 3600
DAY = 86400
HOURS_SHOWN = 48
DAYS_SHOWN = 30
CACHE_STATES = (rules.HIT, rules.STALE, rules.COALESCED, rules.MISS, rules.BYPASS, rules.NONE)

_SUMS = ("requests", "errors", "rate_limited", "client_errors", "free_requests", "prompt_tokens",
         "completion_tokens", "reasoning_tokens", "cost", "cost_saved", "prefix_saved", "cached_tokens")
_MONEY = ("cost", "cost_saved", "prefix_saved")
# The 30-day figures come from requests_daily (one row per day, alias and outcome), the 48-hour
# series from requests_hourly: a few hundred rows either way, however long the request log.
_BY_OUTCOME = (f"SELECT cache, tier, {', '.join(f'SUM({c})' for c in _SUMS)} FROM requests_daily "
               "WHERE day >= ? GROUP BY cache, tier")
_SERIES_SUMS = f"""SUM(requests),
       SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN requests ELSE 0 END),
       SUM(CASE WHEN cache = 'MISS' THEN requests ELSE 0 END),
       SUM(errors + rate_limited), SUM(cost), SUM(cost_saved), SUM(prefix_saved),
       SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN 0 ELSE prompt_tokens + completion_tokens END),
       SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN prompt_tokens + completion_tokens ELSE 0 END)"""
_HOURLY_SERIES = f"SELECT hour, {_SERIES_SUMS} FROM requests_hourly WHERE hour >= ? GROUP BY hour ORDER BY hour"
_DAILY_SERIES = f"SELECT day, {_SERIES_SUMS} FROM requests_daily WHERE day >= ? GROUP BY day ORDER BY day"
_BY_MODEL = f"""
SELECT alias, SUM(requests), SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN requests ELSE 0 END), SUM(cost),
       SUM(cost_saved), SUM(prefix_saved)
FROM requests_daily WHERE day >= ? GROUP BY alias ORDER BY SUM(cost) + SUM(cost_saved) DESC, alias LIMIT 20
"""
_BY_KEY = ("SELECT key_name, SUM(requests), SUM(tokens), SUM(usd) FROM key_usage WHERE day >= ? "
           "GROUP BY key_name ORDER BY SUM(usd) DESC, key_name LIMIT 20")
SERIES_FIELDS = ("requests", "hits", "misses", "errors", "cost", "saved", "prefix_saved", "tokens_spent",
                 "tokens_saved")

LIST_COLUMNS = ("id", "ts", "key_name", "alias", "upstream_model", "cache", "tier", "status", "error_type",
                "latency_ms", "ttfb_ms", "prompt_tokens", "completion_tokens", "cost", "cost_saved", "stream")
DETAIL_COLUMNS = (*LIST_COLUMNS, "request_id", "route", "reasoning_tokens", "request_bytes", "response_bytes",
                  "generation_id", "cache_key", "prompt")
MODEL_COUNT_CAP = 10_000
# Distinct models by hopping along idx_cache_entries_model: one seek per model.
_DISTINCT_MODELS = ("WITH RECURSIVE m(model) AS (SELECT MIN(model) FROM cache_entries UNION ALL "
                    "SELECT (SELECT MIN(model) FROM cache_entries WHERE model > m.model) FROM m "
                    "WHERE m.model IS NOT NULL) SELECT model FROM m WHERE model IS NOT NULL")
_MODEL_COUNT = "SELECT COUNT(*) FROM (SELECT 1 FROM cache_entries WHERE model = ? LIMIT ?)"
CACHE_COLUMNS = ("key", "model", "created_at", "last_hit_at", "hits", "expires_at", "stored_bytes", "raw_bytes",
                 "preview_user", "preview_answer")


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What the request browser was asked for; every field optional."""

    key: str = ""
    model: str = ""
    status: str = ""  # "200", "4xx", "5xx" or "error" (status >= 400)
    cache: str = ""  # one of CACHE_STATES
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        conds: list[str] = []
        params: list[Any] = []
        if self.key:
            conds.append("key_name = ?")
            params.append(self.key)
        if self.model:
            conds.append("alias = ?")
            params.append(self.model)
        if self.cache:
            conds.append("cache = ?")
            params.append(self.cache)
        if self.status == "error":
            conds.append("status >= 400")
        elif len(self.status) == 3 and self.status.endswith("xx"):
            lo = int(self.status[0]) * 100
            conds.append("status >= ? AND status < ?")
            params += [lo, lo + 100]
        elif self.status:
            conds.append("status = ?")
            params.append(int(self.status))
        if self.since is not None:
            conds.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            conds.append("ts < ?")
            params.append(self.until)
        return conds, params


def outcome(cache: str, tier: str) -> str:
    """How a request was served, as the overview names it: memory, disk, redis, stale, coalesced, miss, …"""
    if cache == "HIT":
        return {"sqlite": "disk", "": "hit"}.get(tier, tier)
    return (cache or "none").lower()


def day_start(now: float) -> float:
    return math.floor(now / DAY) * DAY


def _block(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Totals and per-outcome counts from (cache, tier, sums...) rows."""
    tot = dict.fromkeys(_SUMS, 0.0)
    by: dict[str, int] = {}
    served = spent_tokens = saved_tokens = 0
    for cache, tier, *sums in rows:
        d = dict(zip(_SUMS, sums, strict=True))
        for k, v in d.items():
            tot[k] += v or 0
        name = outcome(cache, tier)
        by[name] = by.get(name, 0) + int(d["requests"])
        tokens = int(d["prompt_tokens"] + d["completion_tokens"])
        if cache in rules.SERVED_FROM_CACHE:
            served += int(d["requests"])
            saved_tokens += tokens
        else:
            spent_tokens += tokens
    n = int(tot["requests"])
    out: dict[str, Any] = {k: (float(v) if k in _MONEY else int(v)) for k, v in tot.items()}
    out.update(hits=served, hit_rate=round(served / n, 4) if n else 0.0, tokens_spent=spent_tokens,
               tokens_saved=saved_tokens, by_outcome=dict(sorted(by.items(), key=lambda kv: -kv[1])),
               rate_by_outcome={k: round(v / n, 4) for k, v in by.items()} if n else {})
    return out


def _series(rows: Sequence[Sequence[Any]], start: float, step: int, n: int) -> dict[str, list[Any]]:
    """Column arrays (uPlot's format) with every step present, zeros where nothing was logged."""
    found = {int(r[0]): r[1:] for r in rows}
    out: dict[str, list[Any]] = {"t": []}
    for f in SERIES_FIELDS:
        out[f] = []
    for i in range(n):
        t = int(start) + i * step
        vals = found.get(t, (0,) * len(SERIES_FIELDS))
        out["t"].append(t)
        for f, v in zip(SERIES_FIELDS, vals, strict=True):
            out[f].append(float(v or 0) if f in ("cost", "saved", "prefix_saved") else int(v or 0))
    return out


def _answer(body: bytes | None) -> dict[str, Any] | None:
    """The stored completion's message parts (content, reasoning, tool calls, usage)."""
    if not body:
        return None
    try:
        completion = json.loads(zstandard.ZstdDecompressor().decompress(body))
    except (zstandard.ZstdError, ValueError):
        return {"error": "the stored answer could not be read"}
    if not isinstance(completion, dict):
        return None
    choices = completion.get("choices") or [{}]
    msg = (choices[0] or {}).get("message") or {}
    reasoning = msg.get("reasoning") or msg.get("reasoning_content") or ""
    return {"content": msg.get("content") or "", "reasoning": reasoning,
            "tool_calls": msg.get("tool_calls") or [], "finish_reason": choices[0].get("finish_reason"),
            "usage": completion.get("usage") or {}, "model": completion.get("model") or ""}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


class UiData:
    """The read-only connection and every query; ``await d.call(d.overview, now)`` runs one off the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1proxy-ui-reader")
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                         timeout=2.0)
            self._conn.execute("PRAGMA query_only = ON")
        return self._conn

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self.call(self.close_sync)
        self._pool.shutdown(wait=True)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, params).fetchall()

    # -- overview -----------------------------------------------------------------------------

    def overview(self, now: float) -> dict[str, Any]:
        today = day_start(now)
        month = today - (DAYS_SHOWN - 1) * DAY
        hour0 = math.floor(now / HOUR) * HOUR - (HOURS_SHOWN - 1) * HOUR
        return {
            "now": now, "day": today, "resets_at": today + DAY,
            "today": _block(self._all(_BY_OUTCOME, (today,))),
            "month": _block(self._all(_BY_OUTCOME, (month,))),
            "hourly": _series(self._all(_HOURLY_SERIES, (hour0,)), hour0, HOUR, HOURS_SHOWN),
            "daily": _series(self._all(_DAILY_SERIES, (month,)), month, DAY, DAYS_SHOWN),
            "models": [dict(zip(("model", "requests", "hits", "cost", "cost_saved", "prefix_saved"), r, strict=True))
                       for r in self._all(_BY_MODEL, (month,))],
            "keys": [dict(zip(("key", "requests", "tokens", "cost"), r, strict=True))
                     for r in self._all(_BY_KEY, (time.strftime("%Y-%m-%d", time.gmtime(month)),))],
        }

    # -- requests -----------------------------------------------------------------------------

    def requests(self, f: RequestFilter, before: int | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, ``limit`` rows with id < ``before``; and whether older rows exist."""
        conds, params = f.where()
        if before is not None:
            conds.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = self._all(f"SELECT {', '.join(LIST_COLUMNS)} FROM requests {where} ORDER BY id DESC LIMIT ?",
                         (*params, limit + 1))
        return [dict(zip(LIST_COLUMNS, r, strict=True)) for r in rows[:limit]], len(rows) > limit

    def request(self, rid: int) -> dict[str, Any] | None:
        """One logged request and, while it is still cached, the answer it got."""
        row = self._db().execute(f"SELECT {', '.join(DETAIL_COLUMNS)} FROM requests WHERE id = ?",
                                 (rid,)).fetchone()
        if row is None:
            return None
        d = dict(zip(DETAIL_COLUMNS, row, strict=True))
        d["answer"] = None
        if d["cache_key"]:
            hit = self._db().execute("SELECT body FROM cache_entries WHERE key = ?", (d["cache_key"],)).fetchone()
            d["answer"] = _answer(hit[0]) if hit else None
        return d

    def facets(self, since: float) -> dict[str, list[str]]:
        """Model aliases and key names seen since ``since``, for the filter menus."""
        models = [r[0] for r in self._all("SELECT DISTINCT alias FROM requests_hourly WHERE hour >= ? "
                                          "AND alias != '' ORDER BY alias", (since,))]
        keys = [r[0] for r in self._all("SELECT DISTINCT key_name FROM key_usage ORDER BY key_name")]
        return {"models": models, "keys": keys}

    # -- cache --------------------------------------------------------------------------------

    def cache_entries(self, limit: int, model: str = "") -> list[dict[str, Any]]:
        # In the order of idx_cache_entries_top (m054); "+model" keeps the planner on that index
        # instead of the model index plus a sort of every entry of a large model.
        where, params = ("WHERE +model = ?", [model]) if model else ("", [])
        rows = self._all(f"SELECT {', '.join(CACHE_COLUMNS)} FROM cache_entries INDEXED BY idx_cache_entries_top "
                         f"{where} ORDER BY hits DESC, COALESCE(last_hit_at, created_at) DESC LIMIT ?",
                         (*params, limit))
        return [dict(zip(CACHE_COLUMNS, r, strict=True)) for r in rows]

    def cache_models(self) -> list[tuple[str, int]]:
        """Each model with entries, and how many (counted up to MODEL_COUNT_CAP + 1: past the cap
        the page says "more than"). One index seek per model, never a scan of every entry."""
        models = [r[0] for r in self._all(_DISTINCT_MODELS)]
        cap = MODEL_COUNT_CAP
        return [(m, self._all(_MODEL_COUNT, (m, cap + 1))[0][0]) for m in models]

    def cache_keys(self, model: str | None, created_before: float | None) -> list[str]:
        """Keys on disk matching a purge by model and/or age (for tiers that can only delete by key)."""
        conds: list[str] = []
        params: list[Any] = []
        if model is not None:
            conds.append("model = ?")
            params.append(model)
        if created_before is not None:
            conds.append("created_at < ?")
            params.append(created_before)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        return [r[0] for r in self._all(f"SELECT key FROM cache_entries {where}", params)]

    def has_entry(self, key: str) -> bool:
        return bool(self._all("SELECT 1 FROM cache_entries WHERE key = ?", (key,)))

    # -- upstreams and keys -------------------------------------------------------------------

    def latency(self, now: float, hours: int = 24) -> dict[str, list[Any]]:
        """Per hour: TTFB and total p50/p95 (ms) of requests that went upstream (MISS)."""
        start = math.floor(now / HOUR) * HOUR - (hours - 1) * HOUR
        by_hour: dict[int, tuple[list[float], list[float]]] = {}
        for ts, ttfb, total in self._all("SELECT ts, ttfb_ms, latency_ms FROM requests WHERE ts >= ? "
                                         "AND cache = 'MISS' AND status < 400", (start,)):
            ttfbs, totals = by_hour.setdefault(int(ts // HOUR) * HOUR, ([], []))
            if ttfb is not None:
                ttfbs.append(ttfb)
            if total is not None:
                totals.append(total)
        out: dict[str, list[Any]] = {"t": [], "ttfb_p50": [], "ttfb_p95": [], "total_p50": [], "total_p95": []}
        for i in range(hours):
            t = int(start) + i * HOUR
            ttfbs, totals = by_hour.get(t, ([], []))
            out["t"].append(t)
            out["ttfb_p50"].append(_percentile(ttfbs, 0.5))
            out["ttfb_p95"].append(_percentile(ttfbs, 0.95))
            out["total_p50"].append(_percentile(totals, 0.5))
            out["total_p95"].append(_percentile(totals, 0.95))
        return out

    def key_usage(self, day: str) -> dict[str, tuple[int, int, float]]:
        return {k: (int(r), int(t), float(u)) for k, r, t, u in
                self._all("SELECT key_name, requests, tokens, usd FROM key_usage WHERE day = ?", (day,))}
