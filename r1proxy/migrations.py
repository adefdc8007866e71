"""The r1proxy database schema: every CREATE lives here, as append-only migrations.

Each ``mNNN_what(conn)`` runs once, inside its own transaction, and its name is recorded in
``_r1proxy_migrations``. Never edit a shipped migration; append a new one saying why.
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

import sqlite3
import time
from collections.abc import Callable

from . import rules
from .rules import sql_in

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append

# Served without a new upstream call: the views use the one Python definition.
SERVED_FROM_CACHE = sql_in(rules.SERVED_FROM_CACHE)


@migration
def m001_cache_entries(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS cache_entries (
            key TEXT PRIMARY KEY,
            namespace TEXT NOT NULL DEFAULT '',
            model TEXT,
            created_at REAL,
            last_hit_at REAL,
            hits INTEGER DEFAULT 0,
            expires_at REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            raw_bytes INTEGER,
            stored_bytes INTEGER,
            preview_user TEXT,
            preview_answer TEXT,
            body BLOB,
            request BLOB
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS idx_cache_entries_last_hit_at ON cache_entries(last_hit_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_cache_entries_expires_at ON cache_entries(expires_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_cache_entries_model ON cache_entries(model)")


@migration
def m002_requests(conn: sqlite3.Connection) -> None:
    # route = which upstream/deployment served; tier = which cache tier answered a hit.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS requests (
            id INTEGER PRIMARY KEY,
            ts REAL,
            request_id TEXT,
            key_name TEXT,
            alias TEXT,
            upstream_model TEXT,
            route TEXT,
            stream INTEGER,
            cache TEXT,
            tier TEXT,
            status INTEGER,
            error_type TEXT,
            latency_ms REAL,
            ttfb_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            cost_saved REAL,
            request_bytes INTEGER,
            response_bytes INTEGER,
            generation_id TEXT,
            cache_key TEXT
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS idx_requests_ts ON requests(ts)")


@migration
def m003_key_usage(conn: sqlite3.Connection) -> None:
    # day is the UTC date 'YYYY-MM-DD' chosen by the caller.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS key_usage (
            key_name TEXT,
            day TEXT,
            requests INTEGER,
            tokens INTEGER,
            usd REAL,
            PRIMARY KEY (key_name, day)
        )
        """
    )


@migration
def m004_views(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE VIEW IF NOT EXISTS v_cache_entries AS
        SELECT key, namespace, model,
               datetime(created_at, 'unixepoch') AS created,
               datetime(COALESCE(last_hit_at, created_at), 'unixepoch') AS last_hit,
               datetime(expires_at, 'unixepoch') AS expires,
               hits, prompt_tokens, completion_tokens, reasoning_tokens, cost,
               raw_bytes, stored_bytes,
               ROUND(CAST(stored_bytes AS REAL) / NULLIF(raw_bytes, 0), 3) AS ratio,
               preview_user, preview_answer
        FROM cache_entries
        """
    )
    conn.execute(
        """
        CREATE VIEW IF NOT EXISTS v_requests AS
        SELECT datetime(ts, 'unixepoch') AS ts, key_name, alias, upstream_model, route, stream,
               cache, tier, status, error_type, latency_ms, ttfb_ms, prompt_tokens,
               completion_tokens, reasoning_tokens, cost, cost_saved, request_bytes, response_bytes
        FROM requests
        """
    )
    # upstream_errors: 5xx replies or an error_type naming the upstream (e.g. upstream_timeout).
    conn.execute(
        f"""
        CREATE VIEW IF NOT EXISTS v_daily AS
        SELECT date(ts, 'unixepoch') AS day,
               COUNT(*) AS requests,
               SUM(cache IN {SERVED_FROM_CACHE}) AS hits,
               ROUND(CAST(SUM(cache IN {SERVED_FROM_CACHE}) AS REAL) / COUNT(*), 4) AS hit_rate,
               SUM(CASE WHEN cache IN {SERVED_FROM_CACHE}
                        THEN COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)
                        ELSE 0 END) AS tokens_saved,
               COALESCE(SUM(cost_saved), 0) AS usd_saved,
               SUM(status >= 500 OR COALESCE(error_type, '') LIKE 'upstream%') AS upstream_errors,
               COALESCE(SUM(cost), 0) AS usd_spent
        FROM requests
        GROUP BY day
        ORDER BY day
        """
    )


def applied(conn: sqlite3.Connection) -> set[str]:
    """Names of the migrations already applied (creates the bookkeeping table if needed)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    return {row[0] for row in conn.execute("SELECT name FROM _r1proxy_migrations")}


@migration
def m005_request_prompt(conn: sqlite3.Connection) -> None:
    # server.log_prompts = true keeps the last user message of each request here (NULL otherwise).
    # Idempotent for databases a development build already gave the column.
    cols = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "prompt" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN prompt TEXT")


@migration
def m030_zstd_dicts(conn: sqlite3.Connection) -> None:
    # Trained zstd dictionaries (r1proxy.cache.zdict), kept forever: every entry names the set it was
    # compressed with (dict_id; 0 = plain zstd, which every entry before this migration is).
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS zstd_dicts (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            samples INTEGER NOT NULL DEFAULT 0,
            body BLOB NOT NULL,
            request BLOB
        )
        """
    )
    cols = {row[1] for row in conn.execute("PRAGMA table_info(cache_entries)")}
    if "dict_id" not in cols:
        conn.execute("ALTER TABLE cache_entries ADD COLUMN dict_id INTEGER NOT NULL DEFAULT 0")


@migration
def m040_semantic_vectors(conn: sqlite3.Connection) -> None:
    # The opt-in semantic tier (cache/semantic): one row per cache entry it may match, beside
    # that entry. ``partition`` is the key of everything but the final user text; ``vector`` is
    # float32 little-endian (384 x 4 bytes: float16 would halve it, but converting it back costs
    # more than the search). A deleted entry (purge, eviction, expiry) takes its
    # vector with it, so a purged wrong source can never match again.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS semantic_vectors (
            key TEXT PRIMARY KEY,
            partition TEXT NOT NULL,
            text TEXT NOT NULL,
            vector BLOB NOT NULL,
            created_at REAL
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS idx_semantic_vectors_partition ON semantic_vectors(partition)")
    conn.execute(
        """
        CREATE TRIGGER IF NOT EXISTS trg_cache_entries_semantic_delete AFTER DELETE ON cache_entries
        BEGIN DELETE FROM semantic_vectors WHERE key = old.key; END
        """
    )


@migration
def m020_cache_totals(conn: sqlite3.Connection) -> None:
    # Running totals of cache_entries, kept by triggers in the same transaction as every write
    # (any process, any statement), so nothing that serves needs a SUM over the table: eviction,
    # /stats, /metrics and `r1proxy stats` read one row. Seeded once here (one scan, at upgrade).
    # A REPLACE must fire the delete trigger: r1proxy's put is an upsert (an UPDATE), and its
    # connections set recursive_triggers so an INSERT OR REPLACE from elsewhere counts right too.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            entries INTEGER NOT NULL,
            stored_bytes INTEGER NOT NULL,
            raw_bytes INTEGER NOT NULL
        )
        """
    )
    conn.execute("INSERT OR REPLACE INTO cache_totals (id, entries, stored_bytes, raw_bytes) "
                 "SELECT 1, COUNT(*), COALESCE(SUM(stored_bytes), 0), COALESCE(SUM(raw_bytes), 0) "
                 "FROM cache_entries")
    conn.execute(
        """
        CREATE TRIGGER IF NOT EXISTS cache_totals_insert AFTER INSERT ON cache_entries BEGIN
            UPDATE cache_totals SET entries = entries + 1,
                stored_bytes = stored_bytes + COALESCE(NEW.stored_bytes, 0),
                raw_bytes = raw_bytes + COALESCE(NEW.raw_bytes, 0) WHERE id = 1;
        END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER IF NOT EXISTS cache_totals_delete AFTER DELETE ON cache_entries BEGIN
            UPDATE cache_totals SET entries = entries - 1,
                stored_bytes = stored_bytes - COALESCE(OLD.stored_bytes, 0),
                raw_bytes = raw_bytes - COALESCE(OLD.raw_bytes, 0) WHERE id = 1;
        END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER IF NOT EXISTS cache_totals_update AFTER UPDATE OF stored_bytes, raw_bytes
        ON cache_entries BEGIN
            UPDATE cache_totals SET
                stored_bytes = stored_bytes - COALESCE(OLD.stored_bytes, 0) + COALESCE(NEW.stored_bytes, 0),
                raw_bytes = raw_bytes - COALESCE(OLD.raw_bytes, 0) + COALESCE(NEW.raw_bytes, 0) WHERE id = 1;
        END
        """
    )


@migration
def m021_last_hit_at_set(conn: sqlite3.Connection) -> None:
    # Eviction walks idx_cache_entries_last_hit_at (least recently used first) in small batches;
    # a row never hit has last_hit_at = created_at (what COALESCE(last_hit_at, created_at) meant).
    conn.execute("UPDATE cache_entries SET last_hit_at = created_at WHERE last_hit_at IS NULL")


def migrate(conn: sqlite3.Connection, *, now: float | None = None) -> list[str]:
    """Apply every missing migration, each in its own transaction; returns the names applied.

    Safe against a second process migrating at the same moment: each step takes the write
    lock (BEGIN IMMEDIATE) and re-checks whether it is still missing.
    """
    done: list[str] = []
    if {fn.__name__ for fn in MIGRATIONS} <= applied(conn):
        return done
    for fn in MIGRATIONS:
        in_tx = conn.in_transaction
        if not in_tx:
            conn.execute("BEGIN IMMEDIATE")
        try:
            if fn.__name__ not in applied(conn):
                fn(conn)
                conn.execute(
                    "INSERT INTO _r1proxy_migrations (name, applied_at) VALUES (?, ?)",
                    (fn.__name__, time.time() if now is None else now),
                )
                done.append(fn.__name__)
            if not in_tx:
                conn.execute("COMMIT")
        except BaseException:
            if not in_tx and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return done


# -- cost (#14): m010-m019 ------------------------------------------------------------------


@migration
def m010_prices_and_quota(conn: sqlite3.Connection) -> None:
    # model_prices: USD per token as OpenRouter's GET /models lists them, per upstream (prices.py).
    # free_quota: upstream calls to `:free` model ids per upstream and UTC day (quota.py).
    # upstream_keys: the last GET /key answer per upstream, as JSON without the key itself.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS model_prices (
            upstream TEXT, model TEXT, prompt REAL, completion REAL, cache_read REAL, cache_write REAL,
            fetched_at REAL, PRIMARY KEY (upstream, model)
        )
        """
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS free_quota (upstream TEXT, day TEXT, used INTEGER, "
        "PRIMARY KEY (upstream, day))"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS upstream_keys (upstream TEXT PRIMARY KEY, info TEXT, fetched_at REAL)")


# Per-request cost columns (m011). cached_tokens/cache_write_tokens: the upstream's prompt cache
# (prompt_tokens_details); cost_source: 'reported' (usage.cost) or 'computed' (from prices) or ''
# (no cost known); prefix_saved: USD the upstream's prompt cache saved on this request
# (cache_discount, or cached tokens x (prompt - cache read price)); failed_attempts: upstream
# calls of this request's flight that did not answer; provider: who served it upstream.
REQUEST_COST_COLUMNS = (("cached_tokens", "INTEGER"), ("cache_write_tokens", "INTEGER"), ("cost_source", "TEXT"),
                        ("prefix_saved", "REAL"), ("failed_attempts", "INTEGER"), ("provider", "TEXT"),
                        ("session_id", "TEXT"))


@migration
def m011_request_costs(conn: sqlite3.Connection) -> None:
    cols = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for name, kind in REQUEST_COST_COLUMNS:
        if name not in cols:
            conn.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")


def _served(col: str) -> str:
    """``col`` is one of SERVED_FROM_CACHE, as ORs: inside a trigger an IN list builds an ephemeral
    table on every row (measured: 8 IN lists made an insert 10x slower)."""
    return "(" + " OR ".join(f"{col} = '{v}'" for v in sorted(rules.SERVED_FROM_CACHE)) + ")"


_FROM_CACHE = _served("NEW.cache")

# daily_totals is maintained on write (a trigger on requests), so v_daily reads one row per day
# instead of scanning the request log, and keeps days after their request rows were pruned.
# Tokens named upstream_* are those of requests that made their own upstream call; tokens_saved
# those of requests served from the cache.
_DAILY_SUMS = {
    "requests": "1",
    "hits": f"{_FROM_CACHE}",
    "tokens_saved": f"CASE WHEN {_FROM_CACHE} "
                    "THEN COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0) ELSE 0 END",
    "usd_saved": "COALESCE(NEW.cost_saved, 0)",
    "usd_spent": "COALESCE(NEW.cost, 0)",
    "upstream_errors": "NEW.status >= 500 OR COALESCE(NEW.error_type, '') LIKE 'upstream%'",
    "upstream_requests": f"NOT {_FROM_CACHE} AND COALESCE(NEW.prompt_tokens, 0) > 0",
    "upstream_prompt_tokens": f"CASE WHEN {_FROM_CACHE} THEN 0 "
                              "ELSE COALESCE(NEW.prompt_tokens, 0) END",
    "upstream_completion_tokens": f"CASE WHEN {_FROM_CACHE} THEN 0 "
                                  "ELSE COALESCE(NEW.completion_tokens, 0) END",
    "upstream_reasoning_tokens": f"CASE WHEN {_FROM_CACHE} THEN 0 "
                                 "ELSE COALESCE(NEW.reasoning_tokens, 0) END",
    "upstream_cached_tokens": f"CASE WHEN {_FROM_CACHE} THEN 0 "
                              "ELSE COALESCE(NEW.cached_tokens, 0) END",
    "upstream_cache_write_tokens": f"CASE WHEN {_FROM_CACHE} THEN 0 "
                                   "ELSE COALESCE(NEW.cache_write_tokens, 0) END",
    "usd_prefix_saved": "COALESCE(NEW.prefix_saved, 0)",
    "costs_computed": "COALESCE(NEW.cost_source, '') = 'computed'",
    "failed_attempts": "COALESCE(NEW.failed_attempts, 0)",
}


@migration
def m012_daily_totals(conn: sqlite3.Connection) -> None:
    cols = list(_DAILY_SUMS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS daily_totals (day TEXT PRIMARY KEY, "
                 f"{', '.join(f'{c} NUMERIC NOT NULL DEFAULT 0' for c in cols)})")
    # what the request log already holds (the same expressions, over every row)
    sums = ", ".join(f"COALESCE(SUM({expr.replace('NEW.', '')}), 0)" for expr in _DAILY_SUMS.values())
    conn.execute(f"INSERT OR REPLACE INTO daily_totals (day, {', '.join(cols)}) "
                 f"SELECT date(ts, 'unixepoch'), {sums} FROM requests GROUP BY date(ts, 'unixepoch')")
    conn.execute(
        f"""
        CREATE TRIGGER IF NOT EXISTS requests_daily_totals AFTER INSERT ON requests BEGIN
          INSERT INTO daily_totals (day, {', '.join(cols)})
          VALUES (date(NEW.ts, 'unixepoch'), {', '.join(f'COALESCE({e}, 0)' for e in _DAILY_SUMS.values())})
          ON CONFLICT (day) DO UPDATE SET {', '.join(f'{c} = {c} + excluded.{c}' for c in cols)};
        END
        """
    )
    conn.execute("DROP VIEW IF EXISTS v_daily")
    # usd_saved: by the local cache (hits, stale answers, coalesced followers: the cost of the call
    # whose answer they got); usd_prefix_saved: by the upstream's prompt cache on calls that were made.
    conn.execute(
        """
        CREATE VIEW v_daily AS
        SELECT day, requests, hits,
               ROUND(CAST(hits AS REAL) / NULLIF(requests, 0), 4) AS hit_rate,
               tokens_saved, usd_saved, upstream_errors, usd_spent, usd_prefix_saved,
               ROUND(CAST(upstream_cached_tokens AS REAL) / NULLIF(upstream_prompt_tokens, 0), 4)
                 AS prefix_hit_rate,
               upstream_requests, upstream_prompt_tokens, upstream_completion_tokens, upstream_reasoning_tokens,
               upstream_cached_tokens, upstream_cache_write_tokens, costs_computed, failed_attempts
        FROM daily_totals
        ORDER BY day
        """
    )

# -- dashboard (m050-m059) -------------------------------------------------------------------
# requests_hourly: one row per UTC hour, alias, cache outcome and tier, kept up to date by a
# trigger on every request-log insert, so the dashboard's overview reads a few thousand small
# rows instead of scanning the request log. Pruning old requests does not touch it (history).
_HOURLY_COLUMNS = """
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    client_errors INTEGER NOT NULL DEFAULT 0,
    free_requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    cost_saved REAL NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    ttfb_ms REAL NOT NULL DEFAULT 0,
    ttfb_n INTEGER NOT NULL DEFAULT 0
"""
# One request's contribution, as (column, expression over NEW) pairs; the backfill sums the same.
_HOURLY_TERMS = (
    ("requests", "1"),
    ("errors", "(NEW.status >= 500 OR COALESCE(NEW.error_type, '') LIKE 'upstream%')"),
    ("rate_limited", "(NEW.status = 429)"),
    ("client_errors", "(NEW.status >= 400 AND NEW.status < 500 AND NEW.status != 429)"),
    ("free_requests", "(COALESCE(NEW.upstream_model, '') LIKE '%:free')"),
    ("prompt_tokens", "COALESCE(NEW.prompt_tokens, 0)"),
    ("completion_tokens", "COALESCE(NEW.completion_tokens, 0)"),
    ("reasoning_tokens", "COALESCE(NEW.reasoning_tokens, 0)"),
    ("cost", "COALESCE(NEW.cost, 0)"),
    ("cost_saved", "COALESCE(NEW.cost_saved, 0)"),
    ("latency_ms", "COALESCE(NEW.latency_ms, 0)"),
    ("ttfb_ms", "COALESCE(NEW.ttfb_ms, 0)"),
    ("ttfb_n", "(NEW.ttfb_ms IS NOT NULL)"),
)
_HOURLY_KEY = ("CAST(NEW.ts / 3600 AS INTEGER) * 3600", "COALESCE(NEW.alias, '')", "COALESCE(NEW.cache, '')",
               "COALESCE(NEW.tier, '')")


@migration
def m050_requests_hourly(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS requests_hourly (
            hour INTEGER NOT NULL,
            alias TEXT NOT NULL,
            cache TEXT NOT NULL,
            tier TEXT NOT NULL,
            {_HOURLY_COLUMNS},
            PRIMARY KEY (hour, alias, cache, tier)
        ) WITHOUT ROWID
        """
    )
    cols = ", ".join(c for c, _ in _HOURLY_TERMS)
    values = ", ".join(f"COALESCE({e}, 0)" for _, e in _HOURLY_TERMS)  # a NULL column must not fail the insert
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c, _ in _HOURLY_TERMS)
    conn.execute(
        f"""
        CREATE TRIGGER IF NOT EXISTS trg_requests_hourly AFTER INSERT ON requests WHEN NEW.ts IS NOT NULL BEGIN
            INSERT INTO requests_hourly (hour, alias, cache, tier, {cols})
            VALUES ({', '.join(_HOURLY_KEY)}, {values})
            ON CONFLICT (hour, alias, cache, tier) DO UPDATE SET {updates};
        END
        """
    )
    sums = ", ".join(f"COALESCE(SUM({e.replace('NEW.', '')}), 0)" for _, e in _HOURLY_TERMS)
    key = ", ".join(k.replace("NEW.", "") for k in _HOURLY_KEY)
    conn.execute(
        f"""
        INSERT INTO requests_hourly (hour, alias, cache, tier, {cols})
        SELECT {key}, {sums} FROM requests WHERE ts IS NOT NULL GROUP BY 1, 2, 3, 4
        """
    )


@migration
def m051_request_filter_indexes(conn: sqlite3.Connection) -> None:
    # The dashboard's request browser filters by these and pages by id (keyset): each index
    # holds (column, rowid), so "WHERE col = ? AND id < ? ORDER BY id DESC" is a range read.
    for col in ("key_name", "alias", "cache", "status"):
        conn.execute(f"CREATE INDEX IF NOT EXISTS idx_requests_{col} ON requests({col})")


# The cost issue's per-request columns (m011) as the rollups count them: what the upstream's prompt
# cache saved, and its cached tokens on requests that made their own upstream call.
_ROLLUP_TERMS = (*_HOURLY_TERMS,
                 ("prefix_saved", "COALESCE(NEW.prefix_saved, 0)"),
                 ("cached_tokens", f"CASE WHEN {_served('NEW.cache')} THEN 0 ELSE COALESCE(NEW.cached_tokens, 0) END"))


def _rollup_trigger(conn: sqlite3.Connection, table: str, bucket: str) -> None:
    """(Re)create the insert trigger that adds each request to ``table``'s row for its bucket."""
    key = (bucket, *_HOURLY_KEY[1:])
    cols = ", ".join(c for c, _ in _ROLLUP_TERMS)
    values = ", ".join(f"COALESCE({e}, 0)" for _, e in _ROLLUP_TERMS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c, _ in _ROLLUP_TERMS)
    first = "hour" if table == "requests_hourly" else "day"
    conn.execute(f"DROP TRIGGER IF EXISTS trg_{table}")
    conn.execute(
        f"""
        CREATE TRIGGER trg_{table} AFTER INSERT ON requests WHEN NEW.ts IS NOT NULL BEGIN
            INSERT INTO {table} ({first}, alias, cache, tier, {cols})
            VALUES ({', '.join(key)}, {values})
            ON CONFLICT ({first}, alias, cache, tier) DO UPDATE SET {updates};
        END
        """
    )


@migration
def m052_hourly_prefix_cache(conn: sqlite3.Connection) -> None:
    # Adopt the cost columns in requests_hourly: new columns, the trigger replaced, the table
    # rebuilt from the request log (it only exists since m050, so no pruned history is lost).
    for col, kind in (("prefix_saved", "REAL"), ("cached_tokens", "INTEGER")):
        if col not in {row[1] for row in conn.execute("PRAGMA table_info(requests_hourly)")}:
            conn.execute(f"ALTER TABLE requests_hourly ADD COLUMN {col} {kind} NOT NULL DEFAULT 0")
    _rollup_trigger(conn, "requests_hourly", _HOURLY_KEY[0])
    cols = ", ".join(c for c, _ in _ROLLUP_TERMS)
    sums = ", ".join(f"COALESCE(SUM({e.replace('NEW.', '')}), 0)" for _, e in _ROLLUP_TERMS)
    key = ", ".join(k.replace("NEW.", "") for k in _HOURLY_KEY)
    conn.execute("DELETE FROM requests_hourly")
    conn.execute(f"INSERT INTO requests_hourly (hour, alias, cache, tier, {cols}) "
                 f"SELECT {key}, {sums} FROM requests WHERE ts IS NOT NULL GROUP BY 1, 2, 3, 4")


@migration
def m053_requests_daily(conn: sqlite3.Connection) -> None:
    # The same rollup per UTC day: the overview's 30 days read ~30 x outcomes x aliases rows
    # (13,000 hourly rows for 100,000 requests made its p95 miss 50 ms). Filled from the hourly table.
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS requests_daily (
            day INTEGER NOT NULL,
            alias TEXT NOT NULL,
            cache TEXT NOT NULL,
            tier TEXT NOT NULL,
            {_HOURLY_COLUMNS},
            prefix_saved REAL NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, alias, cache, tier)
        ) WITHOUT ROWID
        """
    )
    _rollup_trigger(conn, "requests_daily", "CAST(NEW.ts / 86400 AS INTEGER) * 86400")
    cols = ", ".join(c for c, _ in _ROLLUP_TERMS)
    conn.execute(f"INSERT INTO requests_daily (day, alias, cache, tier, {cols}) "
                 f"SELECT hour / 86400 * 86400, alias, cache, tier, {', '.join(f'SUM({c})' for c, _ in _ROLLUP_TERMS)} "
                 "FROM requests_hourly GROUP BY 1, 2, 3, 4")


@migration
def m041_request_semantic(conn: sqlite3.Connection) -> None:
    # A request served by the semantic tier (tier = 'semantic') names the entry whose answer it got
    # and how similar the two texts were; NULL for every other request.
    cols = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "semantic_source" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN semantic_source TEXT")
    if "semantic_similarity" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN semantic_similarity REAL")
