"""Who may use the dashboard, CSRF tokens, and the security headers every dashboard response carries.

The rule (the same shape as ``/metrics``):

- ``server.admin_key`` unset: loopback clients only, and only with a ``Host`` that cannot be a
  rebound name (an IP literal, localhost, or a ``server.allowed_hosts`` name: the guard's rule,
  ``r1proxy.guard``), so a DNS-rebinding page cannot use the user's browser. Else 403.
- ``server.admin_key`` set: every client shows it, as ``Authorization: Bearer`` or through the
  login form, which sets an HttpOnly, SameSite=Strict session cookie (signed with a key derived
  from the admin key: it survives restarts and dies when the key changes). Without it: 401.

Every POST also needs a CSRF token (an HMAC of a SameSite=Strict cookie nonce under a per-process
secret) and must not come from another site (``Origin`` / ``Sec-Fetch-Site``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from r1proxy.appkeys import CONFIG_KEY
from r1proxy.config import ServerConfig
from r1proxy.guard import host_allowed
from r1proxy.ui import html

SESSION_COOKIE = "r1proxy_ui"
CSRF_COOKIE = "r1proxy_csrf"
SESSION_S = 12 * 3600
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
                    "Cross-Origin-Resource-Policy": "same-origin"}

NEW_NONCE: web.RequestKey[str] = web.RequestKey("NEW_NONCE", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False


def local_host(host_header: str, server: ServerConfig) -> bool:
    """Whether a Host header cannot be a rebound name: the guard's rule (IP literal, localhost,
    ``server.allowed_hosts``), but a missing Host is not enough for the dashboard."""
    return bool(host_header) and host_allowed(host_header, server.allowed_hosts)


LOGIN_FAILURES = 10  # wrong admin keys per client address and LOGIN_WINDOW_S before the form answers 429
LOGIN_WINDOW_S = 60.0
_TRACKED = 1024


class Access:
    """The dashboard's access decisions; one per application."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._failures: dict[str, list[float]] = {}

    # -- login throttle ---------------------------------------------------------------------

    def login_blocked(self, peer: str, now: float | None = None) -> float:
        """Seconds until ``peer`` may try the login form again (0 when it may now)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(peer, ()) if now - t < LOGIN_WINDOW_S]
        if recent:
            self._failures[peer] = recent
        else:
            self._failures.pop(peer, None)
        return LOGIN_WINDOW_S - (now - recent[0]) if len(recent) >= LOGIN_FAILURES else 0.0

    def login_failed(self, peer: str, now: float | None = None) -> None:
        if peer not in self._failures and len(self._failures) >= _TRACKED:
            self._failures.pop(next(iter(self._failures)))  # the oldest tracked address
        self._failures.setdefault(peer, []).append(time.monotonic() if now is None else now)

    # -- sessions (admin key) ---------------------------------------------------------------

    @staticmethod
    def _session_key(admin_key: str) -> bytes:
        return hashlib.sha256(b"r1proxy-ui-session\0" + admin_key.encode()).digest()

    def new_session(self, admin_key: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_S)
        mac = hmac.new(self._session_key(admin_key), str(expires).encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def session_ok(self, cookie: str, admin_key: str, now: float | None = None) -> bool:
        expires, _, mac = cookie.partition(".")
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        want = hmac.new(self._session_key(admin_key), expires.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac.encode(), want.encode())

    # -- the rule ---------------------------------------------------------------------------

    def refusal(self, request: web.Request) -> tuple[int, str] | None:
        """None when the request may proceed, else (status, reason)."""
        server = request.app[CONFIG_KEY].server
        if server.admin_key:
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), server.admin_key.encode()):
                return None
            if self.session_ok(request.cookies.get(SESSION_COOKIE, ""), server.admin_key):
                return None
            return 401, "Log in with server.admin_key to use the dashboard."
        if not _is_loopback_ip(request.remote or ""):
            return 403, ("The dashboard is served to loopback clients only "
                         "(set server.admin_key to open it to others).")
        if not local_host(request.host, server):
            return 403, "This Host name is not served (see server.allowed_hosts)."
        return None

    # -- CSRF -------------------------------------------------------------------------------

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._secret, b"csrf\0" + nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: web.Request, form: Any) -> bool:
        site = request.headers.get("Sec-Fetch-Site")
        if site not in (None, "same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return False
        nonce = request.cookies.get(CSRF_COOKIE, "")
        given = str(form.get("csrf", "")) if form is not None else ""
        return bool(nonce) and hmac.compare_digest(given.encode(), self.csrf_token(nonce).encode())


def nonce_of(request: web.Request) -> str:
    """This browser's CSRF nonce: the cookie's, or a fresh one that ``finish`` will set."""
    nonce = request.cookies.get(CSRF_COOKIE) or request.get(NEW_NONCE)
    if not nonce:
        nonce = request[NEW_NONCE] = secrets.token_urlsafe(24)
    return nonce


def finish(request: web.Request, resp: web.StreamResponse, started: float) -> web.StreamResponse:
    """Security headers, the CSRF nonce cookie when new, and the server time."""
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
    new = request.get(NEW_NONCE)
    if new:
        resp.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="Strict", path="/ui", secure=request.secure)
    return resp


def refused(request: web.Request, access: Access, status: int, reason: str) -> web.Response:
    if request.path.startswith("/ui/api/"):
        return web.json_response({"error": {"message": reason, "type": "permission_error", "code": status}},
                                 status=status)
    if status == 401:
        body = html.login_page(access.csrf_token(nonce_of(request)))
    else:
        body = html.message("Not allowed", reason)
    return web.Response(status=status, text=body, content_type="text/html")


def guarded(get_access: Callable[[web.Request], Access]) -> Callable[[Handler], Handler]:
    """Wrap a dashboard handler: access rule, CSRF on POST, security headers, Server-Timing."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            access = get_access(request)
            why = access.refusal(request)
            if why is not None:
                return finish(request, refused(request, access, *why), started)
            if request.method == "POST":
                form = await request.post()
                if not access.csrf_ok(request, form):
                    resp = web.Response(status=403, content_type="text/html", text=html.message(
                        "Refused", "The form was stale or came from another site: reload the page and try again."))
                    return finish(request, resp, started)
            return finish(request, await handler(request), started)

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return wrap
