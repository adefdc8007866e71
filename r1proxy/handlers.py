"""HTTP edge: the route table and thin handlers. Logic lives in the gateway."""

from __future__ import annotations

import time

from aiohttp import web

from . import __version__
from .appkeys import CONFIG_KEY, GATEWAY_KEY


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY_KEY].chat(request)


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    key = gw.auth.check(request.headers)
    created = int(gw.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": deps[0].upstream,
             "upstream_model": deps[0].model}
            for name, deps in gw.aliases.items() if not key.models or name in key.models]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    cfg = request.app[CONFIG_KEY]
    return web.json_response({"status": "ok", "version": __version__,
                              "uptime_s": round(time.time() - gw.started_at, 3),
                              "in_flight": len(gw.flights), "cache": cfg.cache.enabled})


def setup_routes(app: web.Application) -> None:
    r = app.router
    for path in ("/chat/completions", "/v1/chat/completions"):
        r.add_post(path, chat_completions)
    for path in ("/models", "/v1/models"):
        r.add_get(path, models, allow_head=False)
    r.add_get("/health", health, allow_head=False)
