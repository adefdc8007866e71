"""The local web dashboard at ``/ui``: server-rendered pages from this process, no build step, no CDN.

``setup_ui(app)`` registers the routes: Overview (``/ui``), Requests, one request, Cache (with
purge actions), Upstreams & keys, their JSON feeds under ``/ui/api/``, the login form, and the
packaged static files. ``GET /`` sends a browser (``Accept: text/html``) to ``/ui``; API clients
get the same 404 as before. Who may see what is ``access``'s business; every read is ``data``'s.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator

from aiohttp import web

from r1proxy import edge
from r1proxy.appkeys import CONFIG_KEY
from r1proxy.ui import html
from r1proxy.ui.access import SESSION_COOKIE, SESSION_S, Access, finish, guarded, nonce_of
from r1proxy.ui.assets import static
from r1proxy.ui.cache import cache_page, purge_action
from r1proxy.ui.overview import api_overview, overview_page
from r1proxy.ui.requests import request_detail, request_why, requests_page
from r1proxy.ui.state import UI_KEY, UiState, see_other
from r1proxy.ui.upstreams import api_latency, upstreams_page

__all__ = ["setup_ui"]


def _access(request: web.Request) -> Access:
    return request.app[UI_KEY].access


guard = guarded(_access)


async def root(request: web.Request) -> web.StreamResponse:
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=302, headers={"Location": "/ui"})
    raise web.HTTPNotFound()


async def login_form(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    access = _access(request)
    cfg = request.app[CONFIG_KEY]
    if not cfg.server.admin_key:  # nothing to log in to: the loopback rule decides
        why = access.refusal(request)
        resp: web.StreamResponse = see_other("/ui") if why is None else web.Response(
            status=why[0], text=html.message("Not allowed", why[1]), content_type="text/html")
        return finish(request, resp, started)
    if request.method == "GET":
        return finish(request, web.Response(text=html.login_page(access.csrf_token(nonce_of(request))),
                                            content_type="text/html"), started)
    wait = access.login_blocked(request.remote or "")
    if wait:
        return finish(request, web.Response(status=429, headers={"Retry-After": str(int(wait) + 1)},
                                            content_type="text/html", text=html.message(
            "Too many attempts", f"Too many wrong admin keys from this address: try again in {int(wait) + 1} s.")),
            started)
    form = await request.post()
    if not access.csrf_ok(request, form):
        return finish(request, web.Response(status=403, content_type="text/html", text=html.message(
            "Refused", "The form was stale or came from another site: reload the page and try again.")), started)
    given = str(form.get("admin_key", ""))
    if not hmac.compare_digest(given.encode(), cfg.server.admin_key.encode()):
        access.login_failed(request.remote or "")
        return finish(request, web.Response(status=401, content_type="text/html", text=html.login_page(
            access.csrf_token(nonce_of(request)), "That is not the admin key.")), started)
    resp = see_other("/ui")
    resp.set_cookie(SESSION_COOKIE, access.new_session(cfg.server.admin_key), max_age=SESSION_S, path="/ui",
                    httponly=True, samesite="Strict", secure=request.secure)
    return finish(request, resp, started)


async def logout(request: web.Request) -> web.StreamResponse:
    resp = see_other("/ui/login")
    resp.del_cookie(SESSION_COOKIE, path="/ui")
    return resp


async def _ui_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[UI_KEY].close()


def setup_ui(app: web.Application) -> None:
    app[UI_KEY] = UiState(app[CONFIG_KEY].db_path)
    app.cleanup_ctx.append(_ui_ctx)
    r = edge.routes(app)  # each route behind the browser guard (r1proxy.edge)
    r.add_get("/", root, allow_head=False)
    r.add_get("/ui/static/{name}", static, allow_head=False)
    r.add_get("/ui/login", login_form, allow_head=False)
    r.add_post("/ui/login", login_form)
    r.add_post("/ui/logout", guard(logout))
    for path, handler in (("/ui", overview_page), ("/ui/", overview_page), ("/ui/api/overview", api_overview),
                          ("/ui/requests", requests_page), ("/ui/requests/{id:\\d{1,18}}", request_detail),
                          ("/ui/requests/{id:\\d{1,18}}/why", request_why),
                          ("/ui/cache", cache_page), ("/ui/upstreams", upstreams_page),
                          ("/ui/api/latency", api_latency)):
        r.add_get(path, guard(handler), allow_head=False)
    r.add_post("/ui/cache/purge", guard(purge_action))
