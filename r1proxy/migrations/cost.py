"""Money (#14): prices, the free quota, per-request costs, the daily totals behind ``v_daily``."""

from __future__ import annotations

import sqlite3

from .runner import migration, served_sql


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




_FROM_CACHE = served_sql("NEW.cache")

# daily_totals is maintained on write (a trigger on requests), so v_daily reads one row per day
# instead of scanning the request log, and keeps days after their request rows were pruned.
# Tokens named upstream_* are those of requests that made their own upstream call; tokens_saved
# those of requests served from the cache.
DAILY_SUMS = {
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
    cols = list(DAILY_SUMS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS daily_totals (day TEXT PRIMARY KEY, "
                 f"{', '.join(f'{c} NUMERIC NOT NULL DEFAULT 0' for c in cols)})")
    # what the request log already holds (the same expressions, over every row)
    sums = ", ".join(f"COALESCE(SUM({expr.replace('NEW.', '')}), 0)" for expr in DAILY_SUMS.values())
    conn.execute(f"INSERT OR REPLACE INTO daily_totals (day, {', '.join(cols)}) "
                 f"SELECT date(ts, 'unixepoch'), {sums} FROM requests GROUP BY date(ts, 'unixepoch')")
    conn.execute(
        f"""
        CREATE TRIGGER IF NOT EXISTS requests_daily_totals AFTER INSERT ON requests BEGIN
          INSERT INTO daily_totals (day, {', '.join(cols)})
          VALUES (date(NEW.ts, 'unixepoch'), {', '.join(f'COALESCE({e}, 0)' for e in DAILY_SUMS.values())})
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
