"""The request log's write cost (#17): what each logged request costs the writer thread.

m060: the three rollup triggers on ``requests`` are gone; ``rollups.insert_requests`` adds each
batch to ``daily_totals``, ``requests_hourly`` and ``requests_daily`` with one upsert per group, in
the batch's transaction (the same expressions, summed per batch instead of one upsert per row and
table). Every writer of ``requests`` goes through it; a row inserted any other way is logged but
not counted. One difference: a row without ``ts`` no longer adds a ``daily_totals`` row with a
NULL day (the trigger's ``ON CONFLICT (day)`` never matched NULL: one such row per request).
"""

from __future__ import annotations

import sqlite3

from .runner import migration


@migration
def m060_rollups_per_batch(conn: sqlite3.Connection) -> None:
    for trigger in ("requests_daily_totals", "trg_requests_hourly", "trg_requests_daily"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
