"""The r1proxy database schema: every CREATE lives in this package, as append-only migrations.

Each ``mNNN_what(conn)`` runs once, inside its own transaction, and its name is recorded in
``_r1proxy_migrations``. Never edit a shipped migration; append a new one saying why, at the end
of the module of its concern (or a new module). Migrations apply in the order of their numbers:
core m001-m005, cost m010-, totals m020-, dictionaries m030-, semantic m040-, dashboard m050-,
logwrite m060-, notices m080-.
All times are Unix seconds (UTC); the views render them with ``datetime()`` (UTC).

Tables: ``cache_entries`` (one row per cached completion; metadata in plain columns, the
completion JSON and the canonical request as zstd blobs), ``requests`` (one row per client
request), ``key_usage`` (per key and UTC day, so daily budgets survive a restart),
``cache_totals`` (one row: entries and bytes of ``cache_entries``, kept by triggers).

Views for people with ``sqlite3 "$STATE_DIR/r1proxy.db"`` (or datasette/sqlite-utils)::

    -- what is cached, most recently used first
    SELECT model, hits, last_hit, ratio, preview_user FROM v_cache_entries
      ORDER BY last_hit DESC LIMIT 20;
    -- the last requests and how each was served
    SELECT ts, alias, cache, status, latency_ms, cost FROM v_requests ORDER BY ts DESC LIMIT 50;
    -- per UTC day: hit rate and money saved vs spent
    SELECT day, requests, hit_rate, tokens_saved, usd_saved, usd_spent FROM v_daily;
    -- ... and the upstream's prompt cache next to the local one (v_daily reads daily_totals, m012)
    SELECT day, hit_rate, prefix_hit_rate, usd_prefix_saved, upstream_cached_tokens FROM v_daily;
    -- slowest upstream calls today
    SELECT ts, upstream_model, route, ttfb_ms, latency_ms FROM v_requests
      WHERE cache = 'MISS' AND ts >= date('now') ORDER BY latency_ms DESC LIMIT 10;

In ``requests``, ``cache`` is HIT/STALE/COALESCED (served without a new upstream call),
MISS, BYPASS or NONE; ``cost`` is what the upstream charged for this request (0 when
served from cache) and ``cost_saved`` what a cache-served request would have cost.
"""

from __future__ import annotations

from . import core, cost, dashboard, dictionaries, logwrite, notices, semantic, totals  # noqa: F401  (each registers its migrations)
from .runner import MIGRATIONS, SERVED_FROM_CACHE, Migration, applied, migrate, migration, served_sql

MIGRATIONS.sort(key=lambda fn: fn.__name__)  # mNNN_: the number is the order of application

__all__ = ["MIGRATIONS", "SERVED_FROM_CACHE", "Migration", "applied", "migrate", "migration", "served_sql"]
