"""The shared rules: each fact that several modules need, defined once.

- which cache outcomes were served from the cache (no upstream call of their own; cost $0)
- which upstream statuses are worth a retry, count as the upstream's failure, allow a stale answer
- how OpenRouter says a free model's daily quota is gone
- the UTC day and the seconds left until it ends

The SQL views in ``migrations`` are generated from these definitions (``sql_in``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import ProxyError

# X-Cache values. HIT/STALE come from a stored entry; COALESCED followed another request's
# upstream call; MISS made the call (and pays for it); BYPASS/NONE did not use the cache.
HIT, STALE, COALESCED, MISS, BYPASS, NONE = "HIT", "STALE", "COALESCED", "MISS", "BYPASS", "NONE"
SERVED_FROM_CACHE = frozenset({HIT, STALE, COALESCED})

# Upstream statuses worth another try of the same route (before any byte reached a client).
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
# The client's own mistake: another route would answer the same, so no fallback.
NO_FALLBACK = frozenset({400, 413, 422})

DAY_S = 86400.0


def served_from_cache(cache: str) -> bool:
    """True when the request cost no upstream call of its own."""
    return cache in SERVED_FROM_CACHE


def upstream_failed(status: int) -> bool:
    """The upstream's fault (transport error = 0, 5xx, timeout, rate limit): counts against a
    deployment's health and allows a stale answer (RFC 5861); a 4xx like 400/401/402 does not."""
    return status == 0 or status >= 500 or status in (408, 429)


def is_daily_quota(status: int, message: str) -> bool:
    """OpenRouter's "free-models-per-day" 429: no retry helps until the quota resets."""
    return status == 429 and "per-day" in message


@dataclass(frozen=True, slots=True)
class DailyQuota:
    """OpenRouter's daily-quota 429: its message (its own advice, e.g. "Add 10 credits …") and the
    rate-limit headers it quotes in ``error.metadata.headers`` ({} when it quotes none)."""

    message: str
    headers: dict[str, str]


def daily_quota(status: int, payload: object) -> DailyQuota | None:
    """The daily quota an upstream reply (status, parsed body) reports as gone; None for any other reply."""
    err = payload.get("error") if isinstance(payload, Mapping) else None
    message = str(err.get("message", "")) if isinstance(err, Mapping) else ""
    if not is_daily_quota(status, message):
        return None
    meta = err.get("metadata") if isinstance(err, Mapping) else None
    headers = meta.get("headers") if isinstance(meta, Mapping) else None
    return DailyQuota(message, {str(k): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {})


def utc_day(ts: float) -> str:
    """The UTC calendar day of a Unix time, as YYYY-MM-DD (``key_usage.day``, ``v_daily.day``)."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def seconds_to_utc_midnight(now: float) -> float:
    return DAY_S - (now % DAY_S)


def sql_in(values: Iterable[str]) -> str:
    """A SQL ``IN`` list literal, e.g. ``('COALESCED', 'HIT', 'STALE')`` (sorted: stable DDL)."""
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


def final(err: ProxyError, tries: int) -> ProxyError:
    """Mark an error the client must not retry: r1proxy already retried it, or retrying cannot help.

    The openai SDK inside Roo retries 408/409/429/5xx twice unless told ``x-should-retry: false``
    (a Retry-After the upstream sent stays)."""
    if tries > 1 or err.status not in RETRYABLE:
        err.headers.setdefault("x-should-retry", "false")
    return err
