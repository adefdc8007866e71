"""The Upstreams & keys page: pacing queues, cool-downs and daily quota per deployment, latency
(TTFB and total, p50/p95 per hour) of upstream calls, and each local key's use against its limits.

Live state comes from the running gateway (pacers, balancers, limiter, today's key usage); the
latency series from the request log (``/ui/api/latency``, column arrays for the chart).
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from r1proxy.appkeys import GATEWAY_KEY
from r1proxy.reqlog import utc_day
from r1proxy.ui import html
from r1proxy.ui.state import now, respond, ui_state


def _left(until: float) -> str:
    left = until - time.monotonic()
    return f"{left:,.0f} s" if math.isfinite(left) and left > 0 else "—"


def deployments(request: web.Request) -> list[dict[str, Any]]:
    gw = request.app[GATEWAY_KEY]
    out = []
    for alias, deps in gw.aliases.items():
        bal = gw.policy.balancers.get(alias)
        for d in deps:
            pacer = gw.policy.pacers.get(id(d))
            st = bal.state(d) if bal is not None else None
            out.append({
                "alias": alias, "upstream": d.upstream, "model": d.model, "rpm": d.rpm, "max_parallel": d.max_parallel,
                "in_flight": pacer.in_flight if pacer else (st.in_flight if st else 0),
                "queued": pacer.queued if pacer else 0,
                "cooling": _left(max(pacer.cooling_until if pacer else -math.inf,
                                     st.cooling_until if st else -math.inf)),
                "quota_gone": _left(pacer.daily_exhausted_until) if pacer else "—",
                "ewma_ttfb_ms": None if st is None or st.ewma_ttfb is None else st.ewma_ttfb * 1000,
                "ok": st.successes if st else 0, "failed": st.failures if st else 0,
            })
    return out


def _limit(used: float, limit: float, fmt: Any) -> str:
    return f"{fmt(used)} / {fmt(limit) if limit else '∞'}"


def keys(request: web.Request) -> list[str]:
    gw = request.app[GATEWAY_KEY]
    day = utc_day(now(request))
    rows = []
    for k in gw.config.keys:
        reqs, tokens, usd = gw.accounting.usage.get((k.name, day), [0, 0, 0.0])
        parallel = html.num(k.max_parallel) if k.max_parallel else "∞"
        rows.append(f'<tr><td>{html.esc(k.name)}</td><td>{html.num(reqs)}</td>'
                    f'<td>{html.num(gw.limiter.in_flight(k.name))} / {parallel}'
                    f'</td><td>{html.num(k.rpm) if k.rpm else "∞"}</td><td>{html.num(k.tpm) if k.tpm else "∞"}</td>'
                    f'<td>{_limit(tokens, k.daily_tokens, html.num)}</td><td>{_limit(usd, k.daily_usd, html.usd)}</td>'
                    f'<td>{html.esc(", ".join(k.models) or "all")}</td></tr>')
    return rows


async def api_latency(request: web.Request) -> web.Response:
    data = ui_state(request).data
    return web.json_response(await data.call(data.latency, now(request)))


async def upstreams_page(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    deps = html.table(
        ("alias", "upstream", "model", "rpm", "parallel", "in flight", "queued", "cool-down left",
         "free quota gone for", "TTFB (ewma)", "ok", "failed"),
        [f'<tr><td>{html.esc(d["alias"])}</td><td>{html.esc(d["upstream"])}</td><td>{html.esc(d["model"])}</td>'
         f'<td>{html.num(d["rpm"]) if d["rpm"] else "∞"}</td>'
         f'<td>{html.num(d["max_parallel"]) if d["max_parallel"] else "∞"}</td><td>{html.num(d["in_flight"])}</td>'
         f'<td>{html.num(d["queued"])}</td><td>{d["cooling"]}</td><td>{d["quota_gone"]}</td>'
         f'<td>{html.ms(d["ewma_ttfb_ms"])}</td><td>{html.num(d["ok"])}</td><td>{html.num(d["failed"])}</td></tr>'
         for d in deployments(request)], "deployments")
    errors = gw.metrics.snapshot()["upstream_errors_by_upstream"]
    err_rows = [f"<tr><td>{html.esc(up)}</td><td>{html.esc(kind)}</td><td>{html.num(n)}</td></tr>"
                for up, kinds in sorted(errors.items()) for kind, n in sorted(kinds.items())]
    key_rows = keys(request) or ['<tr><td colspan="8" class="empty">no [[keys]] configured: '
                                 "every loopback caller is the anonymous key “local”</td></tr>"]
    body = ("<h2>Deployments</h2>" + deps
            + '<h2>Upstream latency, last 24 hours (calls that went upstream)</h2>'
              '<div class="chart" id="chart-latency" data-series="latency" data-kind="latency"></div>'
            + "<h2>Upstream errors since start</h2>"
            + html.table(("upstream", "kind", "count"),
                         err_rows or ['<tr><td colspan="3" class="empty">none</td></tr>'])
            + "<h2>Keys (today, UTC)</h2>"
            + html.table(("key", "requests", "in flight / parallel", "rpm limit", "tpm limit", "tokens / daily budget",
                          "$ / daily budget", "models"), key_rows, "keys"))
    return respond(request, "Upstreams & keys", "upstreams", body, charts=True, data={"api": "/ui/api/latency"})
