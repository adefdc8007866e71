"""zstd compression of cache entries, with trained dictionaries shared by the SQLite and Redis tiers.

A dictionary set (one zstd dictionary for completions, one for canonical requests) is trained from
stored entries (``train``) and kept forever in the ``zstd_dicts`` table (migration m030). Its id is
the completion dictionary's own zstd id (random, 32 bits), so processes on different machines that
hold the same dictionary agree on its id. Every stored entry names the set it was compressed with
(``dict_id``; 0 = plain zstd), so entries written before a new set stay readable. ``Compression``
writes with the newest set it has loaded and reads with whatever set an entry names, loading an
unknown one from the database on first use (or, through ``add``, from Redis: ``pack``/``unpack``
are the form a set travels in).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

import zstandard

from r1proxy.db import Database

log = logging.getLogger(__name__)

DICT_SIZE = 112_640  # zstd's default dictionary size
_PACK = struct.Struct("<4sI")  # magic, length of the completion dictionary; the request dictionary follows
_MAGIC = b"R1D1"


class UnknownDictionary(LookupError):
    def __init__(self, dict_id: int) -> None:
        super().__init__(f"zstd dictionary {dict_id} is not known here")
        self.dict_id = dict_id


class _Set:
    __slots__ = ("body", "cbody", "creq", "dbody", "dreq", "request")

    def __init__(self, body: bytes, request: bytes, level: int) -> None:
        self.body, self.request = body, request
        bd = zstandard.ZstdCompressionDict(body)
        rd = zstandard.ZstdCompressionDict(request) if request else bd
        self.cbody = zstandard.ZstdCompressor(level=level, dict_data=bd)
        self.creq = zstandard.ZstdCompressor(level=level, dict_data=rd)
        self.dbody = zstandard.ZstdDecompressor(dict_data=bd)
        self.dreq = zstandard.ZstdDecompressor(dict_data=rd)


class Compression:
    """Compressors for the current dictionary set, decompressors for every set seen. One event-loop thread."""

    def __init__(self, level: int = 3, db: Database | None = None) -> None:
        self.level = level
        self.db = db
        self.current = 0
        self._plain_c = zstandard.ZstdCompressor(level=level)
        self._plain_d = zstandard.ZstdDecompressor()
        self._sets: dict[int, _Set] = {}
        self._missing: set[int] = set()  # asked the database already, not there

    async def load(self) -> int:
        """Use the newest set in the database for writing; returns its id (0: none, plain zstd)."""
        if self.db is None:
            return 0
        row = await self.db.fetchone("SELECT id, body, request FROM zstd_dicts ORDER BY created_at DESC, id LIMIT 1")
        if row is not None:
            self.add(int(row[0]), bytes(row[1]), bytes(row[2] or b""))
            self.current = int(row[0])
        return self.current

    def add(self, dict_id: int, body: bytes, request: bytes) -> None:
        if dict_id and dict_id not in self._sets:
            self._sets[dict_id] = _Set(body, request, self.level)
            self._missing.discard(dict_id)

    def has(self, dict_id: int) -> bool:
        """Known now, or found in the database (an inline point read, once per unknown id)."""
        if dict_id == 0 or dict_id in self._sets:
            return True
        if self.db is None or dict_id in self._missing or self.db.closed:
            return False
        row = self.db.fetchone_now("SELECT body, request FROM zstd_dicts WHERE id = ?", (dict_id,))
        if row is None:
            self._missing.add(dict_id)
            return False
        self.add(dict_id, bytes(row[0]), bytes(row[1] or b""))
        return True

    def packed(self, dict_id: int) -> bytes | None:
        s = self._sets.get(dict_id)
        return pack(s.body, s.request) if s is not None else None

    def compress_body(self, raw: bytes) -> bytes:
        s = self._sets.get(self.current)
        return (s.cbody if s is not None else self._plain_c).compress(raw)

    def compress_request(self, raw: bytes) -> bytes:
        s = self._sets.get(self.current)
        return (s.creq if s is not None else self._plain_c).compress(raw)

    def decompress_body(self, blob: bytes, dict_id: int) -> bytes:
        return self._d(dict_id, request=False).decompress(blob)

    def decompress_request(self, blob: bytes, dict_id: int) -> bytes:
        return self._d(dict_id, request=True).decompress(blob)

    def _d(self, dict_id: int, *, request: bool) -> Any:
        if dict_id == 0:
            return self._plain_d
        if not self.has(dict_id):
            raise UnknownDictionary(dict_id)
        s = self._sets[dict_id]
        return s.dreq if request else s.dbody


class ThreadCompressors:
    """Compressors for one other thread (the database writer): a ``ZstdCompressor`` must not be used by
    two threads at once, so this thread gets its own, built from ``compression``'s current set on first
    use. Reads ``compression.current`` (an int, set after its set was added) and nothing it mutates."""

    def __init__(self, compression: Compression) -> None:
        self.compression = compression
        self._by_id: dict[int, tuple[Any, Any]] = {}

    def compress(self, raw_body: bytes, raw_request: bytes) -> tuple[int, bytes, bytes]:
        """(dictionary set id, compressed body, compressed request or b"")."""
        c = self.compression
        dict_id = c.current
        pair = self._by_id.get(dict_id)
        if pair is None:
            s = c._sets.get(dict_id)
            if s is None:  # no set by that id here (none trained): plain zstd, as Compression does
                dict_id = 0
                pair = self._by_id.get(0)
            if pair is None:
                pair = self._by_id[dict_id] = _compressors(s if dict_id else None, c.level)
        cbody, creq = pair
        return dict_id, cbody.compress(raw_body), creq.compress(raw_request) if raw_request else b""


def _compressors(s: _Set | None, level: int) -> tuple[Any, Any]:
    if s is None:
        plain = zstandard.ZstdCompressor(level=level)
        return plain, plain
    bd = zstandard.ZstdCompressionDict(s.body)
    rd = zstandard.ZstdCompressionDict(s.request) if s.request else bd
    return (zstandard.ZstdCompressor(level=level, dict_data=bd), zstandard.ZstdCompressor(level=level, dict_data=rd))


def pack(body: bytes, request: bytes) -> bytes:
    return _PACK.pack(_MAGIC, len(body)) + body + request


def unpack(value: bytes) -> tuple[bytes, bytes]:
    if len(value) < _PACK.size:
        raise ValueError("not a packed dictionary set")
    magic, n = _PACK.unpack_from(value)
    if magic != _MAGIC or len(value) < _PACK.size + n:
        raise ValueError("not a packed dictionary set")
    return value[_PACK.size:_PACK.size + n], value[_PACK.size + n:]


async def train(db: Database, compression: Compression, *, samples: int = 2000,
                size: int = DICT_SIZE) -> tuple[int, int]:
    """Train a new set from up to ``samples`` recent entries, store it and make it current.

    Returns (dictionary id, entries sampled). Raises ValueError when there is too little to learn from.
    """
    raw_bodies, raw_requests = await recent_raw(db, compression, samples)
    bodies: list[bytes | bytearray | memoryview] = list(raw_bodies)
    requests: list[bytes | bytearray | memoryview] = list(raw_requests)
    if len(bodies) < 16:
        raise ValueError(f"too few entries to train a dictionary ({len(bodies)}; need at least 16)")
    try:
        bd = zstandard.train_dictionary(size, bodies)
        rd = zstandard.train_dictionary(size, requests) if len(requests) >= 16 else None
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd could not train a dictionary from {len(bodies)} entries: {e}") from None
    dict_id = bd.dict_id()
    body, request = bd.as_bytes(), rd.as_bytes() if rd is not None else b""
    await db.execute("INSERT OR REPLACE INTO zstd_dicts (id, created_at, samples, body, request) "
                     "VALUES (?, ?, ?, ?, ?)", (dict_id, time.time(), len(bodies), body, request))
    compression.add(dict_id, body, request)
    compression.current = dict_id
    log.info("trained zstd dictionary %d from %d entries", dict_id, len(bodies))
    return dict_id, len(bodies)


def measure(compression: Compression, dict_id: int, bodies: list[bytes],
            requests: list[bytes]) -> dict[str, dict[str, int]]:
    """Raw, plain-zstd and with-dictionary bytes of the given raw bodies and requests (for reports and bench/)."""
    plain = zstandard.ZstdCompressor(level=compression.level)
    s = compression._sets[dict_id]
    return {name: {"raw": sum(len(x) for x in items), "plain": sum(len(plain.compress(x)) for x in items),
                   "dict": sum(len(c.compress(x)) for x in items), "n": len(items)}
            for name, items, c in (("answers", bodies, s.cbody), ("requests", requests, s.creq))}


async def recent_raw(db: Database, compression: Compression, limit: int,
                     offset: int = 0) -> tuple[list[bytes], list[bytes]]:
    """The uncompressed bodies and requests of recent entries (entries that cannot be read are skipped)."""
    rows = await db.fetchall(
        "SELECT body, request, dict_id FROM cache_entries ORDER BY COALESCE(last_hit_at, created_at) DESC "
        "LIMIT ? OFFSET ?", (limit, offset))
    bodies: list[bytes] = []
    requests: list[bytes] = []
    for body, request, dict_id in rows:
        try:
            bodies.append(compression.decompress_body(body, dict_id or 0))
            if request:
                requests.append(compression.decompress_request(request, dict_id or 0))
        except (zstandard.ZstdError, UnknownDictionary):
            continue
    return bodies, requests
