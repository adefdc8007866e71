"""Integrity checks of the database file, kept off the start path.

``PRAGMA quick_check`` reads every page: seconds at a million entries, so the server does not
run it on every start. It marks the database open (``r1proxy.db.open`` beside it) and removes
the mark on a clean close; a mark found at start means the last run ended uncleanly (SIGKILL,
power loss, a crash). Then the check runs in the background on its own read-only connection
while the server already serves. A failed check switches the disk tier off (a damaged file must
never serve an answer), logs loudly and leaves ``r1proxy.db.check-failed``: the next start runs
the check on the start path, where ``Database.open`` moves a damaged file aside. ``r1proxy cache
check`` runs the same check on demand (read-only, safe while the server runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _mark(db_path: Path, what: str) -> Path:
    return db_path.with_name(f"{db_path.name}.{what}")


def mark_open(db_path: Path) -> bool:
    """Mark the database as in use; True when a mark was already there (the last run ended uncleanly)."""
    mark = _mark(db_path, "open")
    unclean = mark.exists()
    with contextlib.suppress(OSError):
        mark.touch()
    return unclean


def mark_closed(db_path: Path) -> None:
    """The database was closed cleanly (its writes drained, the WAL checkpointed)."""
    with contextlib.suppress(OSError):
        _mark(db_path, "open").unlink(missing_ok=True)


def failed_before(db_path: Path) -> bool:
    """A background check failed during the last run: check (and move aside) on this start."""
    return _mark(db_path, "check-failed").exists()


def clear_failed(db_path: Path) -> None:
    with contextlib.suppress(OSError):
        _mark(db_path, "check-failed").unlink(missing_ok=True)


def problems(db_path: Path, full: bool = False, busy_timeout_ms: int = 5000) -> list[str]:
    """What ``PRAGMA quick_check`` (``integrity_check`` when ``full``) finds; [] when the file is sound.

    Read-only: safe next to a running server (WAL readers never block its writer)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000)
    try:
        rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        return [str(e)]
    finally:
        conn.close()
    return [] if rows == [("ok",)] else [str(r[0]) for r in rows]


async def check_in_background(db_path: Path, on_failure: Callable[[str], None]) -> bool:
    """Run the quick check on a thread; on failure call ``on_failure(reason)``, log and leave the
    mark for the next start. True when the file is sound."""
    log.info("%s was not closed cleanly last time: checking it in the background", db_path)
    try:
        found = await asyncio.to_thread(problems, db_path)
    except sqlite3.Error as e:
        found = [str(e)]
    if not found:
        log.info("%s: quick_check ok", db_path)
        return True
    reason = "; ".join(found[:3])
    on_failure(reason)
    with contextlib.suppress(OSError):
        _mark(db_path, "check-failed").touch()
    log.error("!!! DATABASE %s FAILED quick_check (%s): the disk cache is off until restart; the next "
              "start moves the file aside and starts an empty one", db_path, reason)
    return False
