"""The free daily quota: how many ``:free`` requests an OpenRouter account has left today.

OpenRouter allows ``:free`` model ids 50 requests per UTC day while fewer than 10 credits were
ever bought (``is_free_tier`` in ``GET /key``), 1000 after (docs/cost.md §7; protocol.md B.6).
``FreeQuota`` counts this proxy's upstream calls to ``:free`` ids per upstream and UTC day (cache
hits and coalesced followers make no call, so they cost no quota), persisted in ``free_quota`` so
a restart keeps the count; takes the allowance from the last ``/key`` answer (kept in
``upstream_keys``); believes a daily-limit 429's ``X-RateLimit-*`` over its own count; warns once
a day at 90 %; and renders "free requests left today: N (resets 00:00 UTC)".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .db import Database

log = logging.getLogger("r1proxy")

FREE_PER_DAY_NO_CREDITS = 50
FREE_PER_DAY_WITH_CREDITS = 1000
WARN_AT = 0.9

_ADD = """
INSERT INTO free_quota (upstream, day, used) VALUES (?, ?, ?)
ON CONFLICT (upstream, day) DO UPDATE SET used = used + excluded.used
"""
_SET = """
INSERT INTO free_quota (upstream, day, used) VALUES (?, ?, ?)
ON CONFLICT (upstream, day) DO UPDATE SET used = MAX(used, excluded.used)
"""
_LOAD = "SELECT upstream, used FROM free_quota WHERE day = ?"
_SAVE_KEY = "INSERT OR REPLACE INTO upstream_keys (upstream, info, fetched_at) VALUES (?, ?, ?)"
_LOAD_KEYS = "SELECT upstream, info, fetched_at FROM upstream_keys"


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def is_free_model(model: str) -> bool:
    return model.endswith(":free")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``GET /key`` says about the upstream key (never the key itself)."""

    is_free_tier: bool | None = None
    limit: float | None = None  # credit limit of the key, USD; None = unlimited
    limit_remaining: float | None = None
    usage: float | None = None  # credits used, all time
    usage_daily: float | None = None
    rate_limit_requests: int | None = None
    rate_limit_interval: str = ""
    fetched_at: float = 0.0

    @classmethod
    def parse(cls, doc: Any, fetched_at: float = 0.0) -> KeyInfo | None:
        data = doc.get("data") if isinstance(doc, Mapping) else None
        if not isinstance(data, Mapping):
            return None

        def num(k: str) -> float | None:
            v = data.get(k)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        rl_raw = data.get("rate_limit")
        rl: Mapping[str, Any] = rl_raw if isinstance(rl_raw, Mapping) else {}
        req = rl.get("requests")
        free = data.get("is_free_tier")
        return cls(free if isinstance(free, bool) else None, num("limit"), num("limit_remaining"), num("usage"),
                   num("usage_daily"), req if isinstance(req, int) and not isinstance(req, bool) else None,
                   str(rl.get("interval") or ""), fetched_at)

    def public(self) -> dict[str, Any]:
        return {"is_free_tier": self.is_free_tier, "limit": self.limit, "limit_remaining": self.limit_remaining,
                "usage": self.usage, "usage_daily": self.usage_daily,
                "rate_limit": {"requests": self.rate_limit_requests, "interval": self.rate_limit_interval},
                "fetched_at": self.fetched_at}


class FreeQuota:
    """Per-upstream ``:free`` request counts for the current UTC day and the allowance they count against."""

    def __init__(self, db: Database | None = None, *, now: Callable[[], float] = time.time) -> None:
        self.db = db
        self.now = now
        self.day = utc_day(now())
        self.used: dict[str, int] = {}  # upstream -> upstream calls to :free ids today
        self.limits: dict[str, int] = {}  # upstream -> allowance learnt from a 429's X-RateLimit-Limit
        self.keys: dict[str, KeyInfo] = {}
        self._warned: set[tuple[str, str]] = set()
        self.on_change: Callable[[str], None] | None = None  # gets the new status text

    async def load(self) -> None:
        """Today's counts and the last known /key answers, from the database."""
        if self.db is None:
            return
        self._roll()
        for up, used in await self.db.fetchall(_LOAD, (self.day,)):
            self.used[up] = max(self.used.get(up, 0), int(used or 0))
        for up, info, at in await self.db.fetchall(_LOAD_KEYS):
            try:
                parsed = KeyInfo.parse({"data": json.loads(info)}, at or 0.0)
            except ValueError:
                parsed = None
            if parsed is not None and up not in self.keys:
                self.keys[up] = parsed

    def _roll(self) -> None:
        day = utc_day(self.now())
        if day != self.day:
            self.day = day
            self.used.clear()
            self.limits.clear()

    def set_key(self, upstream: str, doc: Any) -> KeyInfo | None:
        """Take a ``GET /key`` body; stored without the label (a prefix of the key)."""
        info = KeyInfo.parse(doc, self.now())
        if info is None:
            return None
        self.keys[upstream] = info
        if self.db is not None:
            public = info.public()
            data = {k: public[k] for k in ("is_free_tier", "limit", "limit_remaining", "usage", "usage_daily")}
            data["rate_limit"] = {"requests": info.rate_limit_requests, "interval": info.rate_limit_interval}
            self.db.submit(_SAVE_KEY, (upstream, json.dumps(data), info.fetched_at))
        self._changed(upstream)
        return info

    def limit(self, upstream: str) -> int:
        """Today's allowance: a 429's X-RateLimit-Limit, else what ``is_free_tier`` implies (50 when unknown)."""
        if upstream in self.limits:
            return self.limits[upstream]
        info = self.keys.get(upstream)
        if info is not None and info.is_free_tier is False:
            return FREE_PER_DAY_WITH_CREDITS
        return FREE_PER_DAY_NO_CREDITS

    def count(self, upstream: str, model: str, status: int) -> None:
        """One upstream call answered with ``status``; counts when it went to a ``:free`` id and was not
        refused with a 429 (a refused call is not served, and the 429 says itself what is left)."""
        if not is_free_model(model) or status in (0, 429):
            return
        self._roll()
        self.used[upstream] = self.used.get(upstream, 0) + 1
        if self.db is not None:
            self.db.submit(_ADD, (upstream, self.day, 1))
        self._changed(upstream)

    def exhausted(self, upstream: str, headers: Mapping[str, str] | None = None) -> None:
        """A daily-limit 429: believe its ``X-RateLimit-Limit``/``-Remaining`` over our own count."""
        self._roll()
        limit, remaining = None, 0
        if headers:
            h = {k.lower(): v for k, v in headers.items()}
            try:
                limit = int(h["x-ratelimit-limit"]) if "x-ratelimit-limit" in h else None
                remaining = int(h.get("x-ratelimit-remaining", 0))
            except (TypeError, ValueError):
                limit, remaining = None, 0
        if limit:
            self.limits[upstream] = limit
        used = max(0, self.limit(upstream) - max(0, remaining))
        self.used[upstream] = max(self.used.get(upstream, 0), used)
        if self.db is not None:
            self.db.submit(_SET, (upstream, self.day, self.used[upstream]))
        self._changed(upstream)

    def left(self, upstream: str) -> int:
        self._roll()
        return max(0, self.limit(upstream) - self.used.get(upstream, 0))

    def status(self, upstreams: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per upstream: used, limit, left, resets (UTC time of day) and the /key figures, for /stats."""
        self._roll()
        names = upstreams if upstreams is not None else sorted(set(self.used) | set(self.keys))
        out: dict[str, dict[str, Any]] = {}
        for up in names:
            info = self.keys.get(up)
            out[up] = {"used_today": self.used.get(up, 0), "limit_today": self.limit(up), "left_today": self.left(up),
                       "resets": "00:00 UTC", "day": self.day, "key": info.public() if info else None}
        return out

    def text(self, upstream: str) -> str:
        """One line for ``r1proxy stats`` and the service status."""
        return f"free requests left today: {self.left(upstream)} (resets 00:00 UTC)"

    def _changed(self, upstream: str) -> None:
        used, limit = self.used.get(upstream, 0), self.limit(upstream)
        if limit and used >= WARN_AT * limit and (upstream, self.day) not in self._warned:
            self._warned.add((upstream, self.day))
            log.warning("upstream %s: %d of %d free requests used today (%.0f%%); %s", upstream, used, limit,
                        100 * used / limit, self.text(upstream))
        if self.on_change is not None:
            try:
                self.on_change(self.text(upstream))
            except Exception:  # a status display must never fail a request
                log.exception("free quota status callback failed")
