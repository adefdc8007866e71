"""Purge notices (m080): how a purge reaches every process's memory tier (r1proxy/cache/notices.py)."""

from __future__ import annotations

import sqlite3

from .runner import migration


@migration
def m080_purge_notices(conn: sqlite3.Connection) -> None:
    # One row per purge done outside a process (the CLI) or by one of several workers: the filter as
    # JSON (cache/purge.py PurgeFilter). Serving processes poll MAX(id); rows older than a day go.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS purge_notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            filter TEXT NOT NULL
        )
        """
    )
