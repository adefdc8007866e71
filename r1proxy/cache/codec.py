"""The portable form of a ``CacheEntry``: one bytes value, as the shared (Redis) tier stores it.

Layout: a fixed header ``<4s I I I I`` (magic ``R1E1``, dictionary id, metadata length, body length,
raw bytes), the metadata as compact JSON, the completion as a zstd frame, then the canonical request
as a zstd frame (possibly empty). The body and request frames are exactly what the SQLite tier keeps
in its ``body`` and ``request`` columns, compressed with the dictionary set the header names (0 means
plain zstd; ``zdict``). Decoding an entry whose set is unknown raises ``UnknownDictionary``. The header alone
(``HEADER_SIZE`` bytes) tells a value's raw size, so stats never decode whole values. Hit counts are
not part of the value: they change after it is written.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import zstandard

from r1proxy.cache.entry import CacheEntry
from r1proxy.cache.zdict import Compression

MAGIC = b"R1E1"
_HEADER = struct.Struct("<4sIIII")
HEADER_SIZE = _HEADER.size
_META = ("key", "namespace", "model", "created_at", "expires_at", "prompt_tokens", "completion_tokens",
         "reasoning_tokens", "cost", "preview_user", "preview_answer")


class CodecError(ValueError):
    """A value that is not an entry this codec wrote (damaged, foreign, or an unknown dictionary)."""


class Codec:
    """Encodes and decodes entries with a (shared) ``Compression`` (one event-loop thread)."""

    def __init__(self, compression: Compression | None = None) -> None:
        self.compression = compression or Compression()

    def encode(self, e: CacheEntry) -> bytes:
        c = self.compression
        raw_body = json.dumps(e.completion, ensure_ascii=False, separators=(",", ":")).encode()
        body = c.compress_body(raw_body)
        request = c.compress_request(e.request) if e.request else b""
        meta = json.dumps({k: getattr(e, k) for k in _META}, ensure_ascii=False, separators=(",", ":")).encode()
        raw = len(raw_body) + len(e.request)
        return _HEADER.pack(MAGIC, c.current, len(meta), len(body), raw) + meta + body + request

    def decode(self, value: bytes, *, hits: int = 0, last_hit_at: float = 0.0) -> CacheEntry:
        dict_id, meta_len, body_len, raw = header(value)
        start = HEADER_SIZE
        try:
            meta = json.loads(value[start:start + meta_len])
            body = value[start + meta_len:start + meta_len + body_len]
            rest = value[start + meta_len + body_len:]
            completion = json.loads(self.compression.decompress_body(body, dict_id))
            request = self.compression.decompress_request(rest, dict_id) if rest else b""
        except (zstandard.ZstdError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CodecError(f"damaged entry: {e}") from None
        if not isinstance(meta, dict) or not isinstance(completion, dict):
            raise CodecError("damaged entry: not a JSON object")
        fields: dict[str, Any] = {k: meta[k] for k in _META if k in meta}
        if fields.get("key") is None:
            raise CodecError("damaged entry: no key")
        return CacheEntry(completion=completion, request=request, hits=hits, last_hit_at=last_hit_at,
                          raw_bytes=raw, **fields)


def header(value: bytes) -> tuple[int, int, int, int]:
    """(dictionary id, metadata length, body length, raw bytes) from a value's first HEADER_SIZE bytes."""
    if len(value) < HEADER_SIZE:
        raise CodecError("damaged entry: short header")
    magic, dict_id, meta_len, body_len, raw = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise CodecError("not an r1proxy entry")
    return dict_id, meta_len, body_len, raw
