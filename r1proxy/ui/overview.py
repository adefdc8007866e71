"""The Overview page (today and the last 30 days, charts per hour and day) and its JSON feed.

``/ui/api/overview`` returns what the page shows, with the chart series as column arrays (uPlot's
data format); ``ui.js`` polls it and updates cards, the tier table and the charts in place.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.ui import html
from r1proxy.ui.state import now, respond, ui_state

POLL_MS = 5000


def live(request: web.Request) -> dict[str, Any]:
    """What the running process knows that the database does not: in flight, uptime, memory tier."""
    gw = request.app[GATEWAY_KEY]
    cache = request.app[STORE_KEY].cache
    memory = cache.memory
    return {"in_flight": gw.metrics.in_flight, "uptime_s": round(now(request) - gw.started_at, 1),
            "memory_entries": memory.entries if memory is not None else 0,
            "memory_bytes": memory.bytes if memory is not None else 0,
            "flights": len(gw.flights), "free": gw.accounting.costing.free_quota()}


async def overview_data(request: web.Request) -> dict[str, Any]:
    data = await ui_state(request).data.call(ui_state(request).data.overview, now(request))
    data["live"] = live(request)
    return data


async def api_overview(request: web.Request) -> web.Response:
    return web.json_response(await overview_data(request))


def _cards(prefix: str, b: dict[str, Any]) -> str:
    f = f"{prefix}."
    return "".join((
        html.card("Requests", html.num(b["requests"]), f + "requests", "int"),
        html.card("Served from cache", html.pct(b["hit_rate"]), f + "hit_rate", "pct"),
        html.card("$ spent upstream", html.usd(b["cost"]), f + "cost", "usd"),
        html.card("$ saved by the local cache", html.usd(b["cost_saved"]), f + "cost_saved", "usd"),
        html.card("$ saved by the upstream prefix cache", html.usd(b["prefix_saved"]), f + "prefix_saved", "usd"),
        html.card("Tokens spent", html.num(b["tokens_spent"]), f + "tokens_spent", "int"),
        html.card("Tokens saved", html.num(b["tokens_saved"]), f + "tokens_saved", "int"),
        html.card("Errors (upstream / 5xx)", html.num(b["errors"]), f + "errors", "int"),
        html.card("429 rate limited", html.num(b["rate_limited"]), f + "rate_limited", "int"),
    ))


def _outcomes(d: dict[str, Any]) -> str:
    today, month = d["today"], d["month"]
    names = list(dict.fromkeys([*month["by_outcome"], *today["by_outcome"]]))
    rows = [f'<tr><td>{html.esc(n)}</td><td>{html.num(today["by_outcome"].get(n, 0))}</td>'
            f'<td>{html.pct(today["rate_by_outcome"].get(n, 0))}</td>'
            f'<td>{html.num(month["by_outcome"].get(n, 0))}</td>'
            f'<td>{html.pct(month["rate_by_outcome"].get(n, 0))}</td></tr>' for n in names]
    if not rows:
        rows = ['<tr><td colspan="5" class="empty">no requests yet</td></tr>']
    return html.table(("How it was served", "today", "share", "30 days", "share"), rows, "outcomes")


def _spend(d: dict[str, Any]) -> str:
    models = [f'<tr><td>{html.esc(m["model"] or "—")}</td><td>{html.num(m["requests"])}</td>'
              f'<td>{html.num(m["hits"])}</td><td>{html.usd(m["cost"])}</td><td>{html.usd(m["cost_saved"])}</td>'
              f'<td>{html.usd(m["prefix_saved"])}</td></tr>' for m in d["models"]]
    keys = [f'<tr><td>{html.esc(k["key"])}</td><td>{html.num(k["requests"])}</td><td>{html.num(k["tokens"])}</td>'
            f'<td>{html.usd(k["cost"])}</td></tr>' for k in d["keys"]]
    none = '<tr><td colspan="6" class="empty">nothing yet</td></tr>'
    return ('<div class="cols"><section><h2>Per model, 30 days</h2>'
            + html.table(("model", "requests", "from cache", "$ spent", "$ saved (local)", "$ saved (prefix)"),
                         models or [none], "models")
            + '</section><section><h2>Per key, 30 days</h2>'
            + html.table(("key", "requests", "tokens spent", "$ spent"), keys or [none], "keys")
            + "</section></div>")


def _poll_ms(request: web.Request) -> int:
    try:
        return max(250, min(60000, int(request.query.get("poll_ms", POLL_MS))))
    except ValueError:
        return POLL_MS


async def overview_page(request: web.Request) -> web.Response:
    d = await overview_data(request)
    lv = d["live"]
    resets = time.strftime("%H:%M UTC", time.gmtime(d["resets_at"]))
    free = "".join(
        f'<p class="free">Free requests left today on {html.esc(up)}: '
        f'<b data-field="live.free.{html.esc(up)}.left_today" data-fmt="int">{html.num(q["left_today"])}</b>'
        f' of {html.num(q["limit_today"])} (resets {resets})</p>'
        for up, q in lv["free"].items() if "." not in up)
    free += (f'<p class="free">Requests to <code>:free</code> models today: <b data-field="today.free_requests" '
             f'data-fmt="int">{html.num(d["today"]["free_requests"])}</b> (cache hits among them cost no quota)</p>')
    live_line = (f'<p class="live">Now: <b data-field="live.in_flight" data-fmt="int">{html.num(lv["in_flight"])}'
                 f'</b> in flight · memory cache <b data-field="live.memory_entries" data-fmt="int">'
                 f'{html.num(lv["memory_entries"])}</b> entries (<b data-field="live.memory_bytes" data-fmt="bytes">'
                 f'{html.size(lv["memory_bytes"])}</b>) · up <b data-field="live.uptime_s" data-fmt="dur">'
                 f'{int(lv["uptime_s"])} s</b> · <span class="updated" data-field="now" data-fmt="time">'
                 f'{html.when(d["now"])}</span></p>')
    body = (live_line
            + f'<h2>Today <small>(UTC day {html.when(d["day"])[:10]})</small></h2><div class="cards">'
            + _cards("today", d["today"]) + "</div>" + free
            + '<h2>Last 30 days</h2><div class="cards">' + _cards("month", d["month"]) + "</div>"
            + '<h2>Per hour, last 48 hours</h2><div class="chart" id="chart-hourly" data-series="hourly"'
              ' data-kind="requests"></div>'
            + '<h2>Per day, last 30 days: $ spent vs saved</h2><div class="chart" id="chart-daily"'
              ' data-series="daily" data-kind="money"></div>'
            + "<h2>Hit rate by tier</h2>" + _outcomes(d) + _spend(d))
    return respond(request, "Overview", "overview", body, charts=True,
                   data={"api": "/ui/api/overview", "poll-ms": str(_poll_ms(request))})
