"""The first schema (wave 1): cache entries, the request log, key usage, the views, prompts."""

from __future__ import annotations

import sqlite3

from .runner import SERVED_FROM_CACHE, migration


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


@migration
def m005_request_prompt(conn: sqlite3.Connection) -> None:
    # server.log_prompts = true keeps the last user message of each request here (NULL otherwise).
    # Idempotent for databases a development build already gave the column.
    cols = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "prompt" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN prompt TEXT")
