"""The browser guard: no web page may spend the user's credit or read the proxy's replies.

``Guard.check`` runs before every handler (``edge.guarded`` wraps each route's handler):

- ``Host`` must be an IP literal, ``localhost`` (or ``*.localhost``), or a name listed in
  ``server.allowed_hosts``: a DNS-rebinding page reaches a loopback proxy under its own domain name.
- A request carrying ``Origin`` must come from the proxy's own origin or one listed in
  ``server.cors_origins`` (403 otherwise). Roo Code (Node) sends no Origin and is unaffected.
- A POST must declare ``Content-Type: application/json`` (415): a browser can send ``text/plain``
  cross-origin without a preflight, never ``application/json``. A body over the size limit is
  a 413 first. The dashboard's forms under ``/ui/`` are exempt: each carries a CSRF token.
- ``OPTIONS`` from an allowed origin is a CORS preflight answered here; ``cors_headers`` adds
  ``Access-Control-*`` to the replies of allowed cross-origin requests (streamed ones too).
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from .config import ServerConfig
from .errors import ProxyError

ALLOW_METHODS = "GET, POST, OPTIONS"
# request headers a browser client may send (what the openai SDK and Roo-like clients use)
ALLOW_HEADERS = ("Authorization, Content-Type, Cache-Control, X-Request-Id, X-Api-Key, HTTP-Referer, X-Title, "
                 "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
                 "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout")
EXPOSE_HEADERS = ("X-Cache, X-Cache-Key, X-Cache-Tier, X-Request-Id, X-R1proxy-Route, Age, Retry-After, "
                  "x-should-retry, X-Generation-Id")
PREFLIGHT_HEADERS = {"Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": ALLOW_HEADERS,
                     "Access-Control-Max-Age": "600"}
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


HOST_MEMO = 64  # distinct Host header values whose verdict is kept (cleared when full)


class Guard:
    """The checks above for one server config, the verdict per ``Host`` value memoised.

    ``check`` does for a no-``Origin`` JSON POST on a known Host what it must and no more: a dict
    lookup for the Host, an absent ``Origin``, the size and the content type."""

    def __init__(self, server: ServerConfig) -> None:
        self.allowed_hosts = server.allowed_hosts
        self.cors_origins = server.cors_origins
        self.max_request_bytes = server.max_request_bytes
        self._hosts: dict[str, bool] = {}

    def host_ok(self, host: str | None) -> bool:
        if host is None:
            return True
        ok = self._hosts.get(host)
        if ok is None:  # a pure function of the value and the config: memoised, bounded
            ok = host_allowed(host, self.allowed_hosts)
            if len(self._hosts) >= HOST_MEMO:
                self._hosts.clear()
            self._hosts[host] = ok
        return ok

    def check(self, request: web.Request) -> web.Response | None:
        """Raises ``ProxyError`` for a request the guard refuses; a CORS preflight's reply; else None."""
        headers = request.headers
        if not self.host_ok(headers.get("Host")):
            raise ProxyError(403, "Host not allowed: r1proxy answers only loopback and IP addresses, localhost "
                                  "and the names in server.allowed_hosts (a guard against DNS rebinding)",
                             code="host_not_allowed")
        origin = headers.get("Origin")
        if origin is not None:
            if not origin_allowed(request, origin, self.cors_origins):
                raise ProxyError(403, "Origin not allowed: add it to server.cors_origins to let a web page use "
                                      "r1proxy", code="origin_not_allowed")
            request[_ORIGIN_OK] = origin
        method = request.method
        if method == "POST":
            length = request.content_length
            if length is not None and length > self.max_request_bytes:
                raise ProxyError(413, "Request body too large (see server.max_request_mb)")
            ctype = headers.get("Content-Type", "")
            # the dashboard's HTML forms (r1proxy.ui) carry their own CSRF token and same-origin check
            if ctype != "application/json" and not _is_json(ctype) and not request.path.startswith(FORM_PATHS):
                raise ProxyError(415, "Content-Type must be application/json", code="unsupported_media_type")
        elif method == "OPTIONS":
            if origin is None or headers.get("Access-Control-Request-Method") is None:
                raise ProxyError(405, f"Method OPTIONS is not allowed on {request.path}")
            return web.Response(status=204, headers=PREFLIGHT_HEADERS)
        return None


GUARD_KEY = web.AppKey("r1proxy_guard", Guard)  # the application's Guard (edge.py)


def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Access-Control-* on a reply to an allowed cross-origin request, before it is prepared: the edge
    middleware calls it for every reply it returns or raises, ``reply.StreamFollower`` before it opens
    a stream (the only reply prepared inside a handler). Not an ``on_response_prepare`` hook: that
    signal costs every request a coroutine, and most requests carry no ``Origin``."""
    if request.headers.get("Origin") is None:  # the common case, without a KeyError inside request.get
        return
    origin = request.get(_ORIGIN_OK)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin  # checked against the allow-list above
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"

