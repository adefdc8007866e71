"""The one middleware every request passes through: the browser guard, the handler, the error reply.

One layer instead of two (an error middleware around a guard middleware) and no
``on_response_prepare`` signal: ``Guard.check`` (guard.py) refuses or answers a preflight, the
handler runs, any exception either raises becomes the one OpenAI-shaped reply
(``errors.error_reply``), and the reply gets the CORS headers of an allowed cross-origin request
(``guard.cors_headers``). What is checked is guard.py's business, what an error looks like
errors.py's; this module only orders them.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import error_reply
from .guard import Guard, cors_headers


def middleware(guard: Guard) -> Middleware:
    """The application's middleware for ``guard`` (built from the server config)."""
    check = guard.check

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            early = check(request)
            resp = early if early is not None else await handler(request)
        except web.HTTPException as e:
            if e.status < 400:  # a redirect: aiohttp sends the exception itself
                cors_headers(request, e)
                raise
            resp = error_reply(request, e)
        except Exception as e:
            resp = error_reply(request, e)
        if not resp.prepared:  # a stream the handler opened got them before it was prepared
            cors_headers(request, resp)
        return resp
    return edge
