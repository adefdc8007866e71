"""Every cache decision about time and trust, in one place.

- ``usable``: may this stored entry answer this request now (TTL, the client's ``max-age``)?
- ``stale_window``: may an expired entry stand in for a failed upstream call (RFC 5861
  stale-if-error: only for the upstream's failures, never for a 4xx the client must fix)?
- ``StaleFinder``: the lookup of such an entry, handed to the reply code as a value.

Tiers return expired entries too: they store; this module decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..rules import upstream_failed
from .entry import CacheEntry

if TYPE_CHECKING:
    from ..errors import ProxyError


class CachePolicy(Protocol):
    """What a request's cache controls say (``request.CacheControl`` satisfies it)."""

    @property
    def max_age(self) -> float | None: ...

    @property
    def stale_ok(self) -> bool: ...


def usable(entry: CacheEntry, cc: CachePolicy, now: float) -> bool:
    """Fresh, and no older than the client's ``max-age`` when it sent one."""
    return entry.fresh(now) and (cc.max_age is None or now - entry.created_at <= cc.max_age)


def stale_allowed(cc: CachePolicy, error: ProxyError | None, window: float) -> bool:
    """Whether a stale answer may replace this failure at all."""
    if not cc.stale_ok or not window:
        return False
    return error is None or upstream_failed(error.status)


class Lookup(Protocol):
    async def get(self, key: str) -> tuple[CacheEntry, str] | tuple[None, None]: ...


@dataclass(slots=True)
class StaleFinder:
    """Finds an expired entry still inside the stale-if-error window for one request."""

    cache: Lookup
    key: str
    cc: CachePolicy
    window: float
    now: Callable[[], float]

    async def __call__(self, error: ProxyError | None) -> CacheEntry | None:
        if not self.key or not stale_allowed(self.cc, error, self.window):
            return None
        entry, _tier = await self.cache.get(self.key)
        if entry is None or self.now() > entry.expires_at + self.window:
            return None
        return entry


async def no_stale(error: ProxyError | None) -> CacheEntry | None:
    """The finder for requests that cannot be answered stale (cache off, no key)."""
    return None
