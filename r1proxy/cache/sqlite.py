"""The on-disk cache tier: ``cache_entries`` rows in the shared ``Database``.

Metadata sits in plain columns; the completion (compact JSON) and the canonical request are
zstd blobs, compressed with the trained dictionary set the row names in ``dict_id`` (0 = none;
see ``zdict``). Writes (put, touch) are queued on the database writer and never fail a caller;
reads that hit a damaged row log it, drop the row and report a miss. Eviction (expired past
the stale window, then least recently used down to 90% of the byte cap) runs in the
background every ``evict_every`` puts, and on demand via ``evict(now)``. A put is visible to
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

from r1proxy.cache.entry import CacheEntry, TierStats
from r1proxy.cache.zdict import Compression, UnknownDictionary
from r1proxy.db import Database

log = logging.getLogger(__name__)

_COLUMNS = ("key", "namespace", "model", "created_at", "last_hit_at", "hits", "expires_at",
            "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost", "raw_bytes",
            "stored_bytes", "preview_user", "preview_answer", "dict_id", "body", "request")
_PUT = (f"INSERT OR REPLACE INTO cache_entries ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_GET = f"SELECT {', '.join(_COLUMNS)} FROM cache_entries WHERE key = ?"
# a hit never needs the canonical request: leave that blob on disk (it is most of a row's bytes)
_GET_HIT = f"SELECT {', '.join(_COLUMNS[:-1])}, NULL FROM cache_entries WHERE key = ?"
_TOUCH = "UPDATE cache_entries SET hits = COALESCE(hits, 0) + 1, last_hit_at = ? WHERE key = ?"
_DELETE = "DELETE FROM cache_entries WHERE key = ?"
_STATS = ("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0), COALESCE(SUM(raw_bytes), 0) "
          "FROM cache_entries")
_DELETE_EXPIRED = "DELETE FROM cache_entries WHERE expires_at < ?"
# Keep the most recently used rows whose running total fits the target; delete the rest.
_DELETE_LRU = """
DELETE FROM cache_entries WHERE key IN (
  SELECT key FROM (
    SELECT key, SUM(stored_bytes) OVER (
      ORDER BY COALESCE(last_hit_at, created_at) DESC, key ROWS UNBOUNDED PRECEDING) AS running
    FROM cache_entries)
  WHERE running > ?)
"""
_LIST_COLUMNS = ("key", "namespace", "model", "created_at", "last_hit_at", "hits", "expires_at",
                 "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost", "raw_bytes",
                 "stored_bytes", "preview_user", "preview_answer")


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
        self._puts_since_evict = 0
        self._evicting: asyncio.Task[int] | None = None
        self._pending: dict[str, tuple[CacheEntry, int]] = {}  # put, row maybe not committed yet (write seq)
        self._settling: asyncio.Task[None] | None = None

    async def get(self, key: str) -> CacheEntry | None:
        """The entry (fresh or expired) or None, without its canonical request (see ``get_full``);
        a damaged row is deleted and reported as a miss."""
        return self._get(key, _GET_HIT)

    async def get_full(self, key: str) -> CacheEntry | None:
        """``get`` with the canonical request the key stands for (``r1proxy cache show``)."""
        return self._get(key, _GET)

    def _get(self, key: str, sql: str) -> CacheEntry | None:
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
        """Queue an INSERT OR REPLACE; returns without waiting for the disk."""
        seq = self.db.submit(_PUT, self._encode(entry))
        self._pending[entry.key] = (entry, seq)
        if self._settling is None or self._settling.done():
            self._settling = asyncio.get_running_loop().create_task(self._settle())
        self._puts_since_evict += 1
        if self._puts_since_evict >= self.evict_every and (self._evicting is None or self._evicting.done()):
            self._puts_since_evict = 0
            self._evicting = asyncio.get_running_loop().create_task(self._evict_quietly())

    async def touch(self, key: str, now: float) -> None:
        self.db.submit(_TOUCH, (now, key))

    async def touch_many(self, hits: Sequence[tuple[str, float]]) -> None:
        self.db.submit_many(_TOUCH, [(now, key) for key, now in hits])

    async def delete(self, key: str) -> bool:
        """True if a row was deleted; False when absent or the write failed (already logged)."""
        self._pending.pop(key, None)  # its queued INSERT runs before this DELETE (one FIFO writer)
        try:
            return await self.db.execute(_DELETE, (key,)) > 0
        except sqlite3.Error:
            return False

    async def stats(self) -> TierStats:
        row = await self.db.fetchone(_STATS)
        count, stored, raw = row if row is not None else (0, 0, 0)
        return TierStats(self.name, int(count), int(stored), int(raw))

    async def evict(self, now: float | None = None) -> int:
        """Delete rows expired longer ago than stale_if_error, then LRU down to 90% of the cap.

        Returns the number of rows deleted. Raises sqlite3.Error on failure.
        """
        now = self._clock() if now is None else now
        n = await self.db.execute(_DELETE_EXPIRED, (now - self.stale_if_error,))
        if self.max_bytes:
            row = await self.db.fetchone("SELECT COALESCE(SUM(stored_bytes), 0) FROM cache_entries")
            if row is not None and row[0] > self.max_bytes:
                n += await self.db.execute(_DELETE_LRU, (int(self.max_bytes * 0.9),))
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
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return await self.db.execute(f"DELETE FROM cache_entries{where}", params)

    async def close(self) -> None:
        """Stop tracking queued puts, wait for a running eviction; leaves the Database open (its owner closes it)."""
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

    def _encode(self, e: CacheEntry) -> tuple[Any, ...]:
        raw_body = json.dumps(e.completion, ensure_ascii=False, separators=(",", ":")).encode()
        c = self.compression
        body = c.compress_body(raw_body)
        request = c.compress_request(e.request) if e.request else b""
        return (e.key, e.namespace, e.model, e.created_at, e.last_hit_at or None, e.hits,
                e.expires_at, e.prompt_tokens, e.completion_tokens, e.reasoning_tokens, e.cost,
                len(raw_body) + len(e.request), len(body) + len(request), e.preview_user,
                e.preview_answer, c.current, body, request)

    def _decode(self, row: Any) -> CacheEntry:
        (key, namespace, model, created_at, last_hit_at, hits, expires_at, prompt_tokens,
         completion_tokens, reasoning_tokens, cost, raw_bytes, _stored, preview_user,
         preview_answer, dict_id, body, request) = row
        raw_body = self.compression.decompress_body(body, dict_id or 0)
        completion = json.loads(raw_body)
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
