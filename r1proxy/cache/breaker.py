"""A circuit breaker for a remote dependency that must never fail or stall a request.

``closed``: calls go through; ``failures`` consecutive failures open it. ``open``: calls are refused
at once (the caller falls back) until ``reset_s`` has passed; then one caller is let through as a
probe (``half-open``): success closes the breaker, failure opens it again for another ``reset_s``.
Every failure counts, including ones the caller swallows (it reports them here). Changes of state
are logged once each (open and recovered at WARNING/INFO; a failed probe at DEBUG), never per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    def __init__(self, name: str, failures: int, reset_s: float, *,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.name = name
        self.threshold = max(1, failures)
        self.reset_s = reset_s
        self._clock = clock
        self._log = logger or logging.getLogger("r1proxy.breaker")
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.last_error = ""
        self.opens = 0  # times it opened (counter)
        self._probing = False

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe is out at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self.opened_at >= self.reset_s:
            self.state = HALF_OPEN
            self._probing = False
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        if self.state != CLOSED:
            self._log.info("%s: back to shared operation (breaker closed after %.1fs)", self.name,
                           self._clock() - self.opened_at)
            self.state = CLOSED
        self._probing = False

    def failure(self, error: BaseException | str) -> None:
        self.last_error = _describe(error)
        self.consecutive += 1
        if self.state == HALF_OPEN:
            self.state, self.opened_at, self._probing = OPEN, self._clock(), False
            self._log.debug("%s: probe failed (%s); breaker stays open", self.name, self.last_error)
        elif self.state == CLOSED and self.consecutive >= self.threshold:
            self.state, self.opened_at = OPEN, self._clock()
            self.opens += 1
            self._log.warning("%s: degraded after %d failures in a row (last: %s); serving from local tiers, "
                              "next probe in %gs", self.name, self.consecutive, self.last_error, self.reset_s)

    @property
    def degraded(self) -> str:
        """'' when healthy, else a one-line reason ("breaker open 12s, last error: …")."""
        if self.state == CLOSED:
            return ""
        return f"breaker {self.state} for {self._clock() - self.opened_at:.0f}s, last error: {self.last_error}"


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
