"""Wiring: ``create_app(config)`` builds the application; ``run(config)`` serves it.

Registers routes, the error middleware and one ``cleanup_ctx`` per resource in dependency
order (HTTP session → database and cache → gateway), so teardown runs in reverse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from weakref import WeakSet

from aiohttp import web

from .appkeys import CONFIG_KEY, GATEWAY_KEY, HTTP_SESSION_KEY, STREAMS_KEY
from .config import Config
from .errors import error_middleware
from .gateway import Gateway
from .handlers import setup_routes
from .upstream import http_session_ctx

log = logging.getLogger("r1proxy")


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.server.max_request_bytes, middlewares=[error_middleware],
                          handler_args={"max_field_size": 65536})
    app[CONFIG_KEY] = config
    app[STREAMS_KEY] = WeakSet()
    setup_routes(app)
    app.cleanup_ctx.append(http_session_ctx)
    app.cleanup_ctx.append(gateway_ctx)
    return app


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    gw = Gateway(config, app[HTTP_SESSION_KEY], cache=None)
    app[GATEWAY_KEY] = gw
    yield
    if gw.tasks:  # let flights that are finishing for the cache end, within reason
        await asyncio.wait(list(gw.tasks), timeout=config.server.shutdown_timeout)


def check_bind(config: Config) -> None:
    """Refuse an open gateway: no keys on a non-loopback bind is an error, on loopback a warning."""
    if config.keys:
        return
    if not config.server.is_loopback:
        raise SystemExit(f"r1proxy: refusing to listen on {config.server.host} with no [[keys]] in "
                         f"{config.source}: anyone who can reach it could spend your OpenRouter credit. "
                         "Add a key (r1proxy keys new NAME) or bind to 127.0.0.1.")
    log.warning("no [[keys]] configured: accepting any bearer on loopback %s:%s",
                config.server.host, config.server.port)


def run(config: Config) -> None:
    check_bind(config)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep serving without it
        pass
    web.run_app(create_app(config), host=config.server.host, port=config.server.port,
                shutdown_timeout=config.server.shutdown_timeout, access_log=None, print=None,
                handle_signals=True)
