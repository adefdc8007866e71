"""Purge notices: how a purge reaches the memory tier of every process on one state dir, Redis or not.

Whoever purges — ``r1proxy cache purge``, or one worker's dashboard — deletes from SQLite and then
``post``s the filter to ``purge_notices``. Every serving process runs a ``NoticeWatcher``: once a
second it reads the newest notice id (one primary-key read on the event loop) and, when it moved,
drops the matching entries from its own memory tier, so no process keeps serving an answer its
operator purged. Notices older than a day are deleted when a new one is posted. (With a Redis tier
the pub/sub broadcast in cache/purge.py also reaches processes on other machines.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from r1proxy.cache import TieredCache
from r1proxy.cache.purge import PurgeFilter
from r1proxy.db import Database

log = logging.getLogger("r1proxy.cache")

POLL_S = 1.0
KEEP_S = 86400.0
_NEWEST = "SELECT MAX(id) FROM purge_notices"
_SINCE = "SELECT id, filter FROM purge_notices WHERE id > ? ORDER BY id"
_MINE = "SELECT MAX(id) FROM purge_notices WHERE at = ? AND filter = ?"


async def post(db: Database, f: PurgeFilter, now: float) -> int:
    """Record a purge for every running process; returns the notice's id."""
    text = f.dumps().decode()
    await db.execute("DELETE FROM purge_notices WHERE at < ?", (now - KEEP_S,))
    await db.execute("INSERT INTO purge_notices (at, filter) VALUES (?, ?)", (now, text))
    # found by its content, not as MAX(id): another process may have posted right after it
    row = await db.fetchone(_MINE, (now, text))
    return int(row[0]) if row and row[0] is not None else 0


class NoticeWatcher:
    """This process's side: apply notices posted after it started to ``cache``'s memory tier."""

    def __init__(self, db: Database, cache: TieredCache, now: Callable[[], float], every_s: float = POLL_S) -> None:
        self.db = db
        self.cache = cache
        self.now = now
        self.every_s = every_s
        self.applied = 0
        self._last = 0
        self._own: set[int] = set()  # notices this process posted: already applied here
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._last = self._newest()  # what was purged before this start is not in this memory tier
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def post(self, f: PurgeFilter) -> None:
        """A purge this process has done in its own tiers: posted for the others (not applied here again)."""
        self._own.add(await post(self.db, f, self.now()))

    async def poll(self) -> int:
        """Apply the notices posted since the last poll; returns how many memory entries went."""
        if self._newest() <= self._last:
            return 0
        dropped = 0
        for notice_id, text in await self.db.fetchall(_SINCE, (self._last,)):
            self._last = max(self._last, int(notice_id))
            if notice_id in self._own:
                self._own.discard(notice_id)
                continue
            try:
                dropped += self.cache.drop_from_memory(PurgeFilter.loads(text.encode()))
            except (ValueError, TypeError, AttributeError) as e:
                log.warning("ignoring an unreadable purge notice %s (%s)", notice_id, e)
            self.applied += 1
        return dropped

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _newest(self) -> int:
        row = self.db.fetchone_now(_NEWEST)
        return int(row[0]) if row and row[0] is not None else 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.poll()
            except Exception as e:  # a busy or failing database: try again next second
                log.debug("purge notices: %s", e)
