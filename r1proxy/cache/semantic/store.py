"""Vectors of the semantic tier: rows in ``semantic_vectors`` beside their cache entries, searched per partition.

``VectorStore`` writes a row per indexed entry through the database writer and answers
``search(partition, vector)`` by brute force: one float32 matrix product over the partition's
vectors. A searched partition stays in RAM (least recently used partitions are dropped past
``max_ram_bytes``) and new rows are appended to it; a key whose entry has gone (purged,
evicted) is dropped with ``forget``. The rows are deleted with their entry by a trigger
(migration m040), so the table never outlives the cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from r1proxy.db import Database

_INSERT = "INSERT OR REPLACE INTO semantic_vectors (key, partition, text, vector, created_at) VALUES (?, ?, ?, ?, ?)"
_LOAD = "SELECT key, text, vector FROM semantic_vectors WHERE partition = ?"
_DELETE = "DELETE FROM semantic_vectors WHERE key = ?"
_EXISTS = "SELECT 1 FROM semantic_vectors WHERE key = ?"


@dataclass(slots=True)
class Candidate:
    key: str
    text: str
    similarity: float


@dataclass(slots=True)
class _Partition:
    """Keys, texts and their vectors: row i of ``buf`` is ``keys[i]``; ``buf`` grows by doubling."""

    buf: Any  # float32 (capacity, dim), rows unit length; rows past len(keys) are unused
    keys: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def matrix(self) -> Any:
        return self.buf[:len(self.keys)]

    def nbytes(self) -> int:
        return int(self.buf.nbytes) + 100 * len(self.keys)

    def append(self, np: Any, key: str, text: str, vec: Any) -> None:
        n = len(self.keys)
        if n == self.buf.shape[0]:
            grown = np.empty((max(16, 2 * n), self.buf.shape[1]), dtype=np.float32)
            grown[:n] = self.buf
            self.buf = grown
        self.buf[n] = vec
        self.keys.append(key)
        self.texts.append(text)

    def remove(self, i: int) -> None:
        last = len(self.keys) - 1  # the last row moves into the hole: order does not matter to a search
        self.buf[i] = self.buf[last]
        self.keys[i], self.texts[i] = self.keys[last], self.texts[last]
        del self.keys[last], self.texts[last]


class VectorStore:
    """Per-partition vectors; ``db`` None keeps them in RAM only (tests, the corpus bench)."""

    def __init__(self, db: Database | None, *, dim: int = 384, max_ram_bytes: int = 64 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        import numpy as np
        self.np = np
        self.db = db
        self.dim = dim
        self.max_ram_bytes = max_ram_bytes
        self._clock = clock
        self._parts: OrderedDict[str, _Partition] = OrderedDict()
        self._ram = 0
        self._queued: dict[str, int] = {}  # key -> write sequence of its row, until the writer passed it

    @property
    def ram_bytes(self) -> int:
        return self._ram

    def add(self, partition: str, key: str, text: str, vector: Any) -> None:
        """Index ``key`` (an entry just stored) under ``partition``; queued, never raises for the database."""
        np = self.np
        vec = np.asarray(vector, dtype="<f4").reshape(self.dim)
        if self.db is not None:
            self._queued[key] = self.db.submit(_INSERT, (key, partition, text, vec.tobytes(), self._clock()))
            if len(self._queued) > 1024:
                self._queued = {k: q for k, q in self._queued.items() if q > self.db.written}
        part = self._parts.get(partition)
        if part is None:
            if self.db is not None:
                return  # loaded from the table (with this row) when first searched
            part = self._parts[partition] = _Partition(np.zeros((0, self.dim), dtype=np.float32))
        if key in part.keys:
            i = part.keys.index(key)
            part.buf[i] = vec
            part.texts[i] = text
            return
        before = part.nbytes()
        part.append(np, key, text, vec)
        self._ram += part.nbytes() - before
        self._trim(keep=partition)

    def indexed(self, key: str) -> bool:
        """The row of ``key`` is in the table, or still queued for it (a primary-key read, on the loop).
        A deleted cache entry takes its row along (trigger), so this is False once it is purged."""
        if self.db is None:
            return any(key in p.keys for p in self._parts.values())
        if self.db.closed:
            return False
        seq = self._queued.get(key)
        if seq is not None and seq > self.db.written:
            return True
        return self.db.fetchone_now(_EXISTS, (key,)) is not None

    def forget(self, key: str, partition: str | None = None) -> None:
        """Drop ``key`` (its entry is gone or was wrong): from RAM at once, from the table via the writer."""
        for name, part in list(self._parts.items()):
            if partition is not None and name != partition:
                continue
            if key in part.keys:
                i = part.keys.index(key)
                before = part.nbytes()
                part.remove(i)
                self._ram += part.nbytes() - before
        self._queued.pop(key, None)
        if self.db is not None:
            self.db.submit(_DELETE, (key,))

    async def search(self, partition: str, vector: Any, *, floor: float, limit: int = 5) -> list[Candidate]:
        """The ``limit`` most similar entries of ``partition`` with similarity >= ``floor``, best first."""
        part = await self._partition(partition)
        if part is None or not part.keys:
            return []
        return self.rank(part, vector, floor=floor, limit=limit)

    def rank(self, part: _Partition, vector: Any, *, floor: float, limit: int) -> list[Candidate]:
        np = self.np
        scores = part.matrix @ np.asarray(vector, dtype=np.float32)
        top = np.argpartition(-scores, limit)[:limit] if len(scores) > limit else np.arange(len(scores))
        order = top[np.argsort(-scores[top])]
        return [Candidate(part.keys[i], part.texts[i], float(scores[i])) for i in order if scores[i] >= floor]

    async def _partition(self, name: str) -> _Partition | None:
        part = self._parts.get(name)
        if part is not None:
            self._parts.move_to_end(name)
            return part
        if self.db is None:
            return None
        rows = await self.db.fetchall(_LOAD, (name,))
        if not rows:
            return None
        np = self.np
        part = _Partition(np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4")
                          .reshape(len(rows), self.dim).astype(np.float32),
                          keys=[r[0] for r in rows], texts=[r[1] for r in rows])
        if part.nbytes() <= self.max_ram_bytes:
            self._parts[name] = part
            self._ram += part.nbytes()
            self._trim(keep=name)
        return part

    def _trim(self, keep: str) -> None:
        while self._ram > self.max_ram_bytes and len(self._parts) > 1:
            name, part = next(iter(self._parts.items()))
            if name == keep:
                self._parts.move_to_end(name)
                continue
            del self._parts[name]
            self._ram -= part.nbytes()
