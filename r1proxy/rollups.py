"""Writing request-log rows: the one way rows get into ``requests``, rollups included.

Owns the insert into ``requests`` and the arithmetic of its three rollups, the running sums that
``v_daily`` (``daily_totals``, m012) and the dashboard (``requests_hourly`` m050, ``requests_daily``
m053) read instead of the log. ``insert_requests(conn, rows)`` inserts a batch and adds it to every
rollup with one pass over the new rows and one upsert per table and group (day or hour, alias, cache
outcome, tier) in the same transaction (a SAVEPOINT, so also when the caller runs in autocommit): a crash or
a failed statement never leaves the rollups counting rows the log lacks, or the reverse.

Until m060 each rollup was an AFTER INSERT trigger, i.e. three upserts per logged request; the
per-row expressions are still the ones those migrations defined (``ROLLUPS`` is built from them),
now summed over the batch's new rows (the ``n`` ids up to ``last_insert_rowid()``, under the write lock).
A row without ``ts`` is logged and counted in no rollup (it has no day or hour).
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .migrations.cost import DAILY_SUMS
from .migrations.dashboard import HOURLY_KEY, ROLLUP_TERMS

REQUEST_COLUMNS = (
    "ts", "request_id", "key_name", "alias", "upstream_model", "route", "stream", "cache", "tier",
    "status", "error_type", "latency_ms", "ttfb_ms", "prompt_tokens", "completion_tokens",
    "reasoning_tokens", "cost", "cost_saved", "request_bytes", "response_bytes", "generation_id",
    "cache_key", "prompt",
    # cost (#14, migration m011)
    "cached_tokens", "cache_write_tokens", "cost_source", "prefix_saved", "failed_attempts", "provider", "session_id",
    # semantic tier (#16, migration m041)
    "semantic_source", "semantic_similarity",
)
INSERT = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})")
# A batch goes in as multi-row INSERTs of up to CHUNK rows (fewer if SQLite allows fewer parameters):
# one statement step per chunk, where executemany stepped once per row, and the writer thread gave
# the GIL up and took it back from the event loop on every step. Chunks are powers of two, so a
# handful of statements of each size stay in the connection's statement cache. Binding a chunk's
# parameters holds the GIL (the event loop waits meanwhile): 64 rows bind in well under 0.1 ms and
# cost the writer about what 256 do (5.05 vs 4.98 us per row in batches of 1024, in a loop).
CHUNK = 64
_VALUES = f"({', '.join('?' * len(REQUEST_COLUMNS))})"


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """``INSERT`` for ``n`` rows at once."""
    return INSERT.partition(" VALUES ")[0] + " VALUES " + ", ".join([_VALUES] * n)


def _chunks(conn: sqlite3.Connection, rows: list[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    """The rows in order, in chunks whose sizes are powers of two within SQLite's parameter limit."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(REQUEST_COLUMNS)
    size = 1 << (max(1, min(CHUNK, limit)).bit_length() - 1)
    i = 0
    while i < len(rows):
        while size > len(rows) - i:
            size >>= 1
        yield rows[i:i + size]
        i += size


@dataclass(frozen=True, slots=True)
class Rollup:
    """A table of running sums over ``requests``: its key columns and expressions, its summed terms."""

    table: str
    key: tuple[tuple[str, str], ...]  # (column, expression over a request row)
    terms: tuple[tuple[str, str], ...]  # (column, one request's contribution)

    def recompute_sql(self) -> str:
        """The whole table as the request log alone would give it (tests, checks): key..., sums... ."""
        sums = ", ".join(f"SUM(COALESCE({e}, 0))" for _, e in self.terms)
        group = ", ".join(str(i + 1) for i in range(len(self.key)))
        return (f"SELECT {', '.join(e for _, e in self.key)}, {sums} FROM requests WHERE ts IS NOT NULL "
                f"GROUP BY {group} HAVING {' AND '.join(f'{e} IS NOT NULL' for _, e in self.key)} ORDER BY {group}")

    def select_sql(self) -> str:
        """The table's rows in the order and shape of ``recompute_sql``."""
        keys = ", ".join(c for c, _ in self.key)
        order = ", ".join(str(i + 1) for i in range(len(self.key)))
        return f"SELECT {keys}, {', '.join(c for c, _ in self.terms)} FROM {self.table} ORDER BY {order}"


def _plain(expr: str) -> str:
    return expr.replace("NEW.", "")


_GROUP = (("alias", _plain(HOURLY_KEY[1])), ("cache", _plain(HOURLY_KEY[2])), ("tier", _plain(HOURLY_KEY[3])))
_TERMS = tuple((c, _plain(e)) for c, e in ROLLUP_TERMS)

ROLLUPS = (
    Rollup("daily_totals", (("day", "date(ts, 'unixepoch')"),), tuple((c, _plain(e)) for c, e in DAILY_SUMS.items())),
    Rollup("requests_hourly", (("hour", _plain(HOURLY_KEY[0])), *_GROUP), _TERMS),
    Rollup("requests_daily", (("day", "CAST(ts / 86400 AS INTEGER) * 86400"), *_GROUP), _TERMS),
)


def _fold_statements() -> tuple[str, ...]:
    """One pass over a batch's new rows into ``temp.rollup_batch`` (every rollup's key and term
    expressions, deduplicated, grouped by all keys), then one upsert per rollup from that small
    table (a few rows per batch), then emptying it. Parameter of the first statement: the id the
    batch's rows come after."""
    keys: dict[str, str] = {}  # expression -> temp column
    terms: dict[str, str] = {}
    for r in ROLLUPS:
        for _, e in r.key:
            keys.setdefault(e, f"k{len(keys)}")
        for _, e in r.terms:
            terms.setdefault(e, f"t{len(terms)}")
    create = (f"CREATE TEMP TABLE IF NOT EXISTS rollup_batch "
              f"({', '.join([*keys.values(), *terms.values()])})")
    group = ", ".join(str(i + 1) for i in range(len(keys)))
    scan = (f"INSERT INTO temp.rollup_batch SELECT {', '.join(keys)}, "
            f"{', '.join(f'SUM(COALESCE({e}, 0))' for e in terms)} "
            f"FROM requests WHERE id > ? AND ts IS NOT NULL GROUP BY {group}")
    out = [create, scan]
    for r in ROLLUPS:
        cols = ", ".join(c for c, _ in r.key)
        out.append(f"INSERT INTO {r.table} ({cols}, {', '.join(c for c, _ in r.terms)}) "
                   f"SELECT {', '.join(keys[e] for _, e in r.key)}, "
                   f"{', '.join(f'SUM({terms[e]})' for _, e in r.terms)} FROM temp.rollup_batch "
                   f"WHERE {' AND '.join(f'{keys[e]} IS NOT NULL' for _, e in r.key)} "
                   f"GROUP BY {', '.join(str(i + 1) for i in range(len(r.key)))} "
                   f"ON CONFLICT ({cols}) DO UPDATE SET "
                   f"{', '.join(f'{c} = {c} + excluded.{c}' for c, _ in r.terms)}")
    out.append("DELETE FROM temp.rollup_batch")
    return tuple(out)


_CREATE, _SCAN, *_UPSERTS = _fold_statements()
_LAST_INSERTED = "SELECT last_insert_rowid()"
# One row's contribution (parameter: its id), added or taken away: for amending a logged row.
_ADD_ONE = _SCAN.replace("WHERE id > ?", "WHERE id = ?")
_TAKE_ONE = _ADD_ONE.replace("SUM(COALESCE(", "-SUM(COALESCE(")
AMENDABLE = ("prefix_saved",)  # columns set after the fact (generations.py: OpenRouter's own figure)


_ALL_COLUMNS = operator.itemgetter(*REQUEST_COLUMNS)


def row_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A request row as ``INSERT``'s parameters: keys not in REQUEST_COLUMNS ignored, missing ones NULL."""
    try:
        return _ALL_COLUMNS(row)  # type: ignore[no-any-return]  # the accounting's rows have every column
    except KeyError:
        return tuple(row.get(c) for c in REQUEST_COLUMNS)


def insert_requests(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> int:
    """Insert request rows (``row_values`` tuples) and add them to every rollup, atomically.

    Runs inside the caller's transaction when there is one, else in its own; on any error nothing
    of the batch stays and the error is raised. Returns the number of rows inserted."""
    with _savepoint(conn, "requests_batch"):
        # Write first, read after: a read before the first write would take a snapshot that another
        # process's commit can make stale, and the write would then fail (SQLITE_BUSY_SNAPSHOT).
        batch = rows if isinstance(rows, list) else list(rows)
        n = 0
        for chunk in _chunks(conn, batch):
            conn.execute(_insert_rows(len(chunk)), [v for row in chunk for v in row]).close()
            n += len(chunk)
        if n:
            # the batch's rows are the n ids up to the last one (each new id is the table's max + 1)
            last = conn.execute(_LAST_INSERTED).fetchone()[0]
            conn.execute(_CREATE)
            conn.execute(_SCAN, (last - n,))
            for sql in _UPSERTS:
                conn.execute(sql)
    return n


def amend_requests(conn: sqlite3.Connection, column: str, rows: Iterable[tuple[Any, int]]) -> int:
    """Set ``column`` of logged requests, ``(value, id)`` each, and move every rollup with it, atomically
    (the row's old contribution taken away, the new one added, in one SAVEPOINT). Returns rows changed."""
    if column not in AMENDABLE:
        raise ValueError(f"requests.{column} is not amendable")
    update = f"UPDATE requests SET {column} = ? WHERE id = ?"
    n = 0
    with _savepoint(conn, "requests_amend"):
        conn.execute(_CREATE)
        for value, rid in rows:
            conn.execute(_TAKE_ONE, (rid,))
            n += conn.execute(update, (value, rid)).rowcount
            conn.execute(_ADD_ONE, (rid,))
        for sql in _UPSERTS:
            conn.execute(sql)
    return n


@contextmanager
def _savepoint(conn: sqlite3.Connection, name: str) -> Iterator[None]:
    """All of the block's statements or none (inside the caller's transaction, or one of its own)."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
