"""The one clock of an app: made in ``create_app`` and passed down to everything that tells time.

``now()`` is wall-clock Unix seconds (cache ages, TTLs, the request log, UTC days);
``monotonic()`` measures durations and deadlines (pacing, cool-downs, latency). Tests replace
either attribute on the app's clock and every component sees it, because they call through
the clock instead of keeping their own reference to ``time``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Clock:
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic

    def now(self) -> float:
        return self.wall()

    def monotonic(self) -> float:
        return self.mono()
