"""Scale (#17): running totals of the cache kept by triggers; no scans while serving."""

from __future__ import annotations

import sqlite3

from .runner import migration


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
