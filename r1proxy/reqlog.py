"""The request log and per-key daily usage: the statements on ``requests`` and ``key_usage``.

Rows get into ``requests`` through ``rollups.insert_requests`` (the insert and its rollups, one
transaction). Writes are queued on the ``Database`` writer (never block, never raise). Reads back the
numbers ``r1proxy stats`` prints (``summary``). Days are UTC dates ('YYYY-MM-DD').
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from r1proxy.db import Database
from r1proxy.rollups import INSERT, REQUEST_COLUMNS, insert_requests, row_values
from r1proxy.rules import utc_day

__all__ = ["REQUEST_COLUMNS", "TOP_MODELS", "RequestLog"]

_PRUNE = "DELETE FROM requests WHERE ts < ?"
_ADD_USAGE = """
INSERT INTO key_usage (key_name, day, requests, tokens, usd) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key_name, day) DO UPDATE SET
  requests = requests + excluded.requests,
  tokens = tokens + excluded.tokens,
  usd = usd + excluded.usd
"""
_LOAD_USAGE = "SELECT key_name, requests, tokens, usd FROM key_usage WHERE day = ?"

_TOTALS = ("requests", "hits", "tokens_saved", "usd_saved", "upstream_errors", "usd_spent", "usd_prefix_saved")
_SUM_DAILY = (f"SELECT {', '.join(f'COALESCE(SUM({c}), 0)' for c in _TOTALS)} FROM v_daily "
              "WHERE day >= ?")
# From the dashboard's per-day rollup (m053, kept on write by rollups.py): a few hundred rows,
# where a GROUP BY over the request log scans every row (0.5 s at a million rows).
_TOP_MODELS = """
SELECT CASE alias WHEN '' THEN '?' ELSE alias END AS model, SUM(requests) AS requests
FROM requests_daily WHERE day >= ? GROUP BY model ORDER BY requests DESC, model LIMIT ?
"""
TOP_MODELS = 5


def _summary_queries(now: float) -> list[tuple[str, Sequence[Any]]]:
    """(sql, params) for: all-time totals, today's totals, top models all time."""
    return [(_SUM_DAILY, ("",)), (_SUM_DAILY, (utc_day(now),)), (_TOP_MODELS, (0, TOP_MODELS))]


def _build_summary(now: float, overall: Sequence[Any], today: Sequence[Any],
                   top: Sequence[Sequence[Any]]) -> dict[str, Any]:
    def block(row: Sequence[Any]) -> dict[str, Any]:
        d = dict(zip(_TOTALS, row, strict=True))
        d["hit_rate"] = round(d["hits"] / d["requests"], 4) if d["requests"] else 0.0
        return d

    return {"day": utc_day(now), "overall": block(overall), "today": block(today),
            "top_models": [{"model": m, "requests": n} for m, n in top]}


class RequestLog:
    """Request rows and key usage, written through ``db``'s writer."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, row: Mapping[str, Any]) -> None:
        """Queue one request row; keys not in REQUEST_COLUMNS are ignored, missing ones are NULL."""
        self.db.submit_rows(insert_requests, [row_values(row)], label=INSERT)

    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue several request rows as one batch."""
        self.db.submit_rows(insert_requests, [row_values(row) for row in rows], label=INSERT)

    def record_values(self, rows: Sequence[Sequence[Any]]) -> None:
        """Queue request rows given as values in ``REQUEST_COLUMNS`` order (what the accounting builds)."""
        self.db.submit_rows(insert_requests, list(rows), label=INSERT)

    def prune(self, older_than_ts: float) -> None:
        """Queue deletion of request rows logged before ``older_than_ts``."""
        self.db.submit(_PRUNE, (older_than_ts,))

    def add_usage(self, key_name: str, day: str, requests: int, tokens: int, usd: float) -> None:
        """Queue adding to a key's usage for a day (creating the row if needed)."""
        self.db.submit(_ADD_USAGE, (key_name, day, requests, tokens, usd))

    async def load_usage(self, day: str) -> dict[str, tuple[int, int, float]]:
        """{key_name: (requests, tokens, usd)} for a day, as written so far."""
        return {k: (r, t, u) for k, r, t, u in await self.db.fetchall(_LOAD_USAGE, (day,))}

    async def summary(self, now: float | None = None) -> dict[str, Any]:
        """{"day", "overall": {...}, "today": {...}, "top_models": [...]} for ``r1proxy stats``.

        Each block has requests, hits, hit_rate, tokens_saved, usd_saved, upstream_errors,
        usd_spent (see ``v_daily`` in migrations.py for their definitions).
        """
        now = time.time() if now is None else now
        (q1, p1), (q2, p2), (q3, p3) = _summary_queries(now)
        overall = await self.db.fetchone(q1, p1)
        today = await self.db.fetchone(q2, p2)
        top = await self.db.fetchall(q3, p3)
        assert overall is not None and today is not None  # aggregates always return a row
        return _build_summary(now, overall, today, top)
