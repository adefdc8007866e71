"""The one shutdown deadline: ``server.shutdown_timeout`` bounds the whole drain, once.

On SIGTERM the listening socket closes, then in-flight requests (streams included) and flights
finishing for the cache get until ``start + shutdown_timeout``. Whatever is left then is
cancelled (aiohttp gets ``CANCEL_GRACE_S`` per connection for that, nothing more), and the
cleanup flushes the request log and checkpoints the database. A unit's ``TimeoutStopSec=``
is ``shutdown_timeout + FLUSH_MARGIN_S``, so systemd never SIGKILLs a drain that keeps to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from .appkeys import GATEWAY_KEY
from .gateway import Gateway

FLUSH_MARGIN_S = 15.0
CANCEL_GRACE_S = 0.5  # what aiohttp waits, per connection, for a handler it cancelled (0 would mean forever)
POLL_S = 0.05


def remaining(gw: Gateway, default: float) -> float:
    """Seconds left before the shutdown deadline, or ``default`` when no drain set one (tests)."""
    if gw.deadline is None:
        return default
    return max(0.0, gw.deadline - asyncio.get_running_loop().time())


async def drain(runner: web.AppRunner, timeout: float, status: Callable[[], object] = lambda: None) -> None:
    """Stop listening, let in-flight work end until ``timeout`` from now, cancel the rest, clean up.

    ``status()`` is called while waiting (the heartbeat's "draining N streams")."""
    app = runner.app
    assert isinstance(app, web.Application)
    loop = asyncio.get_running_loop()
    gw = app[GATEWAY_KEY]
    gw.deadline = deadline = loop.time() + timeout
    for site in list(runner.sites):
        await site.stop()  # no new connections; runner.cleanup() skips stopped sites
    next_status = 0.0
    while (gw.metrics.in_flight > 0 or gw.flights.tasks) and loop.time() < deadline:
        if loop.time() >= next_status:
            status()
            next_status = loop.time() + 1.0
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - loop.time())))
    # Cancels the handlers still running (CANCEL_GRACE_S each): their clients get nothing more.
    # Then the cleanup_ctx: Gateway.stop() cancels flights still finishing for the cache, the
    # request log is flushed and the database checkpointed.
    await runner.cleanup()
