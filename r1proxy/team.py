"""The shared (team) side of one process, built from ``[cache.redis]``: the Redis cache tier, coalescing
across processes, shared limits and the purge listener, all on one Redis and one breaker.

``Team.open`` builds them (nothing is awaited: connections open on first use, and a Redis that is down
costs nothing but the sharing); ``listen(cache)`` starts receiving purge broadcasts for that cache;
``close`` stops them in order and closes both clients (the short-timeout one for lookups and writes,
the blocking one for ``XREAD BLOCK`` and pub/sub).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cache import TieredCache
from .cache.purge import PurgeFilter, PurgeListener
from .cache.redistier import RedisTier, connect
from .cache.zdict import Compression
from .coalesce import BLOCK_S, Coalescer
from .config import Config
from .sharedlimits import SharedLimits


class Team:
    def __init__(self, tier: RedisTier, blocking: Any, coalescer: Coalescer | None, limits: SharedLimits,
                 now: Callable[[], float]) -> None:
        self.tier = tier
        self.blocking = blocking
        self.coalescer = coalescer
        self.limits = limits
        self.listener: PurgeListener | None = None
        self._now = now

    @classmethod
    def open(cls, config: Config, compression: Compression, now: Callable[[], float]) -> Team:
        rcfg = config.cache.redis
        tier = RedisTier(connect(rcfg), rcfg, stale_if_error=config.cache.stale_if_error, compression=compression)
        blocking = connect(rcfg, max_connections=16, socket_timeout=BLOCK_S + 2 * rcfg.timeout + 0.5)
        coalescer = Coalescer(tier.client, blocking, rcfg, tier.breaker) if rcfg.coalesce else None
        return cls(tier, blocking, coalescer, SharedLimits(tier.client, rcfg, tier.breaker), now)

    def listen(self, cache: TieredCache) -> None:
        async def on_purge(f: PurgeFilter) -> None:
            await cache.purge_local(f, self._now())

        self.listener = PurgeListener(self.blocking, self.tier.prefix, on_purge)
        self.listener.start()

    async def close(self) -> None:
        """Before the cache closes (the tier's own close sends its queued writes and closes its client)."""
        if self.listener is not None:
            await self.listener.close()
        if self.coalescer is not None:
            await self.coalescer.close()
        await self.limits.close()
        try:
            await self.blocking.aclose()
        except Exception:  # closing a dead connection must not fail shutdown
            pass
