"""The browser guard: no web page may spend the user's credit or read the proxy's replies.

``guard_middleware`` runs before every handler:

- ``Host`` must be an IP literal, ``localhost`` (or ``*.localhost``), or a name listed in
  ``server.allowed_hosts``: a DNS-rebinding page reaches a loopback proxy under its own domain name.
- A request carrying ``Origin`` must come from the proxy's own origin or one listed in
  ``server.cors_origins`` (403 otherwise). Roo Code (Node) sends no Origin and is unaffected.
- A POST must declare ``Content-Type: application/json`` (415): a browser can send ``text/plain``
  cross-origin without a preflight, never ``application/json``. A body over the size limit is
  a 413 first. The dashboard's forms under ``/ui/`` are exempt: each carries a CSRF token.
- ``OPTIONS`` from an allowed origin is a CORS preflight answered here; ``cors_headers``
  (an ``on_response_prepare`` hook, so streamed replies get them too) adds ``Access-Control-*``
  to the replies of allowed cross-origin requests.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from .appkeys import CONFIG_KEY
from .errors import ProxyError

ALLOW_METHODS = "GET, POST, OPTIONS"
# request headers a browser client may send (what the openai SDK and Roo-like clients use)
ALLOW_HEADERS = ("Authorization, Content-Type, Cache-Control, X-Request-Id, X-Api-Key, HTTP-Referer, X-Title, "
                 "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
                 "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout")
EXPOSE_HEADERS = ("X-Cache, X-Cache-Key, X-Cache-Tier, X-Request-Id, X-R1proxy-Route, Age, Retry-After, "
                  "x-should-retry, X-Generation-Id")
FORM_PATHS = ("/ui/",)  # POSTs answered by HTML forms, not JSON
_ORIGIN_OK = web.RequestKey("r1proxy_origin_ok", str)


def host_name(host: str) -> str:
    """The name part of a Host header value (no port, no IPv6 brackets), lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    if host is None:  # HTTP/1.0 without Host: no browser sends that
        return True
    name = host_name(host)
    try:
        ipaddress.ip_address(name)
        return True  # an IP literal cannot be rebound: a page under it is the proxy's own origin
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return name in allowed or "*" in allowed


def origin_allowed(request: web.Request, origin: str, cors_origins: tuple[str, ...]) -> bool:
    if origin in cors_origins or "*" in cors_origins:
        return True
    host = request.headers.get("Host")
    # the proxy's own pages (same origin) send Origin on POST too; it is echoed back, so bounded
    return (host is not None and len(origin) <= 300 and origin.isascii() and origin.isprintable()
            and origin in (f"http://{host}", f"https://{host}"))


def _is_json(content_type: str) -> bool:
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


@web.middleware
async def guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    server = request.app[CONFIG_KEY].server
    if not host_allowed(request.headers.get("Host"), server.allowed_hosts):
        raise ProxyError(403, "Host not allowed: r1proxy answers only loopback and IP addresses, localhost and "
                              "the names in server.allowed_hosts (a guard against DNS rebinding)",
                         code="host_not_allowed")
    origin = request.headers.get("Origin")
    if origin is not None:
        if not origin_allowed(request, origin, server.cors_origins):
            raise ProxyError(403, "Origin not allowed: add it to server.cors_origins to let a web page use r1proxy",
                             code="origin_not_allowed")
        request[_ORIGIN_OK] = origin
    if request.method == "OPTIONS":
        if origin is None or request.headers.get("Access-Control-Request-Method") is None:
            raise ProxyError(405, f"Method OPTIONS is not allowed on {request.path}")
        return web.Response(status=204, headers={"Access-Control-Allow-Methods": ALLOW_METHODS,
                                                 "Access-Control-Allow-Headers": ALLOW_HEADERS,
                                                 "Access-Control-Max-Age": "600"})
    if request.method == "POST":
        if request.content_length is not None and request.content_length > server.max_request_bytes:
            raise ProxyError(413, "Request body too large (see server.max_request_mb)")
        # the dashboard's HTML forms (r1proxy.ui) carry their own CSRF token and same-origin check
        if not _is_json(request.headers.get("Content-Type", "")) and not request.path.startswith(FORM_PATHS):
            raise ProxyError(415, "Content-Type must be application/json", code="unsupported_media_type")
    return await handler(request)


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: Access-Control-* on every reply to an allowed cross-origin request."""
    origin = request.get(_ORIGIN_OK)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin  # checked against the allow-list above
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(cors_headers)
