"""The on-disk cache tier: ``cache_entries`` rows in the shared ``Database``.

Metadata sits in plain columns; the completion (compact JSON) and the canonical request are
zstd blobs, compressed with the trained dictionary set the row names in ``dict_id`` (0 = none;
see ``zdict``). Writes (put, touch) are queued on the database writer and never fail a caller
(batched hit counts wait up to ``TOUCH_DELAY_S`` in memory first, one row update per key);
reads that hit a damaged row log it, drop the row and report a miss. Sizes come from the
``cache_totals`` row the schema's triggers keep (no SUM over the table while serving).
Eviction (expired past the stale window, then least recently used down to 90% of the byte cap)
deletes in small batches, each its own write between the others; it runs in the background
every ``evict_every`` puts and every few seconds once ``start()`` was called (so a lowered cap
takes effect at once), and on demand via ``evict(now)``. ``purge`` deletes in batches too
(larger ones; while it runs the WAL is checkpointed less often and statement journals go to a
file), walking the table by rowid, so neither holds the write lock for long. A put is visible to
``get`` at once: until its row is committed the entry is served from a small pending map (with
the memory tier off, or an entry too big for it, an immediate repeat would miss otherwise). The
tier does not own the ``Database``: whoever opened it closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import zstandard

from r1proxy import jsonfast
from r1proxy.cache.entry import CacheEntry, TierStats
from r1proxy.cache.zdict import Compression, ThreadCompressors, UnknownDictionary
from r1proxy.db import Database

log = logging.getLogger(__name__)

_COLUMNS = ("key", "namespace", "model", "created_at", "last_hit_at", "hits", "expires_at",
            "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost", "raw_bytes",
            "stored_bytes", "preview_user", "preview_answer", "dict_id", "body", "request")
# An upsert, not INSERT OR REPLACE: replacing a row is an UPDATE, which the cache_totals
# trigger sees (a REPLACE's implicit delete fires no trigger without recursive_triggers).
_PUT = (f"INSERT INTO cache_entries ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT (key) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]))
_GET = f"SELECT {', '.join(_COLUMNS)} FROM cache_entries WHERE key = ?"
# a hit never needs the canonical request: leave that blob on disk (it is most of a row's bytes)
_GET_HIT = f"SELECT {', '.join(_COLUMNS[:-1])}, NULL FROM cache_entries WHERE key = ?"
_TOUCH = "UPDATE cache_entries SET hits = COALESCE(hits, 0) + 1, last_hit_at = ? WHERE key = ?"
# a batch of hits: one UPDATE per distinct key (a hot entry hit 32 times is one row write, not 32)
_TOUCH_N = "UPDATE cache_entries SET hits = COALESCE(hits, 0) + ?, last_hit_at = ? WHERE key = ?"
_DELETE = "DELETE FROM cache_entries WHERE key = ?"
_TOTALS = "SELECT entries, stored_bytes, raw_bytes FROM cache_totals WHERE id = 1"
# Eviction batches: each one walks an index from its start (expires_at; last_hit_at = LRU first).
_DELETE_EXPIRED = ("DELETE FROM cache_entries WHERE rowid IN "
                   "(SELECT rowid FROM cache_entries WHERE expires_at < ? ORDER BY expires_at LIMIT ?)")
_DELETE_LRU = ("DELETE FROM cache_entries WHERE rowid IN "
               "(SELECT rowid FROM cache_entries ORDER BY last_hit_at LIMIT ?)")
EVICT_BATCH = 500  # rows per eviction write (~2.5 MB of typical entries)
# Rows per purge write. Each batch dirties most leaf pages of the key index (keys are hashes, so a
# batch of old rows is spread over all of it) and every batch writes those pages to the WAL again:
# fewer, larger batches are what makes a purge fast (500k of 1M rows, bench/ANALYSIS.md: batches
# of 5,000 took 25 s, of 50,000 7.8-15.9 s, worst batch 0.6-2.8 s; key order instead of rowid
# order: 22 s). Reads never wait for a batch (WAL); the server's writes queue behind it.
PURGE_BATCH = 50_000
# The writer's settings during a purge, and what they are otherwise (SQLite's default for the
# checkpoint, dbfile's temp_store). The WAL is checkpointed once it holds 65,536 pages (256 MiB)
# instead of 1,000: the key-index pages every batch rewrites reach the file once per checkpoint,
# not once per batch. A batch's statement journal (a DELETE with triggers inside the writer's
# transaction keeps the original of every page it changes) goes to a temporary file, not RAM:
# in memory it raised the peak RSS by ~70 MB per batch of 50,000 rows.
_PURGE_PRAGMAS = (("wal_autocheckpoint", "65536", "1000"), ("temp_store", "FILE", "MEMORY"))
_LIST_COLUMNS = ("key", "namespace", "model", "created_at", "last_hit_at", "hits", "expires_at",
                 "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost", "raw_bytes",
                 "stored_bytes", "preview_user", "preview_answer")


TOUCH_DELAY_S = 1.0  # hit counts wait this long in memory: one write a second carries all of them


def fold_hits(hits: Sequence[tuple[str, float]],
              into: dict[str, tuple[int, float]] | None = None) -> dict[str, tuple[int, float]]:
    """{key: (number of hits, time of the last one in order)} for (key, time) hits, added to ``into``."""
    out: dict[str, tuple[int, float]] = {} if into is None else into
    for key, now in hits:
        seen = out.get(key)
        out[key] = (seen[0] + 1 if seen is not None else 1, now)
    return out


class SqliteTier:
    """CacheTier on SQLite. ``max_bytes`` caps stored (compressed) bytes; 0 means no cap.

    ``get`` sees committed rows and the entries of puts still queued on the writer (kept in
    ``_pending`` until their row lands), so a put is readable at once, as in the memory tier.
    """

    name = "sqlite"

    def __init__(self, db: Database, *, max_bytes: int = 0, stale_if_error: float = 0.0,
                 evict_every: int = 256, level: int = 3, compression: Compression | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_bytes = max(0, int(max_bytes))
        self.stale_if_error = stale_if_error
        self.evict_every = max(1, evict_every)
        self.evicted = 0
        self._clock = clock
        self.compression = compression or Compression(level, db)
        self._writer_zstd = ThreadCompressors(self.compression)  # used on the writer thread only
        self._put_rows = self._write_puts  # one object: the writer merges a run of puts into one call
        self._puts_since_evict = 0
        self._evicting: asyncio.Task[int] | None = None
        self._pending: dict[str, tuple[CacheEntry, int]] = {}  # put, row maybe not committed yet (write seq)
        self._settling: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._touches: dict[str, tuple[int, float]] = {}  # hits counted, not yet queued (write_touches)
        self._touch_timer: asyncio.TimerHandle | None = None
        self.disabled = ""  # why the tier is off (a failed integrity check): then it finds and keeps nothing

    def start(self, interval: float = 2.0) -> None:
        """Check the cap and expiry every ``interval`` seconds from now on (first check at once)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(interval), name="r1proxy-evict")

    def disable(self, why: str) -> None:
        """Stop reading and writing the database file (it failed an integrity check)."""
        self.disabled = why
        self._pending.clear()

    @property
    def degraded(self) -> str:
        """Non-empty while the tier is off (``/health`` reports it)."""
        return f"sqlite tier off: the database failed its integrity check ({self.disabled})" if self.disabled else ""

    async def _tick(self, interval: float) -> None:
        while True:
            self._kick_eviction()
            await asyncio.sleep(interval)

    def _kick_eviction(self) -> None:
        if self.disabled or self.db.closed:
            return
        if self._evicting is None or self._evicting.done():
            self._puts_since_evict = 0
            self._evicting = asyncio.get_running_loop().create_task(self._evict_quietly())

    async def get(self, key: str) -> CacheEntry | None:
        """The entry (fresh or expired) or None, without its canonical request (see ``get_full``);
        a damaged row is deleted and reported as a miss."""
        return self._get(key, _GET_HIT)

    async def get_full(self, key: str) -> CacheEntry | None:
        """``get`` with the canonical request the key stands for (``r1proxy cache show``)."""
        return self._get(key, _GET)

    def _get(self, key: str, sql: str) -> CacheEntry | None:
        if self.disabled:
            return None
        pending = self._pending.get(key)
        if pending is not None:
            return pending[0]
        try:
            row = self.db.fetchone_now(sql, (key,))  # a point read: cheaper inline than a thread hop
        except sqlite3.Error as e:
            log.error("cache read failed for %s: %s", key, e)
            return None
        if row is None:
            return None
        try:
            return self._decode(row)
        except UnknownDictionary as e:  # never deleted: a dictionary row lost is the thing to fix
            log.error("cache entry %s cannot be read: %s", key, e)
            return None
        except (zstandard.ZstdError, ValueError, TypeError) as e:
            log.error("cache entry %s is damaged (%s); deleting it", key, e)
            self.db.submit(_DELETE, (key,))
            return None

    async def put(self, entry: CacheEntry) -> None:
        """Queue an upsert; returns without waiting for the disk."""
        if self.disabled:
            return
        # encoded and compressed on the writer thread, in queue order (~0.3 ms of the event loop per
        # answer otherwise, right after [DONE], where the next request lands)
        seq = self.db.submit_rows(self._put_rows, [(entry,)], label=_PUT)
        self._pending[entry.key] = (entry, seq)
        self._touches.pop(entry.key, None)  # the row is replaced, hits and all (as if they were written first)
        if self._settling is None or self._settling.done():
            self._settling = asyncio.get_running_loop().create_task(self._settle())
        self._puts_since_evict += 1
        if self._puts_since_evict >= self.evict_every:
            self._kick_eviction()

    async def touch(self, key: str, now: float) -> None:
        self.db.submit(_TOUCH, (now, key))

    async def touch_many(self, hits: Sequence[tuple[str, float]]) -> None:
        """Count the hits (key, time) in memory; within ``TOUCH_DELAY_S`` they are one row update per
        distinct key (hits += n, last_hit_at = the last time in order): a hot entry costs the disk
        one write a second, not one per hit (each rewrites the row and its last_hit_at index entry)."""
        if not hits or self.disabled:
            return
        fold_hits(hits, self._touches)
        if self._touch_timer is None:
            self._touch_timer = asyncio.get_running_loop().call_later(TOUCH_DELAY_S, self.write_touches)

    def write_touches(self) -> None:
        """Queue the counted hits now (also before an eviction reads last_hit_at, on close, in settle)."""
        if self._touch_timer is not None:
            self._touch_timer.cancel()
            self._touch_timer = None
        touches, self._touches = self._touches, {}
        if touches and not self.disabled and not self.db.closed:
            self.db.submit_many(_TOUCH_N, [(n, now, key) for key, (n, now) in touches.items()])

    async def settle(self) -> None:
        """Wait until every write so far, counted hits included, is visible to ``get``."""
        self.write_touches()
        await self.db.flush()

    async def delete(self, key: str) -> bool:
        """True if a row was deleted; False when absent or the write failed (already logged)."""
        self._pending.pop(key, None)  # its queued INSERT runs before this DELETE (one FIFO writer)
        self._touches.pop(key, None)
        try:
            return await self.db.execute(_DELETE, (key,)) > 0
        except sqlite3.Error:
            return False

    def totals(self) -> tuple[int, int, int]:
        """(entries, stored bytes, raw bytes) of the committed rows: one row of ``cache_totals``."""
        row = self.db.fetchone_now(_TOTALS)
        return (int(row[0]), int(row[1]), int(row[2])) if row is not None else (0, 0, 0)

    async def stats(self) -> TierStats:
        try:
            count, stored, raw = self.totals()
        except sqlite3.Error as e:
            log.error("cache totals unreadable: %s", e)
            count, stored, raw = 0, 0, 0
        return TierStats(self.name, count, stored, raw)

    async def evict(self, now: float | None = None) -> int:
        """Delete rows expired longer ago than stale_if_error, then LRU down to 90% of the cap.

        Deletes in batches of at most ``EVICT_BATCH`` rows, each one write of its own, so other
        writes interleave and memory stays flat. Returns the number of rows deleted. Raises
        sqlite3.Error on failure.
        """
        self.write_touches()  # least recently used by the hits counted so far
        now = self._clock() if now is None else now
        n = 0
        while not self.db.closed:
            done = await self.db.execute(_DELETE_EXPIRED, (now - self.stale_if_error, EVICT_BATCH))
            n += done
            if done < EVICT_BATCH:
                break
        entries, stored, _ = self.totals()
        if self.max_bytes and stored > self.max_bytes:
            target = int(self.max_bytes * 0.9)
            while stored > target and entries > 0 and not self.db.closed:
                # about as many rows as the excess over the target holds, at the mean row size
                want = min(EVICT_BATCH, max(1, -(-(stored - target) * entries // stored)))
                done = await self.db.execute(_DELETE_LRU, (want,))
                n += done
                if done == 0:
                    break
                entries, stored, _ = self.totals()
        self.evicted += n
        return n

    async def list_entries(self, limit: int = 50, model: str | None = None) -> list[dict[str, Any]]:
        """Metadata (no blobs) of the most recently used entries, optionally for one model."""
        where, params = ("WHERE model = ?", [model]) if model else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {', '.join(_LIST_COLUMNS)} FROM cache_entries {where} "
            "ORDER BY COALESCE(last_hit_at, created_at) DESC LIMIT ?", (*params, int(limit)))
        return [dict(zip(_LIST_COLUMNS, r, strict=True)) for r in rows]

    async def purge(self, model: str | None = None, older_than_s: float | None = None,
                    all: bool = False, now: float | None = None) -> int:
        """Delete entries matching every given filter (model, created before now-older_than_s).

        ``all=True`` with no filters empties the cache; no filters without ``all`` raises
        ValueError so a bare call never wipes everything. Returns the number deleted.
        """
        conds: list[str] = []
        params: list[Any] = []
        if model:
            conds.append("model = ?")
            params.append(model)
        if older_than_s is not None:
            conds.append("created_at < ?")
            params.append((self._clock() if now is None else now) - older_than_s)
        if not conds and not all:
            raise ValueError("purge needs a model, an age, or all=True")
        cutoff = params[-1] if older_than_s is not None else None
        for k, (e, _) in list(self._pending.items()):
            if (not model or e.model == model) and (cutoff is None or e.created_at < cutoff):
                del self._pending[k]
        where = "".join(f" AND {c}" for c in conds)
        upto = (f"SELECT MAX(rowid) FROM (SELECT rowid FROM cache_entries WHERE rowid > ?{where} "
                "ORDER BY rowid LIMIT ?)")
        delete = f"DELETE FROM cache_entries WHERE rowid > ? AND rowid <= ?{where}"
        # The batches are found by reads, so puts queued before this must have landed: awaiting a
        # write on the FIFO writer waits for exactly those (not for the queue to be empty, which
        # under a steady stream of writes it never is).
        for name, during, _ in _PURGE_PRAGMAS:
            await self.db.execute(f"PRAGMA {name} = {during}")
        restore = [f"PRAGMA {name} = {normal}" for name, _, normal in _PURGE_PRAGMAS]
        try:
            n, last = 0, 0
            while True:  # walk the table by rowid: each batch starts where the last one ended
                row = await self.db.fetchone(upto, (last, *params, PURGE_BATCH))
                if row is None or row[0] is None:
                    break
                n += await self.db.execute(delete, (last, row[0], *params))
                last = row[0]
        except BaseException:
            if not self.db.closed:  # queued, not awaited: also when the purge was cancelled
                for sql in restore:
                    self.db.submit(sql)
            raise
        for sql in restore:  # awaited: a queued PRAGMA could be merged into an executemany, which rejects it
            await self.db.execute(sql)
        return n

    async def close(self) -> None:
        """Queue the counted hits, stop tracking queued puts, wait for a running eviction; leaves the
        Database open (its owner closes it)."""
        self.write_touches()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.gather(self._settling, return_exceptions=True)
            self._settling = None
        self._pending.clear()
        if self._evicting is not None:
            await asyncio.gather(self._evicting, return_exceptions=True)
            self._evicting = None

    async def _settle(self) -> None:
        """Forget each pending entry once the writer has run its put (not waiting for later writes:
        under a steady stream of misses the queue never drains, and the entries must not pile up)."""
        while self._pending:
            oldest = min(seq for _, seq in self._pending.values())
            await self.db.wait_written(oldest)
            done = self.db.written
            for key, (_, seq) in list(self._pending.items()):
                if seq <= done:
                    del self._pending[key]
            if self.db.closed:
                self._pending.clear()

    async def _evict_quietly(self) -> int:
        try:
            return await self.evict()
        except (sqlite3.Error, RuntimeError) as e:  # RuntimeError: database closed under us
            log.warning("cache eviction failed: %s", e)
            return 0

    def _write_puts(self, conn: sqlite3.Connection, rows: list[Any]) -> int:
        """On the writer thread, inside its batch: the upserts of queued puts (``put``)."""
        cur = conn.executemany(_PUT, [self._encode(e) for (e,) in rows])
        n = cur.rowcount
        cur.close()
        return n

    def _encode(self, e: CacheEntry) -> tuple[Any, ...]:
        """The row of an entry; on the writer thread (its own compressors)."""
        raw_body = json.dumps(e.completion, ensure_ascii=False, separators=(",", ":")).encode()
        dict_id, body, request = self._writer_zstd.compress(raw_body, e.request)
        return (e.key, e.namespace, e.model, e.created_at, e.last_hit_at or e.created_at, e.hits,
                e.expires_at, e.prompt_tokens, e.completion_tokens, e.reasoning_tokens, e.cost,
                len(raw_body) + len(e.request), len(body) + len(request), e.preview_user,
                e.preview_answer, dict_id, body, request)

    def _decode(self, row: Any) -> CacheEntry:
        (key, namespace, model, created_at, last_hit_at, hits, expires_at, prompt_tokens,
         completion_tokens, reasoning_tokens, cost, raw_bytes, _stored, preview_user,
         preview_answer, dict_id, body, request) = row
        raw_body = self.compression.decompress_body(body, dict_id or 0)
        completion = jsonfast.loads(raw_body)
        if not isinstance(completion, dict):
            raise TypeError("stored completion is not a JSON object")
        if request is None:  # not loaded: what is held is the answer alone
            raw_bytes = len(raw_body)
        return CacheEntry(
            key=key, completion=completion, created_at=created_at or 0.0,
            expires_at=expires_at or 0.0, model=model or "", namespace=namespace or "",
            request=self.compression.decompress_request(request, dict_id or 0) if request else b"",
            prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0,
            reasoning_tokens=reasoning_tokens or 0, cost=cost or 0.0, hits=hits or 0,
            last_hit_at=last_hit_at or 0.0, preview_user=preview_user or "",
            preview_answer=preview_answer or "", raw_bytes=raw_bytes or 0)
