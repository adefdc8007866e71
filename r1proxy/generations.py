"""OpenRouter's own figure for what its prompt cache saved, fetched after the fact.

A miss that read cached prompt tokens, but whose usage carried no ``cache_discount``, is first
booked with an estimate from the listed prices (``costing.figures``: cached tokens x (prompt price -
cache-read price) of the listed endpoint, which need not be the provider that served it).
``Generations`` then asks ``GET {base_url}/generation?id=`` (docs/protocol.md B.8) for the call's
``cache_discount`` — the stats appear a little after the call, so a 404 is retried with back-off — and
replaces the estimate everywhere it was booked: the request-log row and its rollups in one
transaction (``rollups.amend_requests``: ``v_daily``, the dashboard), and the running total behind
``/stats`` and ``/metrics`` (a correction of the difference). The upstream key goes only to its own
upstream (``openrouter.get_json``). Bounded: at most ``MAX_WAITING`` generations wait; one that never
answers keeps its estimate, as does one still waiting at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from . import rollups, rules
from .config import UpstreamConfig
from .db import Database, Params
from .openrouter import FetchError, get_json

log = logging.getLogger("r1proxy")

DELAYS_S = (2.0, 4.0, 8.0, 16.0, 32.0)  # before each try: about a minute in all
MAX_WAITING = 1000
_ROW = ("SELECT id FROM requests WHERE ts >= ? AND ts <= ? AND generation_id = ? "
        f"AND cache NOT IN {rules.sql_in(rules.SERVED_FROM_CACHE)} ORDER BY id LIMIT 1")


@dataclass(frozen=True, slots=True)
class Pending:
    upstream: UpstreamConfig
    generation_id: str
    ts: float  # the request's wall-clock start (its request-log row's ts)
    estimate: float  # what was booked: the correction is the difference
    correct: Callable[[float], None]  # adds a difference to the running totals (metrics)


class Generations:
    def __init__(self, session: aiohttp.ClientSession, db: Database | None,
                 delays: tuple[float, ...] = DELAYS_S) -> None:
        self.session = session
        self.db = db
        self.delays = delays
        self.reconciled = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def want(self, p: Pending) -> bool:
        """Ask for ``p``'s figure in the background; False when too many already wait."""
        if len(self._tasks) >= MAX_WAITING:
            return False
        task = asyncio.get_running_loop().create_task(self._one(p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for every pending fetch to end (tests, a clean shutdown with time to spare)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _one(self, p: Pending) -> None:
        path = f"/generation?id={quote(p.generation_id, safe='')}"
        for delay in self.delays:
            await asyncio.sleep(delay)
            try:
                doc = await get_json(self.session, p.upstream, path)
            except FetchError:
                continue  # not there yet (404), or the upstream briefly away: the next try
            data = doc.get("data") if isinstance(doc, dict) else None
            discount = data.get("cache_discount") if isinstance(data, dict) else None
            if isinstance(discount, int | float) and not isinstance(discount, bool) and discount >= 0:
                await self._book(p, float(discount))
            return
        log.debug("upstream %s: no generation stats for %s; keeping the estimate", p.upstream.name, p.generation_id)

    async def _book(self, p: Pending, discount: float) -> None:
        if discount != p.estimate:
            p.correct(discount - p.estimate)
        self.reconciled += 1
        if self.db is None:
            return
        await self.db.wait_written(self.db.queued)  # the request's own row was queued before this
        row = await self.db.fetchone(_ROW, (p.ts - 1.0, p.ts + 1.0, p.generation_id))
        if row is not None:
            self.db.submit_rows(_amend_prefix, [(discount, int(row[0]))], label="requests.prefix_saved")


def _amend_prefix(conn: sqlite3.Connection, rows: list[Params]) -> int:
    """On the writer thread: the figure into the row and its rollups."""
    return rollups.amend_requests(conn, "prefix_saved", [(float(v), int(i)) for v, i in rows])
