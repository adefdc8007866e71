"""The one middleware every request passes through: the browser guard, the handler, the error reply.

One layer instead of two (an error middleware around a guard middleware): ``Guard.check``
(guard.py) refuses or answers a preflight, the handler runs, and any exception either raises
becomes the one OpenAI-shaped reply (``errors.error_reply``). What is checked is guard.py's
business, what an error looks like errors.py's; this module only orders them.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import error_reply
from .guard import Guard


def middleware(guard: Guard) -> Middleware:
    """The application's middleware for ``guard`` (built from the server config)."""
    check = guard.check

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            early = check(request)
            if early is not None:
                return early
            return await handler(request)
        except Exception as e:
            return error_reply(request, e)
    return edge
