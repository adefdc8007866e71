"""The Requests page (the request log with filters and keyset pagination) and one request's detail.

Filters arrive as query parameters (``key``, ``model``, ``status``, ``cache``, ``since``, ``from``,
``to``), pages as ``before=<id>``: the next page is "the ``n`` newest rows older than the last one
shown", never an OFFSET. Bad parameters get a 400 page saying which.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from r1proxy.appkeys import CONFIG_KEY, STORE_KEY
from r1proxy.explain import render
from r1proxy.ops_explain import ExplainError, explain_logged
from r1proxy.rules import BYPASS, MISS
from r1proxy.ui import html
from r1proxy.ui.data import CACHE_STATES, RequestFilter, outcome
from r1proxy.ui.state import now, respond, ui_state

PAGE = 50
MAX_PAGE = 500
SINCE = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
STATUSES = ("2xx", "4xx", "429", "5xx", "error")
_STATUS = re.compile(r"^([1-5]xx|[1-5]\d\d|error)$")


class BadQuery(ValueError):
    pass


def _utc(text: str, name: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadQuery(f"{name} must look like 2026-11-26T14:30 (UTC)")


def parse(q: Any, now: float) -> tuple[RequestFilter, int | None, int]:
    """(filter, before id, page size) from the query string; raises BadQuery naming the parameter."""
    status = q.get("status", "")
    if status and not _STATUS.match(status):
        raise BadQuery("status must be 2xx, 4xx, 5xx, error or a status code such as 429")
    cache = q.get("cache", "")
    if cache and cache not in CACHE_STATES:
        raise BadQuery(f"cache must be one of {', '.join(CACHE_STATES)}")
    since_key = q.get("since", "")
    if since_key and since_key not in SINCE:
        raise BadQuery(f"since must be one of {', '.join(SINCE)}")
    since = _utc(q.get("from", ""), "from")
    if since_key:
        since = max(since or 0.0, now - SINCE[since_key])
    try:
        before = int(q["before"]) if q.get("before") else None
        n = max(1, min(MAX_PAGE, int(q.get("n", PAGE))))
    except ValueError:
        raise BadQuery("before and n must be whole numbers")
    f = RequestFilter(key=q.get("key", ""), model=q.get("model", ""), status=status, cache=cache,
                      since=since, until=_utc(q.get("to", ""), "to"))
    return f, before, n


def _select(name: str, label: str, options: list[tuple[str, str]], current: str) -> str:
    opts = "".join(f'<option value="{html.esc(v)}"{" selected" if v == current else ""}>{html.esc(t)}</option>'
                   for v, t in [("", "any"), *options])
    return f'<label>{html.esc(label)} <select name="{name}">{opts}</select></label>'


def _form(q: Any, facets: dict[str, list[str]], keys: list[str]) -> str:
    key_names = sorted({*facets["keys"], *keys})
    return ('<form method="get" action="/ui/requests" class="filters">'
            + _select("key", "Key", [(k, k) for k in key_names], q.get("key", ""))
            + _select("model", "Model", [(m, m) for m in facets["models"]], q.get("model", ""))
            + _select("status", "Status", [(s, s) for s in STATUSES], q.get("status", ""))
            + _select("cache", "Cache", [(c, c) for c in CACHE_STATES], q.get("cache", ""))
            + _select("since", "Last", [(s, s) for s in SINCE], q.get("since", ""))
            + f'<label>From <input type="datetime-local" name="from" value="{html.esc(q.get("from", ""))}"></label>'
            + f'<label>To <input type="datetime-local" name="to" value="{html.esc(q.get("to", ""))}"></label>'
            + (f'<input type="hidden" name="n" value="{html.esc(q["n"])}">' if q.get("n") else "")
            + '<button type="submit">Filter</button> <a href="/ui/requests">clear</a></form>')


def _row(r: dict[str, Any]) -> str:
    href = f"/ui/requests/{int(r['id'])}"
    status_cls = "bad" if (r["status"] or 0) >= 400 else ""
    return (f'<tr data-href="{href}" data-id="{int(r["id"])}"><td><a href="{href}">{html.when(r["ts"])}</a></td>'
            f'<td>{html.esc(r["key_name"])}</td><td>{html.esc(r["alias"])}</td>'
            f'<td>{html.esc(outcome(r["cache"] or "", r["tier"] or ""))}</td>'
            f'<td class="{status_cls}">{html.esc(r["status"])}</td><td>{html.ms(r["latency_ms"])}</td>'
            f'<td>{html.ms(r["ttfb_ms"])}</td><td>{html.num(r["prompt_tokens"])} / {html.num(r["completion_tokens"])}'
            f'</td><td>{html.usd(r["cost"])}</td><td>{html.usd(r["cost_saved"])}</td></tr>')


async def requests_page(request: web.Request) -> web.Response:
    q = request.query
    at = now(request)
    try:
        f, before, n = parse(q, at)
    except BadQuery as e:
        return respond(request, "Requests", "requests", f'<p class="error">{html.esc(e)}</p>', status=400)
    data = ui_state(request).data
    rows, more = await data.call(data.requests, f, before, n)
    facets = await data.call(data.facets, at - 31 * 86400)
    keys = [k.name for k in request.app[CONFIG_KEY].keys]
    table = html.table(("time (UTC)", "key", "model", "served", "status", "total", "TTFB", "tokens in / out",
                        "spent", "saved"), [_row(r) for r in rows] or
                       ['<tr><td colspan="10" class="empty">no requests match</td></tr>'], "requests")
    keep = {k: q.get(k, "") for k in ("key", "model", "status", "cache", "since", "from", "to", "n")}
    pager = '<p class="pager">'
    if before is not None:
        pager += f'<a href="/ui/requests{html.query(keep)}" class="newest">newest</a> '
    if more and rows:
        pager += f'<a href="/ui/requests{html.query({**keep, "before": rows[-1]["id"]})}" class="older">older →</a>'
    pager += "</p>"
    return respond(request, "Requests", "requests", _form(q, facets, keys) + table + pager)


def _pre(text: Any, cls: str = "") -> str:
    return f'<pre class="{cls}">{html.esc(text)}</pre>'


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{html.esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _answer(a: dict[str, Any] | None, cached_key: str | None) -> str:
    if a is None:
        why = ("the answer is no longer in the cache" if cached_key else "this request stored no answer")
        return f'<p class="note">No answer to show: {why} (the request log keeps metadata only).</p>'
    if "error" in a:
        return f'<p class="error">{html.esc(a["error"])}</p>'
    out = ""
    if a["reasoning"]:
        out += "<h3>Reasoning</h3>" + _pre(a["reasoning"], "reasoning")
    out += "<h3>Content</h3>" + _pre(a["content"], "content")
    if a["tool_calls"]:
        out += "<h3>Tool calls</h3>" + _pre(json.dumps(a["tool_calls"], indent=2, ensure_ascii=False), "tools")
    out += "<h3>Usage (as stored with the answer)</h3>" + _pre(json.dumps(a["usage"], indent=2), "usage")
    return out


async def request_detail(request: web.Request) -> web.Response:
    rid = int(request.match_info["id"])
    data = ui_state(request).data
    r = await data.call(data.request, rid)
    if r is None:
        return respond(request, "Request not found", "requests", f"<p>No request #{rid} in the log.</p>", status=404)
    cfg = request.app[CONFIG_KEY]
    summary = _dl([
        ("time (UTC)", html.when(r["ts"])), ("request id", html.esc(r["request_id"])),
        ("key", html.esc(r["key_name"])), ("model", html.esc(r["alias"])),
        ("upstream model", html.esc(r["upstream_model"])), ("route", html.esc(r["route"])),
        ("stream", "yes" if r["stream"] else "no"),
        ("served", html.esc(outcome(r["cache"] or "", r["tier"] or ""))),
        ("status", html.esc(r["status"]) + (f" ({html.esc(r['error_type'])})" if r["error_type"] else "")),
        ("generation", html.esc(r["generation_id"])),
    ])
    timing = _dl([("queue wait", "— (not logged yet)"), ("time to first byte", html.ms(r["ttfb_ms"])),
                  ("total", html.ms(r["latency_ms"]))])
    usage = _dl([("prompt tokens", html.num(r["prompt_tokens"])),
                 ("completion tokens", html.num(r["completion_tokens"])),
                 ("of which reasoning", html.num(r["reasoning_tokens"])),
                 ("spent", html.usd(r["cost"])), ("saved by the cache", html.usd(r["cost_saved"])),
                 ("request / response bytes", f'{html.num(r["request_bytes"])} / {html.num(r["response_bytes"])}')])
    if not cfg.server.log_prompts:
        prompt = '<p class="note">Prompt text is not kept (<code>server.log_prompts = false</code>).</p>'
    elif r["prompt"] is None:
        prompt = '<p class="note">No prompt was logged for this request.</p>'
    else:
        prompt = _pre(r["prompt"], "prompt")
    body = (f'<p><a href="/ui/requests">← all requests</a></p><div class="cols"><section><h2>Request</h2>{summary}'
            f'</section><section><h2>Timing</h2>{timing}<h2>Usage and cost</h2>{usage}</section></div>'
            f"<h2>Prompt (last user message)</h2>{prompt}<h2>Answer</h2>{_answer(r['answer'], r['cache_key'])}")
    if r["cache"] in (MISS, BYPASS) and r["request_id"]:
        body += (f'<p><a href="/ui/requests/{rid}/why" class="why">Why did this miss?</a> (the nearest stored '
                 "request and the first difference, as <code>r1proxy cache explain</code> finds them)</p>")
    return respond(request, f"Request #{rid}", "requests", body)


async def request_why(request: web.Request) -> web.Response:
    """"Why did this miss?": ``r1proxy cache explain --request-id`` for one logged request."""
    rid = int(request.match_info["id"])
    data = ui_state(request).data
    r = await data.call(data.request, rid)
    back = f'<p><a href="/ui/requests/{rid}">← request #{rid}</a></p>'
    if r is None or not r["request_id"]:
        return respond(request, "Why did this miss?", "requests", back + "<p>No such logged request.</p>", status=404)
    try:
        report = await explain_logged(request.app[CONFIG_KEY], request.app[STORE_KEY].db, str(r["request_id"]))
    except ExplainError as e:
        return respond(request, "Why did this miss?", "requests", back + f'<p class="note">{html.esc(e)}</p>')
    return respond(request, "Why did this miss?", "requests", back + _pre(render(report), "explain"))
