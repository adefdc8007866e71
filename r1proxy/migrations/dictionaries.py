"""Compression (#13): trained zstd dictionaries that entries name."""

from __future__ import annotations

import sqlite3

from .runner import migration


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
