"""What a cache tier stores and returns: one ``CacheEntry`` per request identity.

The stored form is the assembled completion (an OpenAI ``chat.completion`` dict whose
messages carry ``content``, ``reasoning_content`` and ``tool_calls``); both a JSON and an
SSE reply are rendered from it. ``rendered`` holds ready-to-send bytes in memory only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..completion import dumps
from ..usage import Usage
from .keys import last_user_text


@dataclass(slots=True)
class CacheEntry:
    key: str
    completion: dict[str, Any]
    created_at: float
    expires_at: float
    model: str = ""
    namespace: str = ""
    request: bytes = b""  # canonical request JSON the key stands for (kept on disk)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    hits: int = 0
    last_hit_at: float = 0.0
    preview_user: str = ""
    preview_answer: str = ""
    raw_bytes: int = 0
    # memory tier only: ready-to-send bodies keyed by render variant, filled lazily
    rendered: dict[Any, bytes] = field(default_factory=dict)
    _usage: Usage | None = field(default=None, repr=False, compare=False)  # ``usage()``, parsed once

    @classmethod
    def from_completion(cls, key: str, doc: dict[str, Any], *, now: float, ttl: float, model: str,
                        namespace: str, request: bytes) -> CacheEntry:
        """The entry for a complete answer to ``request`` (its canonical form)."""
        usage = Usage.of_completion(doc)
        msg = (doc.get("choices") or [{}])[0].get("message") or {}
        return cls(key=key, completion=doc, created_at=now, expires_at=now + ttl, model=model,
                   namespace=namespace, request=request, prompt_tokens=usage.prompt,
                   completion_tokens=usage.completion, reasoning_tokens=usage.reasoning, cost=usage.cost,
                   last_hit_at=now, preview_user=last_user_text(request)[:160],
                   preview_answer=str(msg.get("content") or "")[:160],
                   raw_bytes=len(dumps(doc)) + len(request))

    def usage(self) -> Usage:
        """The completion's ``Usage`` (what every hit reports), parsed on first use and kept."""
        usage = self._usage
        if usage is None:
            usage = self._usage = Usage.of_completion(self.completion)
        return usage

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def size(self) -> int:
        """Approximate bytes held in memory (what the byte-bounded LRU counts): the parsed completion
        costs about twice its JSON (str headers, dicts), plus the ready-to-send bodies."""
        return 1024 + 2 * self.raw_bytes + len(self.request) + sum(len(b) for b in self.rendered.values())


@dataclass(slots=True)
class TierStats:
    name: str
    entries: int
    bytes: int  # bytes held (stored, i.e. compressed on disk)
    raw_bytes: int = 0  # uncompressed size of what is held


class CacheTier(Protocol):
    """One storage tier. Memory, SQLite today; a shared Redis tier implements the same."""

    name: str

    async def get(self, key: str) -> CacheEntry | None:
        """The entry for key, fresh or expired (the caller decides), or None."""

    async def put(self, entry: CacheEntry) -> None:
        """Store or replace; may be asynchronous (queued) for slow tiers."""

    async def touch(self, key: str, now: float) -> None:
        """Record a hit (hits += 1, last_hit_at = now)."""

    async def touch_many(self, hits: Sequence[tuple[str, float]]) -> None:
        """Record several hits (key, when) at once; hits on the hot path are batched this way."""

    async def delete(self, key: str) -> bool: ...

    async def stats(self) -> TierStats: ...

    async def close(self) -> None: ...
