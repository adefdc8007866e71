"""The semantic tier (#16): vectors beside entries; how a request was served semantically."""

from __future__ import annotations

import sqlite3

from .runner import migration


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
def m041_request_semantic(conn: sqlite3.Connection) -> None:
    # A request served by the semantic tier (tier = 'semantic') names the entry whose answer it got
    # and how similar the two texts were; NULL for every other request.
    cols = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "semantic_source" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN semantic_source TEXT")
    if "semantic_similarity" not in cols:
        conn.execute("ALTER TABLE requests ADD COLUMN semantic_similarity REAL")
