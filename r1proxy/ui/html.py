"""HTML building for the dashboard: escaping, number formats, the page frame.

Every value that reaches a page goes through ``esc`` (or a formatter that returns digits only),
so a prompt holding ``<script>`` is shown as text. Pages carry no inline script or style: the
Content-Security-Policy (``access.CSP``) forbids both, and behaviour comes from ``ui.js`` reading
``data-*`` attributes.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from r1proxy.ui.assets import asset_url

NAV = (("overview", "/ui", "Overview"), ("requests", "/ui/requests", "Requests"), ("cache", "/ui/cache", "Cache"),
       ("upstreams", "/ui/upstreams", "Upstreams & keys"))
ON = ' class="on" aria-current="page"'


def esc(value: Any) -> str:
    """Text for an element body or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "—"


def usd(v: float | None) -> str:
    return f"${(v or 0):,.4f}"


def num(v: float | None) -> str:
    return f"{int(v or 0):,}"


def pct(v: float | None) -> str:
    return f"{(v or 0) * 100:.1f}%"


def ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f} ms"


def size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def query(params: Mapping[str, Any]) -> str:
    """``?a=1&b=2`` from the non-empty values (escaped for an href)."""
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return esc("?" + urlencode(clean)) if clean else ""


def table(head: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    ths = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<table class="{esc(cls)}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def card(label: str, value: str, field: str = "", fmt: str = "", note: str = "") -> str:
    attrs = f' data-field="{esc(field)}" data-fmt="{esc(fmt)}"' if field else ""
    extra = f'<div class="note">{note}</div>' if note else ""
    return (f'<div class="card"><div class="label">{esc(label)}</div>'
            f'<div class="value"{attrs}>{value}</div>{extra}</div>')


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


def page(title: str, active: str, body: str, *, data: Mapping[str, str] | None = None, charts: bool = False,
         logout_csrf: str = "") -> str:
    """The whole document: head with the vendored assets, navigation, ``body`` inside <main>."""
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (data or {}).items())
    nav = "".join(f'<a href="{href}"{ON if key == active else ""}>{esc(label)}</a>' for key, href, label in NAV)
    if logout_csrf:
        nav += (f'<form method="post" action="/ui/logout" class="logout">{csrf_field(logout_csrf)}'
                '<button type="submit">Log out</button></form>')
    chart_assets = (f'<link rel="stylesheet" href="{asset_url("uPlot.min.css")}">'
                    f'<script src="{asset_url("uPlot.iife.min.js")}" defer></script>') if charts else ""
    return ("<!doctype html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · r1proxy</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="{asset_url("favicon.svg")}" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{asset_url("ui.css")}">{chart_assets}'
            f'<script src="{asset_url("ui.js")}" defer></script></head>'
            f'<body><header><span class="brand">r1proxy</span><nav>{nav}</nav></header>'
            f'<main data-page="{esc(active)}"{attrs}><h1>{esc(title)}</h1>{body}</main></body></html>\n')


def message(title: str, text: str) -> str:
    """A bare page for refusals and errors (no navigation: the visitor may not see the rest)."""
    return ("<!doctype html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · r1proxy</title>'
            f'<link rel="icon" href="{asset_url("favicon.svg")}" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{asset_url("ui.css")}"></head>'
            f'<body><main class="narrow"><h1>{esc(title)}</h1><p>{esc(text)}</p></main></body></html>\n')


def login_page(csrf: str, error: str = "") -> str:
    err = f'<p class="error">{esc(error)}</p>' if error else ""
    return ("<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8"><title>Log in · r1proxy</title>'
            f'<link rel="icon" href="{asset_url("favicon.svg")}" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{asset_url("ui.css")}"></head>'
            '<body><main class="narrow"><h1>r1proxy dashboard</h1>'
            f'<p>This dashboard needs the admin key (<code>server.admin_key</code>).</p>{err}'
            f'<form method="post" action="/ui/login" class="login">{csrf_field(csrf)}'
            '<label>Admin key <input type="password" name="admin_key" autocomplete="current-password" '
            'required autofocus></label> <button type="submit">Log in</button></form></main></body></html>\n')
