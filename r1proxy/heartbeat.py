"""The service's pulse towards systemd: ``WATCHDOG=1`` pings from the event loop and the status text.

A task on the event loop sends, every tick, ``WATCHDOG=1`` (when the unit sets ``WatchdogSec=``:
a wedged or stopped loop stops pinging and systemd restarts the service) and a ``STATUS=`` line
that ``systemctl status`` shows: ``serving — 12 req/min, hit rate 41 %``, ``draining 3 streams``,
or ``degraded: …`` first when database writes are failing, a cache tier is out of use (the Redis
breaker) or a reload was rejected. Requests
per minute are the last minute's count; the hit rate is over every request since start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Mapping

from . import sdnotify

STATUS_EVERY_S = 5.0  # the tick without a watchdog (status text only)
WINDOW_S = 60.0


class Heartbeat:
    """Status text from ``totals()`` (requests, hits), ``in_flight()`` and ``write_errors()``."""

    def __init__(self, totals: Callable[[], tuple[int, int]], in_flight: Callable[[], int],
                 write_errors: Callable[[], int], *, degraded: Callable[[], list[str]] = list,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.totals = totals
        self.in_flight = in_flight
        self.write_errors = write_errors
        self.degraded = degraded  # the cache's tiers out of use, one line each
        self.env = env
        self.clock = clock
        self.draining = False
        self.reload_error = ""  # the last rejected reload's reason, until a reload succeeds
        self.extra: Callable[[], str] | None = None  # more to say, e.g. the free quota left (costing.py)
        self.watchdog_s = sdnotify.watchdog_interval(env)
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, requests, write errors)
        self._task: asyncio.Task[None] | None = None

    def text(self) -> str:
        """What the service is doing, in one line; also records a sample for the per-minute figures."""
        now = self.clock()
        requests, hits = self.totals()
        errors = self.write_errors()
        samples = self._samples
        samples.append((now, requests, errors))
        while len(samples) > 1 and samples[1][0] <= now - WINDOW_S:
            samples.popleft()
        t0, requests0, errors0 = samples[0]
        span = now - t0
        if self.draining:
            n = self.in_flight()
            return f"draining {n} stream{'' if n == 1 else 's'}"
        rate = (requests - requests0) * (60.0 / span if span > WINDOW_S else 1.0)  # the last minute's count
        hit_rate = 100.0 * hits / requests if requests else 0.0
        text = f"serving — {rate:.0f} req/min, hit rate {hit_rate:.0f} %"
        more = self.extra() if self.extra is not None else ""
        if more:
            text += f" — {more}"
        problems = []
        if errors > errors0 or (span < 1.0 and errors):
            problems.append("database writes failing")
        problems.extend(self.degraded())
        if self.reload_error:
            problems.append(f"reload rejected, running the previous config ({self.reload_error})")
        return f"degraded: {'; '.join(problems)} — {text}" if problems else text

    def beat(self) -> bool:
        """One tick: WATCHDOG=1 when the unit watches us, and the status text."""
        text = self.text()
        if self.watchdog_s is not None:
            return sdnotify.watchdog(text, self.env)
        return sdnotify.status(text, self.env)

    def start(self) -> None:
        """Run the ticks on the current loop (a no-op when not under systemd)."""
        if not (os.environ if self.env is None else self.env).get("NOTIFY_SOCKET"):
            return
        self.text()  # the first sample: rates are measured from here
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        every = min(STATUS_EVERY_S, self.watchdog_s) if self.watchdog_s is not None else STATUS_EVERY_S
        while True:
            self.beat()
            await asyncio.sleep(every)

    async def stop(self) -> None:
        """End the ticks and clear the status text (the service is no longer doing anything)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        sdnotify.status("", self.env)
