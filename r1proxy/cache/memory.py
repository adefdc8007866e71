"""The in-process cache tier: an LRU of ``CacheEntry`` objects bounded in bytes.

Sizes come from ``CacheEntry.size()``. Entries are stored by reference, so bytes rendered
into ``entry.rendered`` after insertion must be reported through ``note_rendered()`` (or
``resize()``) to keep the budget honest. Expiry is the caller's business: expired entries
are returned like fresh ones and leave only by LRU eviction or ``delete()``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from r1proxy.cache.entry import CacheEntry, TierStats


class MemoryTier:
    """Byte-bounded LRU; O(1) get/put/touch. ``max_bytes=0`` disables it (stores nothing)."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, CacheEntry] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        self.evictions = 0

    @property
    def entries(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get_nowait(self, key: str) -> CacheEntry | None:
        """The entry (fresh or expired) marked most recently used, or None. For the hot path."""
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    async def get(self, key: str) -> CacheEntry | None:
        return self.get_nowait(key)

    def put_nowait(self, entry: CacheEntry) -> CacheEntry | None:
        """Store or replace, then evict least recently used entries until within budget.

        An entry larger than the whole budget is not stored (and any old version dropped).
        Returns the entry as held (without its canonical request), or None when not stored.
        """
        self._drop(entry.key)
        if entry.request:  # the canonical request is for people inspecting the disk tier, not for hits
            entry = replace(entry, request=b"", raw_bytes=max(0, entry.raw_bytes - len(entry.request)),
                            rendered=dict(entry.rendered))
        size = entry.size()
        if size > self.max_bytes:
            return None
        self._items[entry.key] = entry
        self._sizes[entry.key] = size
        self.bytes += size
        self._shrink()
        return entry

    async def put(self, entry: CacheEntry) -> None:
        self.put_nowait(entry)

    def note_rendered(self, entry: CacheEntry, variant: Any, body: bytes) -> None:
        """Keep a ready-to-send body on the entry and count its bytes against the budget."""
        entry.rendered[variant] = body
        if self._items.get(entry.key) is entry:
            self.resize(entry.key)

    def resize(self, key: str) -> None:
        """Re-measure an entry whose ``rendered`` changed; evicts if the budget is exceeded."""
        entry = self._items.get(key)
        if entry is None:
            return
        size = entry.size()
        self.bytes += size - self._sizes[key]
        self._sizes[key] = size
        if size > self.max_bytes:
            self._drop(key)
            self.evictions += 1
            return
        self._items.move_to_end(key)  # being rendered means being served: most recent
        self._shrink()

    def touch_nowait(self, key: str, now: float) -> None:
        entry = self._items.get(key)
        if entry is not None:
            entry.hits += 1
            entry.last_hit_at = now
            self._items.move_to_end(key)

    async def touch(self, key: str, now: float) -> None:
        self.touch_nowait(key, now)

    async def touch_many(self, hits: Sequence[tuple[str, float]]) -> None:
        for key, now in hits:
            self.touch_nowait(key, now)

    async def delete(self, key: str) -> bool:
        return self._drop(key)

    def drop(self, key: str) -> bool:
        """Remove one entry now; True if it was here."""
        return self._drop(key)

    def drop_where(self, pred: Callable[[CacheEntry], bool]) -> int:
        """Remove every entry for which ``pred`` is true (the dashboard's purge by model or age)."""
        keys = [k for k, e in self._items.items() if pred(e)]
        for k in keys:
            self._drop(k)
        return len(keys)

    def clear(self) -> None:
        self._items.clear()
        self._sizes.clear()
        self.bytes = 0

    async def stats(self) -> TierStats:
        raw = sum(e.raw_bytes for e in self._items.values())
        return TierStats(self.name, len(self._items), self.bytes, raw)

    async def close(self) -> None:
        self.clear()

    def _drop(self, key: str) -> bool:
        if self._items.pop(key, None) is None:
            return False
        self.bytes -= self._sizes.pop(key)
        return True

    def _shrink(self) -> None:
        # The newest entry fits on its own (checked by callers), so this stops before it.
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
            self.evictions += 1
