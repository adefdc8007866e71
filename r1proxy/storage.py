"""Storage health: whether the database's writes work, and whether its file is still the one opened.

``WriteHealth`` counts failed writes and logs once per state change (working → failing names the
error; failing → working says how many were lost), never once per failure; while writes fail,
``degraded`` is the reason ``/health`` reports (HTTP 200, ``"status": "degraded"``: requests are
still served, only not stored). ``file_id`` is the (device, inode) pair the periodic check in
``Database`` compares, to notice a database file deleted or replaced while serving.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("r1proxy.db")


def file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file, or None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def is_full(err: BaseException) -> bool:
    return isinstance(err, sqlite3.Error) and (getattr(err, "sqlite_errorname", "") == "SQLITE_FULL"
                                               or "full" in str(err).lower())


class WriteHealth:
    def __init__(self) -> None:
        self.count = 0  # writes that failed and were skipped since open
        self.failing = ""  # the error while writes fail, else ""
        self.full = False  # the failure is a full disk: the periodic check tries to shrink the WAL
        self.event = ""  # the last file event (deleted/replaced and reopened), for /health
        self._count_at_fail = 0
        self._since = 0.0
        self._failed_sql: set[str] = set()  # statements that failed in this failing period

    def failed(self, err: BaseException, sql: str) -> None:
        self.count += 1
        self._failed_sql.add(sql)
        if self.failing:
            return
        self.failing = f"{type(err).__name__}: {err}"
        self.full = is_full(err)
        self._count_at_fail = self.count - 1
        self._since = time.time()
        log.error("database writes fail (%s); answers are still served but not stored, further failures are "
                  "only counted until writes work again. statement: %s", self.failing, " ".join(sql.split())[:120])

    def succeeded(self, sql: str) -> None:
        """A write worked; writes count as working again once a statement that had failed works
        (an UPDATE that needs no new page proves nothing on a full disk)."""
        if not self.failing or sql not in self._failed_sql:
            return
        self._failed_sql.clear()
        lost = self.count - self._count_at_fail
        log.warning("database writes work again after %.0f s (%d writes were skipped)", time.time() - self._since,
                    lost)
        self.failing, self.full = "", False

    @property
    def degraded(self) -> str:
        if self.failing:
            stamp = time.strftime("%H:%M:%SZ", time.gmtime(self._since))
            return f"database writes failing since {stamp} ({self.count - self._count_at_fail} skipped): " \
                   f"{self.failing}"
        return ""
