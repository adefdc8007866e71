"""How migrations run: the ordered list, the decorator that fills it, and ``migrate``.

Also the SQL forms of the shared rules (``rules.SERVED_FROM_CACHE``) that views and triggers use,
so no SQL spells a rule of its own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .. import rules
from ..rules import sql_in

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append

# Served without a new upstream call: the views use the one Python definition.
SERVED_FROM_CACHE = sql_in(rules.SERVED_FROM_CACHE)


def served_sql(col: str) -> str:
    """``col`` is one of SERVED_FROM_CACHE, as ORs: inside a trigger an IN list builds an ephemeral
    table on every row (measured: 8 IN lists made an insert 10x slower)."""
    return "(" + " OR ".join(f"{col} = '{v}'" for v in sorted(rules.SERVED_FROM_CACHE)) + ")"


def applied(conn: sqlite3.Connection) -> set[str]:
    """Names of the migrations already applied (creates the bookkeeping table if needed)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    return {row[0] for row in conn.execute("SELECT name FROM _r1proxy_migrations")}


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
