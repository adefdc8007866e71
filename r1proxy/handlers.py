"""HTTP edge: the route table and thin handlers. Logic lives in the gateway.

``/metrics`` (Prometheus text) and ``/stats`` (JSON) answer loopback clients only, unless
``server.metrics_key`` is set: then every client must send it as a bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from . import __version__, edge
from .appkeys import CLOCK_KEY, CONFIG_KEY, GATEWAY_KEY
from .errors import ProxyError


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
    db = gw.reqlog.db if gw.reqlog is not None else None
    degraded = gw.cache.degraded() + ([db.degraded] if db is not None and db.degraded else [])
    extra = {"reason": "; ".join(degraded)} if degraded else {}  # HTTP 200 all the same: Roo keeps working
    if db is not None and db.last_event:
        extra["db_event"] = db.last_event  # e.g. the file was deleted while serving, and reopened
    return web.json_response({"status": "degraded" if degraded else "ok", "version": __version__, **extra,
                              "degraded": degraded,  # e.g. "redis breaker open …": served from local tiers
                              "uptime_s": round(request.app[CLOCK_KEY].now() - gw.started_at, 3),
                              "in_flight": len(gw.flights), "cache": cfg.cache.enabled,
                              # writes skipped after a disk error (full disk, I/O): requests never fail for it
                              "db_write_errors": db.write_errors if db is not None else 0})


def _may_read_metrics(request: web.Request) -> None:
    key = request.app[CONFIG_KEY].server.metrics_key
    if key:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(errors="replace"), key.encode()):
            raise ProxyError(401, "This endpoint needs server.metrics_key as a bearer token")
        return
    peer = request.remote or ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ProxyError(403, "Metrics are served to loopback clients only (set server.metrics_key to open them)")


async def metrics(request: web.Request) -> web.Response:
    _may_read_metrics(request)
    gw = request.app[GATEWAY_KEY]
    await gw.refresh_cache_stats()
    body, ctype = gw.metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": ctype})


async def stats(request: web.Request) -> web.Response:
    _may_read_metrics(request)
    gw = request.app[GATEWAY_KEY]
    await gw.refresh_cache_stats()
    live = {"upstreams": gw.policy.state(),
            "keys": {k.name: {"in_flight": gw.limiter.in_flight(k.name)} for k in gw.config.keys},
            "degraded": gw.cache.degraded(), "tier_reports": gw.cache.reports(),
            "free_quota": gw.costing.free_quota(), "free_quota_text": gw.costing.quota_text()}
    shared = getattr(gw.flights.shared, "report", None)  # coalescing across processes ([cache.redis])
    if shared is not None:
        live["coalescing"] = shared()
    if gw.shared_limits is not None:
        live["shared_limits"] = gw.shared_limits.report()
    return web.json_response({**gw.metrics.snapshot(), **live})


def setup_routes(app: web.Application) -> None:
    r = edge.routes(app)
    for path in ("/chat/completions", "/v1/chat/completions"):
        r.add_post(path, chat_completions)
    for path in ("/models", "/v1/models"):
        r.add_get(path, models, allow_head=False)
    r.add_get("/health", health, allow_head=False)
    r.add_get("/metrics", metrics, allow_head=False)
    r.add_get("/stats", stats, allow_head=False)
