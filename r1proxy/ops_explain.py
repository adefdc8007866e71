"""``r1proxy cache explain``: find the request to explain and the stored ones to compare it with.

The request is the last logged miss whose canonical request is stored (``--last``), a logged
request by id (``--request-id``), or a client body (stdin, or ``explain_body`` for the dashboard),
turned into its canonical form exactly as the gateway does (alias templates, then the cache key's
normalisation). Candidates are the newest stored requests for the same model. The
comparison itself is ``explain.py``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .cache.keys import KeyMaker
from .cache.sqlite import SqliteTier
from .config import Config
from .db import Database
from .errors import ProxyError
from .explain import Stored, explain, parse, render
from .request import validate
from .routing import pass_through
from .rules import BYPASS, MISS
from .templates import prepare

CANDIDATES = 500  # stored requests compared, newest first

_LAST_MISSES = ("SELECT request_id, cache_key FROM requests WHERE cache IN (?, ?) AND COALESCE(cache_key, '') != '' "
                "ORDER BY id DESC LIMIT 200")
_BY_ID = "SELECT cache_key FROM requests WHERE request_id = ? AND COALESCE(cache_key, '') != '' ORDER BY id DESC"
# The newest entries of the model (rowid follows insertion), read in order from the model index:
# "most recently used" meant sorting every entry of the model (2.3 s at 1M entries).
_SAME_MODEL = "SELECT key FROM cache_entries WHERE model = ? ORDER BY rowid DESC LIMIT ?"


class ExplainError(Exception):
    """Nothing to explain (a one-line message for the CLI, a 4xx for the dashboard)."""


def canonical_of_body(config: Config, raw: bytes) -> tuple[str, bytes, str]:
    """(cache key, canonical request, upstream model) of a client body, as the gateway computes them
    (without a ``cache.share = "key"`` partition: the command line has no key)."""
    try:
        body = validate(raw)
    except ProxyError as e:
        raise ExplainError(f"not a chat request: {e.message}") from None
    aliases = config.aliases()
    first = (aliases.get(body["model"]) or [pass_through(body["model"], config.server.default_upstream)])[0]
    cache = body.get("cache")
    namespace = cache.get("namespace", "") if isinstance(cache, dict) else ""
    keys = KeyMaker(config.cache.ignore_patterns, config.cache.namespace)
    key, canonical = keys.cache_key(first.upstream, prepare(body, first, first.model), str(namespace or ""))
    return key, canonical, first.model


async def _stored(tier: SqliteTier, key: str) -> Stored | None:
    entry = await tier.get_full(key)
    if entry is None or not entry.request:
        return None
    try:
        return Stored(entry.key, parse(entry.request), entry.created_at, entry.expires_at)
    except ValueError:
        return None


async def _candidates(db: Database, tier: SqliteTier, model: str) -> list[Stored]:
    out = []
    for (key,) in await db.fetchall(_SAME_MODEL, (model, CANDIDATES)):
        s = await _stored(tier, key)
        if s is not None:
            out.append(s)
    return out


async def explain_logged(config: Config, db: Database, request_id: str | None = None) -> dict[str, Any]:
    """The explanation of a logged request (by id), or of the last logged miss (``request_id`` None)."""
    tier = SqliteTier(db)
    this: Stored | None = None
    rid = request_id
    if request_id is None:
        for logged_id, key in await db.fetchall(_LAST_MISSES, (MISS, BYPASS)):
            this, rid = await _stored(tier, key), logged_id
            if this is not None:
                break
        if this is None:
            raise ExplainError("no logged miss whose request is stored (only complete answers are); "
                               "pipe a request body to `r1proxy cache explain` instead")
    else:
        rows = await db.fetchall(_BY_ID, (request_id,))
        if not rows:
            raise ExplainError(f"no logged request {request_id!r} with a cache key")
        this = await _stored(tier, rows[0][0])
        if this is None:
            raise ExplainError(f"request {request_id!r} was not stored (only complete answers are); pipe its "
                               "body to `r1proxy cache explain` instead")
    report = explain(this.canonical, await _candidates(db, tier, str(this.canonical.get("model"))),
                     key=this.key, configured=config.cache.ignore_patterns)
    report["stored_with_same_key"] = None  # it is this request's own entry
    report["request_id"] = rid
    return report


async def explain_body(config: Config, db: Database, raw: bytes) -> dict[str, Any]:
    """The explanation of a client request body (the dashboard's "why would this miss?")."""
    key, canonical, model = canonical_of_body(config, raw)
    tier = SqliteTier(db)
    pool = await _candidates(db, tier, model)
    own = await _stored(tier, key)
    if own is not None and all(s.key != key for s in pool):
        pool.append(own)
    return explain(parse(canonical), pool, key=key, configured=config.cache.ignore_patterns)


async def run(config: Config, db: Database, *, last: bool, request_id: str | None, as_json: bool) -> int:
    """The CLI: one of --last, --request-id, or a body on stdin; prints text or JSON."""
    if last or request_id:
        report = await explain_logged(config, db, request_id)
    else:
        if sys.stdin.isatty():
            raise ExplainError("give --last, --request-id ID, or a request body on stdin")
        report = await explain_body(config, db, sys.stdin.buffer.read())
    print(json.dumps(report, indent=2, ensure_ascii=False) if as_json else render(report))
    return 0
