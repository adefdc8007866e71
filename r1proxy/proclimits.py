"""Key limits shared by the worker processes of one server (``server.workers > 1``), without Redis.

A key's rpm, tpm, parallel cap and daily budgets are the key's, not a worker's: every worker
reads and updates the same numbers, in an anonymous shared memory mapping the supervisor makes
before it forks the workers, under one process-shared lock (a few microseconds, taken only for
keys that have limits). Per key (open addressing by a 48-bit hash of its name): the rpm token
bucket, the requests in flight per worker (the supervisor zeroes a dead worker's), today's
requests/tokens/usd (seeded from ``key_usage`` at start), and the tokens of the last 60 s in
one-second buckets (so the tpm window moves in 1 s steps, where the one-process limiter is exact).
``ProcessKeyLimiter`` is ``KeyLimiter`` with its state there; ``WorkerRole`` is what a worker is
told about its place.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import mmap
import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .ratelimit import Clock, Decision, KeyLimiter, KeyLimits

SLOTS = 256  # keys
MAX_WORKERS = 16
WINDOW = 60  # tpm window, one-second buckets
# offsets of one slot, in float64 cells
_HASH, _TOKENS, _AT, _DAY, _DREQ, _DTOK, _DUSD = range(7)
_INFLIGHT = 8
_RING_AMT = _INFLIGHT + MAX_WORKERS
_RING_SEC = _RING_AMT + WINDOW
_SIZE = _RING_SEC + WINDOW


@functools.lru_cache(maxsize=4)
def _ordinal(day: str) -> float:
    """A UTC day ("2026-11-27") as the float the mapping stores (every request asks for today's)."""
    return float(dt.date.fromisoformat(day).toordinal())


class ProcessLimits:
    """The mapping and its lock. Make it before forking; children inherit both."""

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, SLOTS * _SIZE * 8)
        self.cells = memoryview(self._mm).cast("d")
        self.lock: Any = multiprocessing.get_context("fork").Lock()
        self._slots: dict[str, int] = {}  # this process's memo: a claimed slot is never given up

    def slot(self, name: str) -> int:
        """Base cell of ``name``'s slot, claimed on first use (call with the lock held)."""
        base = self._slots.get(name)
        if base is None:
            base = self._slots[name] = self._find(name)
        return base

    def _find(self, name: str) -> int:
        h = float(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=6).digest(), "big") + 1)
        c = self.cells
        i = int(h) % SLOTS
        for _ in range(SLOTS):
            base = i * _SIZE
            if c[base + _HASH] == h:
                return base
            if c[base + _HASH] == 0.0:
                c[base + _HASH] = h
                c[base + _TOKENS] = math.nan  # a full bucket
                return base
            i = (i + 1) % SLOTS
        raise RuntimeError(f"more than {SLOTS} keys with limits")

    def clear_worker(self, worker: int) -> None:
        """Forget the requests a dead worker had in flight."""
        with self.lock:
            for i in range(SLOTS):
                self.cells[i * _SIZE + _INFLIGHT + worker] = 0.0

    def seed_usage(self, day: str, usage: Iterable[tuple[str, float, float, float]]) -> None:
        """Today's usage per key (from ``key_usage``), before the workers start."""
        ordinal = _ordinal(day)
        with self.lock:
            for name, requests, tokens, usd in usage:
                self._set(self.slot(name), ordinal, requests, tokens, usd)

    def _set(self, base: int, ordinal: float, requests: float, tokens: float, usd: float) -> None:
        c = self.cells
        c[base + _DAY], c[base + _DREQ], c[base + _DTOK], c[base + _DUSD] = ordinal, requests, tokens, usd


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """A worker's place: its index (0-based), the shared limits, the pipe it reports ready on,
    whether the supervisor reloaded the config file since it started (a worker started later reads
    the file again for its keys and limits), and the signals it got before its event loop took
    signals over (a stop or reload then is deferred, not the default action that kills it)."""

    index: int
    shared: ProcessLimits
    ready_fd: int
    reload_at_start: bool = False
    early_signals: set[int] = field(default_factory=set)


class ProcessKeyLimiter(KeyLimiter):
    """``KeyLimiter`` whose per-key numbers live in ``ProcessLimits`` (one set for all workers)."""

    def __init__(self, keys: Iterable[KeyLimits], shared: ProcessLimits, worker: int, *,
                 now: Clock = time.monotonic, burst_factor: float = 1.0) -> None:
        super().__init__(keys, now=now, burst_factor=burst_factor)
        self.shared = shared
        self.worker = worker

    def release(self, key: str) -> None:
        if not self._limited(key):
            return
        with self.shared.lock:
            cell = self.shared.slot(key) + _INFLIGHT + self.worker
            c = self.shared.cells
            if c[cell] > 0:
                c[cell] -= 1

    def add_tokens(self, key: str, n: int) -> None:
        if n <= 0 or not self._limited(key):
            return
        sec = float(int(self._now()))
        with self.shared.lock:
            base = self.shared.slot(key)
            c = self.shared.cells
            i = int(sec) % WINDOW
            if c[base + _RING_SEC + i] != sec:
                c[base + _RING_SEC + i], c[base + _RING_AMT + i] = sec, 0.0
            c[base + _RING_AMT + i] += n

    def in_flight(self, key: str) -> int:
        if not self._limited(key):
            return 0
        with self.shared.lock:
            base = self.shared.slot(key) + _INFLIGHT
            return int(sum(self.shared.cells[base: base + MAX_WORKERS]))

    def day_usage(self, key: str, day: str) -> tuple[float, float, float] | None:
        """(requests, tokens, usd) of ``key`` on ``day`` over all workers, or None if none recorded."""
        ordinal = _ordinal(day)
        with self.shared.lock:
            base = self.shared.slot(key)
            c = self.shared.cells
            if c[base + _DAY] != ordinal:
                return None
            return c[base + _DREQ], c[base + _DTOK], c[base + _DUSD]

    def add_day_usage(self, key: str, day: str, requests: float, tokens: float, usd: float) -> None:
        ordinal = _ordinal(day)
        with self.shared.lock:
            base = self.shared.slot(key)
            c = self.shared.cells
            if c[base + _DAY] != ordinal:
                self.shared._set(base, ordinal, 0.0, 0.0, 0.0)
            c[base + _DREQ] += requests
            c[base + _DTOK] += tokens
            c[base + _DUSD] += usd

    def _limited(self, key: str) -> bool:
        st = self._keys.get(key)
        return st is not None and bool(st.limits.rpm or st.limits.tpm or st.limits.max_parallel)

    def _decide(self, key: str, *, take: bool) -> Decision:
        st = self._keys.get(key)
        if st is None or not self._limited(key):
            return Decision(True)
        lim = st.limits
        now = self._now()
        with self.shared.lock:
            base = self.shared.slot(key)
            c = self.shared.cells
            if lim.max_parallel and sum(c[base + _INFLIGHT: base + _INFLIGHT + MAX_WORKERS]) >= lim.max_parallel:
                return Decision(False, 1.0, lim.max_parallel, 0, 1.0, "parallel")
            if lim.tpm:
                used, wait = self._window(base, now, lim.tpm)
                if used >= lim.tpm:
                    return Decision(False, wait, lim.tpm, 0, wait, "tpm")
            if lim.rpm:
                cap, rate = st.bucket.capacity, float(lim.rpm)
                tokens = c[base + _TOKENS]
                if math.isnan(tokens):
                    tokens = cap
                elif now > c[base + _AT]:
                    tokens = min(cap, tokens + (now - c[base + _AT]) * rate / 60.0)
                c[base + _TOKENS], c[base + _AT] = tokens, max(c[base + _AT], now)
                if tokens < 1:
                    wait = (1 - tokens) * 60.0 / rate
                    return Decision(False, wait, lim.rpm, 0, (cap - tokens) * 60.0 / rate, "rpm")
                if take:
                    tokens -= 1
                    c[base + _TOKENS] = tokens
                decision = Decision(True, 0.0, lim.rpm, int(tokens), (cap - tokens) * 60.0 / rate)
            elif lim.tpm:
                used, _ = self._window(base, now, lim.tpm)
                decision = Decision(True, 0.0, lim.tpm, int(lim.tpm - used), float(WINDOW))
            else:
                decision = Decision(True)
            if take:
                c[base + _INFLIGHT + self.worker] += 1
            return decision

    def _window(self, base: int, now: float, limit: float) -> tuple[float, float]:
        """(tokens in the last WINDOW seconds, seconds until below ``limit``)."""
        c = self.shared.cells
        sec = int(now)
        live = sorted((c[base + _RING_SEC + i], c[base + _RING_AMT + i]) for i in range(WINDOW)
                      if c[base + _RING_SEC + i] > sec - WINDOW)
        used = sum(a for _, a in live)
        left = used
        for at, amount in live:
            if left < limit:
                break
            left -= amount
            if left < limit:
                return used, max(0.0, at + WINDOW - now)
        return used, 0.0
