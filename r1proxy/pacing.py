"""Upstream pacing per model deployment: queue callers (FIFO) until a parallel slot and an rpm slot are free.

``UpstreamPacer`` keeps the proxy under an upstream's limits (e.g. OpenRouter free models: 20 requests in any
60 s window) instead of provoking 429s, waits out a cool-down taken from an upstream 429's Retry-After, and
fails fast while a free daily quota is exhausted. No aiohttp imports; clock and sleep are injected.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from r1proxy.ratelimit import SlidingWindow

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class PacerError(Exception):
    """Base for pacer refusals; ``retry_after`` is a hint in seconds for the client."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PacerTimeout(PacerError):
    """No slot within max_wait_s; ``waiting_for`` is what blocked last: parallel|rpm|cooldown."""

    def __init__(self, waited_s: float, waiting_for: str, retry_after: float) -> None:
        super().__init__(f"upstream busy: waited {waited_s:.1f}s for {waiting_for}", retry_after)
        self.waited_s = waited_s
        self.waiting_for = waiting_for


class PacerExhausted(PacerError):
    """The daily quota is used up until ``until`` (clock time): fail fast, retrying is pointless."""

    def __init__(self, until: float, retry_after: float) -> None:
        super().__init__(f"upstream daily quota exhausted for {retry_after:.0f}s", retry_after)
        self.until = until


class UpstreamPacer:
    """FIFO gate in front of one deployment. ``rpm``/``max_parallel`` of 0 mean unlimited.

    The rpm limit is a sliding window: at most ``rpm`` grants in any ``window_s`` span.
    """

    def __init__(self, rpm: int = 0, max_parallel: int = 0, *, window_s: float = 60.0, name: str = "",
                 now: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.rpm = rpm
        self.max_parallel = max_parallel
        self.cooling_until = -math.inf
        self.daily_exhausted_until = -math.inf
        self._now = now
        self._sleep = sleep
        self._grants = SlidingWindow(window_s, now=now)
        self._in_flight = 0
        self._queue: deque[object] = deque()
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def cool_down(self, seconds: float) -> None:
        """Hold every new grant for ``seconds`` from now (an upstream 429's Retry-After); never shortens."""
        self.cooling_until = max(self.cooling_until, self._now() + max(0.0, seconds))
        self._notify()

    def mark_daily_exhausted(self, seconds: float) -> None:
        """The free daily quota is gone for ``seconds``: ``acquire()`` raises PacerExhausted until then."""
        self.daily_exhausted_until = max(self.daily_exhausted_until, self._now() + max(0.0, seconds))
        self._notify()

    def state(self) -> dict[str, float | int | str]:
        """What ``/stats`` shows of this pacer: queue depth, calls in flight, seconds of waiting."""
        now = self._now()
        wait = self.wait_estimate()
        return {"name": self.name, "queued": self.queued, "in_flight": self.in_flight,
                "wait_s": round(wait, 3) if math.isfinite(wait) else -1,
                "cooling_s": round(max(0.0, self.cooling_until - now), 3),
                "daily_quota_resets_in_s": round(max(0.0, self.daily_exhausted_until - now), 3)}

    def wait_estimate(self) -> float:
        """Seconds the next caller would wait for time-based reasons (inf if only a release can help)."""
        return self._blocked(self._now())[0]

    async def acquire(self, max_wait_s: float | None = None) -> None:
        """Wait FIFO for a slot (at most ``max_wait_s``); pair with ``release()``.

        Raises PacerTimeout after max_wait_s, PacerExhausted at once while the daily quota is gone.
        """
        start = self._now()
        self._check_daily(start)
        deadline = math.inf if max_wait_s is None else start + max_wait_s
        ticket = object()
        self._queue.append(ticket)
        try:
            while True:
                now = self._now()
                self._check_daily(now)
                if self._queue[0] is ticket:
                    wait, why = self._blocked(now)
                    if wait <= 0:
                        self._queue.popleft()
                        self._in_flight += 1
                        self._grants.add()
                        self._notify()  # the next in line re-evaluates
                        return
                else:
                    wait, why = math.inf, "queue"
                if now >= deadline:
                    hint = self._blocked(now)[0]
                    raise PacerTimeout(now - start, why, hint if math.isfinite(hint) else 1.0)
                await self._wait(min(wait, deadline - now))
        finally:
            if ticket in self._queue:  # timed out, exhausted or cancelled
                self._queue.remove(ticket)
                self._notify()

    def release(self) -> None:
        """Give back a slot taken by ``acquire``."""
        if self._in_flight > 0:
            self._in_flight -= 1
        self._notify()

    def _check_daily(self, now: float) -> None:
        if now < self.daily_exhausted_until:
            raise PacerExhausted(self.daily_exhausted_until, self.daily_exhausted_until - now)

    def _blocked(self, now: float) -> tuple[float, str]:
        """(seconds to wait, reason) for the head of the queue; (0, "") when it may go now."""
        if now < self.cooling_until:
            return self.cooling_until - now, "cooldown"
        if self.max_parallel and self._in_flight >= self.max_parallel:
            return math.inf, "parallel"
        if self.rpm and self._grants.count() >= self.rpm:
            return max(self._grants.oldest_expiry(), 1e-6), "rpm"
        return 0.0, ""

    def _notify(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = None

    async def _wait(self, timeout: float) -> None:
        """Sleep until notified or ``timeout`` seconds (by the injected sleep) have passed."""
        if self._wakeup is None:
            self._wakeup = asyncio.get_running_loop().create_future()
        waiters: set[asyncio.Future[None]] = {self._wakeup}
        sleeper: asyncio.Task[None] | None = None
        if math.isfinite(timeout):
            sleeper = asyncio.ensure_future(self._sleep(timeout))
            waiters.add(sleeper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if sleeper is not None and not sleeper.done():
                sleeper.cancel()
