"""The cache as the proxy sees it: ``TieredCache`` over a memory tier and slower tiers, or
``NullCache`` when caching is off (an object, so callers never test for ``None``).

Lookups try memory first, then each slower tier in order (SQLite, then the shared Redis tier when
configured); a hit in a slower tier is promoted into memory and into the slower tiers before it
(a Redis hit lands in SQLite too). Writes, touches and deletes go to every tier; slow tiers queue
them. ``degraded()`` lists tiers that are up but not in use (a Redis breaker that is open).
Freshness is the caller's decision: tiers return expired entries too.
"""

from __future__ import annotations

from collections.abc import Sequence

from r1proxy.cache.entry import CacheEntry, CacheTier, TierStats
from r1proxy.cache.memory import MemoryTier
from r1proxy.cache.purge import PurgeFilter

__all__ = ["CacheEntry", "CacheTier", "MemoryTier", "NullCache", "TierStats", "TieredCache"]


class TieredCache:
    """Memory (optional) in front of ``tiers``, fastest first."""

    enabled = True

    def __init__(self, memory: MemoryTier | None, tiers: list[CacheTier]) -> None:
        self.memory = memory
        self.tiers = list(tiers)

    @property
    def memory_name(self) -> str:
        return self.memory.name if self.memory is not None else ""

    def get_nowait(self, key: str) -> CacheEntry | None:
        """Memory-only lookup for the hot path; None when absent or memory is disabled."""
        return self.memory.get_nowait(key) if self.memory is not None else None

    async def get(self, key: str) -> tuple[CacheEntry, str] | tuple[None, None]:
        """(entry, name of the tier that had it) or (None, None)."""
        if self.memory is not None:
            entry = self.memory.get_nowait(key)
            if entry is not None:
                return entry, self.memory.name
        for i, tier in enumerate(self.tiers):
            entry = await tier.get(key)
            if entry is not None:
                for local in self.tiers[:i]:
                    await local.put(entry)
                if self.memory is not None:
                    entry = self.memory.put_nowait(entry) or entry
                return entry, tier.name
        return None, None

    async def put(self, entry: CacheEntry) -> None:
        for tier in self._all():
            await tier.put(entry)

    def touch_nowait(self, key: str, now: float) -> None:
        """Record a hit in memory now (LRU order); the slower tiers get it later via ``touch_slow``."""
        if self.memory is not None:
            self.memory.touch_nowait(key, now)

    def note_rendered(self, entry: CacheEntry, variant: object, body: bytes) -> None:
        """Keep a ready-to-send body on the entry (counted against the memory budget)."""
        if self.memory is not None:
            self.memory.note_rendered(entry, variant, body)
        else:
            entry.rendered[variant] = body

    async def touch_slow(self, hits: Sequence[tuple[str, float]]) -> None:
        for tier in self.tiers:
            await tier.touch_many(hits)

    async def delete(self, key: str) -> bool:
        """True if any tier held the key."""
        found = False
        for tier in self._all():
            found = await tier.delete(key) or found
        return found

    async def stats(self) -> list[TierStats]:
        return [await tier.stats() for tier in self._all()]

    def degraded(self) -> list[str]:
        """One line per tier that is configured but not in use right now (e.g. "redis breaker open …")."""
        return [d for d in (getattr(t, "degraded", "") for t in self.tiers) if d]

    def drop_from_memory(self, f: PurgeFilter) -> int:
        """Drop the memory tier's entries matching ``f`` (a purge done elsewhere: CLI, another process)."""
        if self.memory is None:
            return 0
        if f.key is not None:
            return int(self.memory.drop(f.key))
        return self.memory.drop_where(lambda e: f.matches(e.model, e.created_at, e.key))

    async def purge_local(self, f: PurgeFilter, now: float) -> int:
        """Apply a purge broadcast: drop matching entries from memory, and from SQLite when team-wide."""
        n = self.drop_from_memory(f)
        if f.shared and f.key is not None:
            for t in self.tiers:
                if t.name == "sqlite":
                    n += int(await t.delete(f.key))
        elif f.shared:
            for t in self.tiers:
                purge = getattr(t, "purge", None)
                if t.name == "sqlite" and purge is not None:
                    n += await purge(model=f.model, all=f.all,
                                     older_than_s=None if f.before is None else max(0.0, now - f.before), now=now)
        return n

    def reports(self) -> dict[str, dict[str, object]]:
        """Per-tier counters from tiers that keep them (the Redis tier: hits, errors, breaker state …)."""
        return {t.name: fn() for t in self.tiers if (fn := getattr(t, "report", None)) is not None}

    async def close(self) -> None:
        for tier in self._all():
            await tier.close()

    def _all(self) -> list[CacheTier]:
        return ([self.memory] if self.memory is not None else []) + self.tiers


class NullCache(TieredCache):
    """Caching is off (``cache.enabled = false``): nothing is found, nothing is kept."""

    enabled = False

    def __init__(self) -> None:
        super().__init__(None, [])

    def note_rendered(self, entry: CacheEntry, variant: object, body: bytes) -> None:
        return None
