"""What every request passes through before its handler: the browser guard, the error reply, CORS.

Each route's handler is wrapped once (``guarded``): ``Guard.check`` (guard.py) refuses the request
or answers a CORS preflight, the handler runs, any exception either raises becomes the one
OpenAI-shaped reply (``errors.error_reply``), and the reply gets the CORS headers of an allowed
cross-origin request (``guard.cors_headers``). Not an aiohttp middleware: with any middleware
aiohttp runs two coroutine layers per request (its own ``_fix_request_current_app`` and ours,
~5 µs per request in a bare-server A/B, a tenth of a cache hit's whole cost) where one wrapper
costs well under one. So routes are added through ``routes(app)``, unknown paths and methods go to
a catch-all route that answers the 404/405 aiohttp would have (through the same wrapper), and
``finish(app)`` refuses to start an application with a route that is not guarded.

What is checked is guard.py's business, what an error looks like errors.py's; this module only
orders them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import error_reply
from .guard import GUARD_KEY, Guard, cors_headers

_MARK = "__r1proxy_guarded__"
CATCH_ALL = "/{r1proxy_unknown_path:.*}"


def guarded(guard: Guard, handler: Handler) -> Handler:
    """``handler`` behind the guard, its errors made replies, CORS headers added."""
    check = guard.check

    async def edge(request: web.Request) -> web.StreamResponse:
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

    setattr(edge, _MARK, True)
    return edge


class Routes:
    """``app.router``'s ``add_get``/``add_post``/``add_route``, each handler guarded."""

    def __init__(self, router: web.UrlDispatcher, guard: Guard) -> None:
        self.router = router
        self.guard = guard

    def add_route(self, method: str, path: str, handler: Handler, **kw: Any) -> web.AbstractRoute:
        return self.router.add_route(method, path, guarded(self.guard, handler), **kw)

    def add_get(self, path: str, handler: Handler, **kw: Any) -> web.AbstractRoute:
        return self.router.add_get(path, guarded(self.guard, handler), **kw)

    def add_post(self, path: str, handler: Handler, **kw: Any) -> web.AbstractRoute:
        return self.router.add_post(path, guarded(self.guard, handler), **kw)


def setup(app: web.Application, guard: Guard) -> None:
    """Keep the application's guard (``routes(app)`` uses it); call before adding routes."""
    app[GUARD_KEY] = guard


def routes(app: web.Application) -> Routes:
    """The way to add a route to the application (after ``setup``)."""
    return Routes(app.router, app[GUARD_KEY])


async def _unknown(request: web.Request) -> web.StreamResponse:
    """What aiohttp answers when no route matches: 405 with ``Allow`` if the path has other methods, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:  # (the one that matches is this catch-all)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def finish(app: web.Application) -> None:
    """Add the catch-all route (last), then check that every route is guarded (RuntimeError if not)."""
    routes(app).add_route("*", CATCH_ALL, _unknown)
    bare = [f"{r.method} {r.resource.canonical if r.resource else '?'}" for r in app.router.routes()
            if not getattr(r.handler, _MARK, False)]
    if bare:
        raise RuntimeError(f"routes added without edge.routes(app), so without the browser guard: {', '.join(bare)}")
