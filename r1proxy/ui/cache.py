"""The Cache page (entries by hits, size per tier) and its purge actions (one entry, a model, by age).

Purges go through the running cache (every tier: memory, disk, and any later tier that can purge),
so the next identical request is a MISS; a purge notice (cache/notices.py) tells the other workers.
Each purge is a POST with a CSRF token, answered by a
redirect back to the page saying how many entries went.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from r1proxy.appkeys import STORE_KEY
from r1proxy.cache import CacheEntry, NullCache, TieredCache
from r1proxy.cache.purge import PurgeFilter
from r1proxy.config import parse_duration
from r1proxy.ui import html
from r1proxy.ui.data import MODEL_COUNT_CAP
from r1proxy.ui.state import csrf, now, respond, see_other, ui_state

SHOWN = 100


def _count(n: int) -> str:
    return f"more than {html.num(MODEL_COUNT_CAP)}" if n > MODEL_COUNT_CAP else html.num(n)


def _preview(e: dict[str, Any]) -> str:
    user = (e["preview_user"] or "")[:120]
    answer = (e["preview_answer"] or "")[:120]
    return f'<div class="q">{html.esc(user)}</div><div class="a">{html.esc(answer)}</div>'


def _row(e: dict[str, Any], token: str) -> str:
    key = str(e["key"])
    form = (f'<form method="post" action="/ui/cache/purge" class="inline">{html.csrf_field(token)}'
            f'<input type="hidden" name="what" value="one"><input type="hidden" name="key" value="{html.esc(key)}">'
            '<button type="submit" class="danger">purge</button></form>')
    return (f'<tr data-key="{html.esc(key)}"><td><code title="{html.esc(key)}">{html.esc(key[:16])}…</code></td>'
            f'<td>{html.esc(e["model"])}</td><td>{html.num(e["hits"])}</td><td>{html.when(e["created_at"])}</td>'
            f'<td>{html.when(e["last_hit_at"] or e["created_at"])}</td><td>{html.size(e["stored_bytes"])}</td>'
            f'<td class="preview">{_preview(e)}</td><td>{form}</td></tr>')


async def cache_page(request: web.Request) -> web.Response:
    cache = request.app[STORE_KEY].cache
    if isinstance(cache, NullCache):
        return respond(request, "Cache", "cache", "<p>The cache is disabled (<code>cache.enabled = false</code>).</p>")
    data = ui_state(request).data
    model = request.query.get("model", "")
    entries = await data.call(data.cache_entries, SHOWN, model)
    models = await data.call(data.cache_models)
    token = csrf(request)
    tiers = html.table(("tier", "entries", "stored"), [
        f"<tr><td>{html.esc(t.name)}</td><td>{html.num(t.entries)}</td><td>{html.size(t.bytes)}</td></tr>"
        for t in await cache.stats()], "tiers")
    notice = ""
    if request.query.get("purged", "").isdigit():
        n = int(request.query["purged"])
        notice = f'<p class="notice" role="status">Purged {n} entr{"y" if n == 1 else "ies"}.</p>'
    elif request.query.get("error"):
        notice = f'<p class="error">{html.esc(request.query["error"])}</p>'
    options = "".join(f'<option value="{html.esc(m)}">{html.esc(m or "(none)")} ({_count(n)})</option>'
                      for m, n in models)
    actions = (f'<div class="actions"><form method="post" action="/ui/cache/purge">{html.csrf_field(token)}'
               '<input type="hidden" name="what" value="model"><label>Purge every entry of model '
               f'<select name="model">{options}</select></label> <button type="submit" class="danger">purge model'
               f'</button></form><form method="post" action="/ui/cache/purge">{html.csrf_field(token)}'
               '<input type="hidden" name="what" value="age"><label>Purge entries created more than '
               '<input name="older_than" value="7d" size="6"> ago</label> <button type="submit" class="danger">'
               "purge old</button></form></div>")
    rows = [_row(e, token) for e in entries] or ['<tr><td colspan="8" class="empty">the cache is empty</td></tr>']
    title = f"Top {SHOWN} entries by hits" + (f" for {model}" if model else "")
    body = (notice + "<h2>Size per tier</h2>" + tiers + "<h2>Purge</h2>" + actions + f"<h2>{html.esc(title)}</h2>"
            + html.table(("key", "model", "hits", "first used", "last used", "size", "preview", ""), rows, "entries"))
    return respond(request, "Cache", "cache", body)


async def _purge(request: web.Request, cache: TieredCache, model: str | None, older_than_s: float | None) -> int:
    """Purge matching entries from every tier; returns the largest count any tier reported.

    Memory and SQLite purge by filter; a tier that can only delete by key (Redis) gets the keys the
    disk tier holds for that filter (entries only another process stored there are not seen)."""
    cutoff = now(request) - older_than_s if older_than_s is not None else None

    def match(e: CacheEntry) -> bool:
        return (model is None or e.model == model) and (cutoff is None or e.created_at < cutoff)

    data = ui_state(request).data
    keys = await data.call(data.cache_keys, model, cutoff)
    n = cache.memory.drop_where(match) if cache.memory is not None else 0
    for tier in cache.tiers:
        purge = getattr(tier, "purge", None)
        if purge is not None:
            n = max(n, await purge(model=model, older_than_s=older_than_s))
        else:
            for key in keys:
                await tier.delete(key)
    return max(n, len(keys))


async def purge_action(request: web.Request) -> web.StreamResponse:
    cache = request.app[STORE_KEY].cache
    if isinstance(cache, NullCache):
        return see_other("/ui/cache")
    form = await request.post()
    what = str(form.get("what", ""))
    if what == "one" and form.get("key"):
        n = int(await cache.delete(str(form["key"])))
        done = PurgeFilter(key=str(form["key"]))
    elif what == "model" and "model" in form:
        n = await _purge(request, cache, str(form["model"]), None)
        done = PurgeFilter(model=str(form["model"]))
    elif what == "age":
        try:
            age = parse_duration(str(form.get("older_than", "")))
        except ValueError as e:
            return see_other("/ui/cache", error=f"older than: {e}")
        n = await _purge(request, cache, None, age)
        done = PurgeFilter(before=now(request) - age)
    else:
        return see_other("/ui/cache", error="unknown purge request")
    notices = request.app[STORE_KEY].notices
    if notices is not None:  # the other workers on this state dir drop their memory copies too
        await notices.post(done)
    return see_other("/ui/cache", purged=str(n))
