"""Opening the database file: the header sniff and optional quick_check, migrations, moving a
damaged file aside, and the three connections ``Database`` uses (each with its PRAGMAs).

Errors: ``DatabaseLocked`` when another process holds the lock past busy_timeout,
``DatabaseUnavailable`` for anything moving the file aside would not fix.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiosqlite

from r1proxy.migrations import migrate

_CORRUPT = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}
_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}


class DatabaseUnavailable(Exception):
    """The database file cannot be used (permissions, I/O); the message names the path."""


class DatabaseLocked(DatabaseUnavailable):
    """Another process holds the database locked for longer than busy_timeout."""


def errname(err: sqlite3.Error) -> str:
    return getattr(err, "sqlite_errorname", "") or ""


def is_corrupt(err: sqlite3.Error) -> bool:
    return errname(err) in _CORRUPT or "not a database" in str(err) or "malformed" in str(err)


def is_busy(err: sqlite3.Error) -> bool:
    return errname(err) in _BUSY or "locked" in str(err)


def prepare(path: Path, busy_timeout_ms: int, check: bool, quick_check: bool = True) -> None:
    """Check and migrate with a short-lived plain connection; raises sqlite3 errors as found.

    ``check`` sniffs the header; ``quick_check`` also runs ``PRAGMA quick_check`` (seconds on a
    large file: the server keeps it off its start path, see integrity.py)."""
    if check:
        # Sniff the header before SQLite touches the file: on close SQLite may delete a
        # -wal it could not use, and a moved-aside file should keep its -wal for inspection.
        try:
            with path.open("rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            head = b""
        if head and head != b"SQLite format 3\x00":
            err = sqlite3.DatabaseError("file is not a database (bad header)")
            err.sqlite_errorname = "SQLITE_NOTADB"  # type: ignore[attr-defined]
            raise err
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        if check and quick_check:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                detail = "; ".join(str(r[0]) for r in rows[:3])
                err = sqlite3.DatabaseError(f"quick_check failed: {detail}")
                err.sqlite_errorname = "SQLITE_CORRUPT"  # type: ignore[attr-defined]
                raise err
        migrate(conn)
    finally:
        conn.close()


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename a database file and its -wal/-shm to ``<name>.corrupt-<UTC timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


# recursive_triggers: an INSERT OR REPLACE fires the delete trigger of the row it replaces
# (cache_totals stays right, migrations.m020).
_PRAGMAS = ("journal_mode = WAL", "synchronous = NORMAL", "temp_store = MEMORY", "recursive_triggers = ON")
# The writer: freed pages are not zeroed (Debian builds SQLite with secure_delete on, which doubles
# the I/O of every delete: purge and eviction); `r1proxy cache vacuum` rewrites the file. A 16 MiB
# page cache keeps the key index's pages across the small batches eviction and purge delete in.
_WRITER_PRAGMAS = ("secure_delete = OFF", "cache_size = -16384")


async def connect_reader(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        for pragma in (*_PRAGMAS, f"busy_timeout = {int(busy_timeout_ms)}", "query_only = ON"):
            await conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as e:
        await conn.close()
        if is_busy(e):
            raise DatabaseLocked(f"{path}: database is locked by another process") from None
        raise DatabaseUnavailable(f"{path}: cannot open database: {e}") from None
    return conn


def connect_writer(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """The writer's connection; created, used and closed on the writer thread only."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        for pragma in (*_PRAGMAS, *_WRITER_PRAGMAS, f"busy_timeout = {int(busy_timeout_ms)}"):
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as e:
        conn.close()
        if is_busy(e):
            raise DatabaseLocked(f"{path}: database is locked by another process") from None
        raise DatabaseUnavailable(f"{path}: cannot open database: {e}") from None
    return conn


def point_reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.2)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 200")
    return conn
