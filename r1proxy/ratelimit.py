"""Per-key (client-facing) rate limits: rpm token buckets, tpm sliding windows, parallel caps, daily budgets.

Pure arithmetic with an injected clock and no aiohttp imports. ``KeyLimiter.acquire`` returns a ``Decision``
that the HTTP layer maps to a 429 (``Decision.headers()`` gives Retry-After and x-ratelimit-*). Requests are
refused, never queued, here; queueing in front of the upstream is ``pacing.py``'s job.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]


class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``rate_per_min``; over any span T it grants at most
    ``burst + rate_per_min * T / 60`` tokens. ``rate_per_min <= 0`` means unlimited."""

    def __init__(self, rate_per_min: float, burst: float | None = None, *,
                 now: Clock = time.monotonic) -> None:
        self.rate_per_min = float(rate_per_min)
        self.capacity = float(burst if burst is not None and burst > 0 else max(1.0, self.rate_per_min))
        self._now = now
        self._tokens = self.capacity
        self._at = now()

    def _refill(self) -> float:
        t = self._now()
        if t > self._at:
            self._tokens = min(self.capacity, self._tokens + (t - self._at) * self.rate_per_min / 60.0)
        self._at = max(self._at, t)
        return self._tokens

    def try_take(self, n: float = 1) -> tuple[bool, float, int]:
        """Take n tokens if present. Returns (ok, seconds until n tokens are available, whole tokens left)."""
        if self.rate_per_min <= 0:
            return True, 0.0, 0
        tokens = self._refill()
        if tokens >= n:
            self._tokens = tokens - n
            return True, 0.0, int(self._tokens)
        if n > self.capacity:
            return False, math.inf, int(tokens)
        return False, (n - tokens) * 60.0 / self.rate_per_min, int(tokens)

    def peek(self) -> tuple[float, int]:
        """(seconds until one token is available, whole tokens now) without taking anything."""
        if self.rate_per_min <= 0:
            return 0.0, 0
        tokens = self._refill()
        wait = 0.0 if tokens >= 1 else (1 - tokens) * 60.0 / self.rate_per_min
        return wait, int(tokens)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        if self.rate_per_min <= 0:
            return 0.0
        return (self.capacity - self._refill()) * 60.0 / self.rate_per_min


class SlidingWindow:
    """Amounts recorded with timestamps; ``total()`` is the sum over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 60.0, *, now: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self._now = now
        self._items: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def _prune(self) -> float:
        cutoff = self._now() - self.window_s
        while self._items and self._items[0][0] <= cutoff:
            self._total -= self._items.popleft()[1]
        if not self._items:
            self._total = 0.0  # drop float drift
        return self._total

    def add(self, amount: float = 1.0) -> None:
        self._prune()
        self._items.append((self._now(), float(amount)))
        self._total += amount

    def total(self) -> float:
        return self._prune()

    def count(self) -> int:
        self._prune()
        return len(self._items)

    def wait_until_below(self, limit: float) -> float:
        """Seconds until ``total() < limit`` if nothing more is added (0 if already below)."""
        total = self._prune()
        if total < limit:
            return 0.0
        now = self._now()
        for at, amount in self._items:
            total -= amount
            if total < limit:
                return max(0.0, at + self.window_s - now)
        return 0.0

    def oldest_expiry(self) -> float:
        """Seconds until the oldest entry leaves the window (0 if empty)."""
        self._prune()
        return max(0.0, self._items[0][0] + self.window_s - self._now()) if self._items else 0.0


class KeyLimits(Protocol):
    """What KeyLimiter reads from a key (``config.KeyConfig`` fits); 0 means unlimited."""

    @property
    def name(self) -> str: ...
    @property
    def rpm(self) -> int: ...
    @property
    def tpm(self) -> int: ...
    @property
    def max_parallel(self) -> int: ...
    @property
    def daily_tokens(self) -> int: ...
    @property
    def daily_usd(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request; ``reason`` is "" when allowed, else rpm|tpm|parallel."""

    allowed: bool
    retry_after: float = 0.0
    limit: int = 0
    remaining: int = 0
    reset_s: float = 0.0
    reason: str = ""

    def headers(self) -> dict[str, str]:
        """Response headers: x-ratelimit-* when a limit applies, Retry-After when refused."""
        out: dict[str, str] = {}
        if self.limit:
            out["x-ratelimit-limit"] = str(self.limit)
            out["x-ratelimit-remaining"] = str(max(0, self.remaining))
            out["x-ratelimit-reset"] = str(math.ceil(self.reset_s))
        if not self.allowed and math.isfinite(self.retry_after):
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


@dataclass
class _KeyState:
    limits: KeyLimits
    bucket: TokenBucket
    tokens: SlidingWindow
    in_flight: int = 0


class KeyLimiter:
    """Limits per key name. Keys without an entry (or with all limits 0) are always allowed."""

    def __init__(self, keys: Iterable[KeyLimits] = (), *, now: Clock = time.monotonic,
                 burst_factor: float = 1.0, window_s: float = 60.0) -> None:
        self._now = now
        self._burst_factor = burst_factor
        self._window_s = window_s
        self._keys: dict[str, _KeyState] = {}
        for k in keys:
            self.set_limits(k)

    def set_limits(self, limits: KeyLimits) -> None:
        """Add or replace a key's limits; usage counters survive a replace (config reload)."""
        burst = max(1.0, round(limits.rpm * self._burst_factor)) if limits.rpm else None
        old = self._keys.get(limits.name)
        tokens = old.tokens if old else SlidingWindow(self._window_s, now=self._now)
        state = _KeyState(limits, TokenBucket(limits.rpm, burst, now=self._now), tokens)
        if old:
            state.in_flight = old.in_flight
        self._keys[limits.name] = state

    def acquire(self, key: str) -> Decision:
        """Decide; when allowed, take one rpm token and one parallel slot (``release`` returns the slot)."""
        return self._decide(key, take=True)

    def release(self, key: str) -> None:
        """Give back the parallel slot of an allowed ``acquire``."""
        st = self._keys.get(key)
        if st and st.in_flight > 0:
            st.in_flight -= 1

    def add_tokens(self, key: str, n: int) -> None:
        """Count n tokens (from the upstream usage, after the fact) against the key's tpm."""
        st = self._keys.get(key)
        if st and n > 0:
            st.tokens.add(n)

    def in_flight(self, key: str) -> int:
        st = self._keys.get(key)
        return st.in_flight if st else 0

    def day_usage(self, key: str, day: str) -> tuple[float, float, float] | None:
        """(requests, tokens, usd) of a key on a UTC day when the limiter keeps them (shared between
        workers, see sharedlimits.py); None here: one process's accounting holds them."""
        return None

    def add_day_usage(self, key: str, day: str, requests: float, tokens: float, usd: float) -> None:
        """Count a finished request towards the day's usage (kept only by the shared limiter)."""

    def budget_exceeded(self, key: str, day_usage: Mapping[str, float]) -> str | None:
        """"daily_tokens"/"daily_usd" if today's usage ({"tokens", "usd"}) reached the budget, else None."""
        st = self._keys.get(key)
        if st is None:
            return None
        lim = st.limits
        if lim.daily_tokens and day_usage.get("tokens", 0) >= lim.daily_tokens:
            return "daily_tokens"
        if lim.daily_usd and day_usage.get("usd", 0.0) >= lim.daily_usd:
            return "daily_usd"
        return None

    def _decide(self, key: str, *, take: bool) -> Decision:
        st = self._keys.get(key)
        if st is None:
            return Decision(True)
        lim = st.limits
        if lim.max_parallel and st.in_flight >= lim.max_parallel:
            # No clock tells when a slot frees; 1 s is a polite hint for the client's retry.
            return Decision(False, 1.0, lim.max_parallel, 0, 1.0, "parallel")
        if lim.tpm:
            used = st.tokens.total()
            if used >= lim.tpm:
                wait = st.tokens.wait_until_below(lim.tpm)
                return Decision(False, wait, lim.tpm, 0, wait, "tpm")
        if lim.rpm:
            if take:
                ok, wait, left = st.bucket.try_take(1)
            else:
                wait, left = st.bucket.peek()
                ok = wait == 0
            if not ok:
                return Decision(False, wait, lim.rpm, 0, st.bucket.reset_s(), "rpm")
            decision = Decision(True, 0.0, lim.rpm, left, st.bucket.reset_s())
        elif lim.tpm:
            used = st.tokens.total()
            decision = Decision(True, 0.0, lim.tpm, int(lim.tpm - used), st.tokens.oldest_expiry())
        else:
            decision = Decision(True)
        if take:
            st.in_flight += 1
        return decision
