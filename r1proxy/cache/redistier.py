"""The shared cache tier on Redis or Valkey (``[cache.redis]``), behind the ``CacheTier`` contract.

Nothing here may fail or stall a request. Every lookup is bounded twice (the client's socket
timeouts, no client retries, and an ``asyncio.timeout`` fence) and goes through a ``Breaker``:
after ``breaker_failures`` failures in a row Redis is not asked at all until a probe after
``breaker_reset`` succeeds. Writes (put, touch, delete) go through a bounded queue drained by
one background writer in pipelined batches; a full queue or an open breaker drops them and
counts the drop. Keys: ``<prefix>e:{<cache key>}`` holds the encoded entry (``codec``), always
written with ``SET … EX``; ``<prefix>h:{<cache key>}`` holds its hit count (the hash tag keeps
both in one cluster slot). Entries larger than ``max_entry_mb`` stay in the local tiers.

The ``redis`` package (``pip install 'r1proxy[redis]'``) is imported only when a tier is built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from r1proxy.cache import redisnames
from r1proxy.cache.breaker import Breaker
from r1proxy.cache.codec import HEADER_SIZE, Codec, CodecError, header
from r1proxy.cache.entry import CacheEntry, TierStats
from r1proxy.cache.purge import glob_escape, scan_keys
from r1proxy.cache.zdict import Compression, UnknownDictionary, unpack
from r1proxy.config import ConfigError, RedisConfig

log = logging.getLogger("r1proxy.redis")

_BATCH = 64
_STATS_EVERY_S = 10.0
_STATS_MAX_KEYS = 200_000
# count a hit only while its entry exists, and let the count expire with it
_TOUCH_LUA = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('HINCRBY', KEYS[2], 'hits', 1)
  redis.call('HSET', KEYS[2], 'last', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return ttl
"""


def connect(cfg: RedisConfig, *, max_connections: int = 64, socket_timeout: float | None = None) -> Any:
    """A ``redis.asyncio.Redis`` with the timeouts and retries set explicitly: redis-py's defaults
    (5 s socket timeout, 10 retries) hold a call for about a minute against a hung server."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigError("cache.redis.url is set but the Redis client is not installed: "
                          "pip install 'r1proxy[redis]'") from None
    return aioredis.from_url(
        cfg.url, password=cfg.password or None, socket_timeout=socket_timeout or cfg.timeout,
        socket_connect_timeout=cfg.timeout, retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
        max_connections=max_connections, health_check_interval=0, client_name="r1proxy")


@dataclass(slots=True)
class RedisCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0  # failed or timed-out calls (each also counted by the breaker)
    skipped: int = 0  # lookups not sent because the breaker was open
    writes: int = 0
    dropped_writes: int = 0  # queue full, breaker open, or the write failed
    too_big: int = 0  # entries kept local because of max_entry_mb
    damaged: int = 0


class RedisTier:
    """CacheTier on Redis. ``client`` is a ``redis.asyncio.Redis`` (see ``connect``); the tier owns it."""

    name = "redis"

    def __init__(self, client: Any, cfg: RedisConfig, *, stale_if_error: float = 0.0, queue_size: int = 1024,
                 compression: Compression | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.cfg = cfg
        self.prefix = cfg.prefix
        self.timeout = cfg.timeout
        self.write_timeout = max(1.0, 10 * cfg.timeout)
        self.max_entry_bytes = int(cfg.max_entry_mb * 1024 * 1024)
        self.stale_if_error = stale_if_error
        self.breaker = Breaker("redis", cfg.breaker_failures, cfg.breaker_reset, clock=monotonic, logger=log)
        self.counters = RedisCounters()
        self.codec = Codec(compression)
        self.compression = self.codec.compression
        self._dict_published: dict[int, float] = {}  # dictionary set id -> monotonic time last written to Redis
        self._clock = clock
        self._mono = monotonic
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._touch = client.register_script(_TOUCH_LUA)
        self._stats: tuple[float, TierStats] | None = None

    def entry_key(self, key: str) -> str:
        return redisnames.entry_key(self.prefix, key)

    def hits_key(self, key: str) -> str:
        return redisnames.hits_key(self.prefix, key)

    def dict_key(self, dict_id: int) -> str:
        return f"{self.prefix}zdict:{dict_id}"

    @property
    def degraded(self) -> str:
        """'' when Redis is in use, else why not (for /health and ``r1proxy stats``)."""
        reason = self.breaker.degraded
        return f"redis {reason}" if reason else ""

    def report(self) -> dict[str, Any]:
        """Counters and breaker state for /stats, ``r1proxy stats`` and /metrics."""
        c = self.counters
        return {"state": self.breaker.state, "degraded": self.degraded, "hits": c.hits, "misses": c.misses,
                "errors": c.errors, "skipped": c.skipped, "writes": c.writes, "dropped_writes": c.dropped_writes,
                "too_big": c.too_big, "damaged": c.damaged, "breaker_opens": self.breaker.opens,
                "queued": self._queue.qsize()}

    # ---- reads: bounded, breaker-guarded, never raise -------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        if not self.breaker.allow():
            self.counters.skipped += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.client.pipeline(transaction=False)
                pipe.get(self.entry_key(key))
                pipe.hmget(self.hits_key(key), "hits", "last")
                value, (hits, last) = await pipe.execute()
        except Exception as e:  # any failure is a miss; the breaker decides whether to keep asking
            self._failed(e)
            return None
        self.breaker.success()
        if value is None:
            self.counters.misses += 1
            return None
        try:
            entry = await self._decode(value, int(hits or 0), float(last or 0.0))
        except UnknownDictionary as e:  # written by a process whose dictionary did not reach us: a miss
            self.counters.misses += 1
            log.warning("redis entry %s: %s", key, e)
            return None
        except (CodecError, TypeError, ValueError) as e:
            self.counters.damaged += 1
            log.error("redis entry %s is unusable (%s); deleting it", key, e)
            self._enqueue(("del", key, None))
            return None
        if entry.key != key:  # a value under the wrong key must never be served
            self.counters.damaged += 1
            log.error("redis entry under %s holds key %s; deleting it", key, entry.key)
            self._enqueue(("del", key, None))
            return None
        self.counters.hits += 1
        return entry

    async def _decode(self, value: bytes, hits: int, last: float) -> CacheEntry:
        """Decode, first fetching from Redis a dictionary set this process has not seen (bounded)."""
        dict_id = header(value)[0]
        if not self.compression.has(dict_id) and self.breaker.allow():
            try:
                async with asyncio.timeout(self.timeout):
                    packed = await self.client.get(self.dict_key(dict_id))
            except Exception as e:
                self._failed(e)
                raise UnknownDictionary(dict_id) from None
            self.breaker.success()
            try:
                if packed is not None:
                    self.compression.add(dict_id, *unpack(packed))
            except ValueError:
                log.error("redis: the dictionary set %d stored in Redis is damaged", dict_id)
        return self.codec.decode(value, hits=hits, last_hit_at=last)

    # ---- writes: queued, never awaited by a reply -------------------------------------------------

    async def put(self, entry: CacheEntry) -> None:
        self.put_nowait(entry)

    def put_nowait(self, entry: CacheEntry) -> None:
        value = self.codec.encode(entry)
        if len(value) > self.max_entry_bytes:
            self.counters.too_big += 1
            return
        remaining = entry.expires_at + self.stale_if_error - self._clock()
        ex = int(min(self.cfg.ttl, max(1.0, remaining)))
        self._enqueue(("set", entry.key, value, ex, entry.hits, entry.last_hit_at))

    async def touch(self, key: str, now: float) -> None:
        self._enqueue(("touch", key, now))

    async def touch_many(self, hits: Sequence[tuple[str, float]]) -> None:
        for key, now in hits:
            self._enqueue(("touch", key, now))

    async def delete(self, key: str) -> bool:
        """True if Redis held the key. Ordered after this process's queued writes; False when Redis
        is unavailable (the entry then simply expires)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self._enqueue(("del", key, fut)):
            return False
        try:
            async with asyncio.timeout(self.write_timeout * 2):
                return await fut
        except TimeoutError:
            return False

    async def settle(self) -> None:
        """Wait until every queued write has been sent (or dropped)."""
        await self._queue.join()

    def _enqueue(self, op: tuple[Any, ...]) -> bool:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            self._queue.put_nowait(op)
        except asyncio.QueueFull:
            self._drop([op])
            return False
        self._stats = None
        return True

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:  # never let the writer die; the batch is counted as dropped
                log.exception("redis writer failed")
                self._drop(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[tuple[Any, ...]]) -> None:
        if not self.breaker.allow():
            self._drop(batch)
            return
        pipe = self.client.pipeline(transaction=False)
        answers: list[tuple[int, asyncio.Future[bool] | None]] = []  # (index of the DEL result, its future)
        n = 0
        current, publishing = self.compression.current, False
        last_published = self._dict_published.get(current)
        if current and any(op[0] == "set" for op in batch) and (
                last_published is None or self._mono() - last_published > 3600):
            # every process must be able to read what we write: the set outlives the entries using it
            body_req = self.compression.packed(current)
            if body_req is not None:
                pipe.set(self.dict_key(current), body_req, ex=int(self.cfg.ttl) + 86400)
                n += 1
                publishing = True
        for op in batch:
            if op[0] == "set":
                _, key, value, ex, hits, last = op
                pipe.set(self.entry_key(key), value, ex=ex)
                pipe.delete(self.hits_key(key))
                n += 2
                if hits or last:
                    pipe.hset(self.hits_key(key), mapping={"hits": hits, "last": last})
                    pipe.expire(self.hits_key(key), ex)
                    n += 2
            elif op[0] == "touch":
                _, key, now = op
                await self._touch(keys=[self.entry_key(key), self.hits_key(key)], args=[now], client=pipe)
                n += 1
            else:
                _, key, fut = op
                pipe.delete(self.entry_key(key))
                pipe.delete(self.hits_key(key))
                answers.append((n, fut))
                n += 2
        try:
            async with asyncio.timeout(self.write_timeout):
                results = await pipe.execute()
        except Exception as e:
            self._failed(e)
            self._drop(batch)
            return
        self.breaker.success()
        if publishing:
            self._dict_published[current] = self._mono()
        self.counters.writes += sum(1 for op in batch if op[0] == "set")
        for i, fut in answers:
            if fut is not None and not fut.done():
                fut.set_result(bool(results[i]))

    def _drop(self, batch: list[tuple[Any, ...]]) -> None:
        for op in batch:
            if op[0] == "set":
                self.counters.dropped_writes += 1
            elif op[0] == "del" and op[2] is not None and not op[2].done():
                op[2].set_result(False)

    def _failed(self, e: BaseException) -> None:
        self.counters.errors += 1
        self.breaker.failure(e if not isinstance(e, TimeoutError) else f"no answer within {self.timeout:g}s")

    # ---- stats and lifecycle ---------------------------------------------------------------------

    async def stats(self) -> TierStats:
        """Entries and bytes under the prefix, by a bounded SCAN at most every few seconds (cached;
        this process's own writes invalidate it). The last figures while Redis is unavailable."""
        now = self._mono()
        if self._stats is not None and (now - self._stats[0] < _STATS_EVERY_S or not self.breaker.allow()):
            return self._stats[1]
        if self._stats is None and not self.breaker.allow():
            return TierStats(self.name, 0, 0, 0)
        entries = stored = raw = 0
        try:
            async with asyncio.timeout(max(2.0, self.write_timeout)):
                pattern = glob_escape(self.prefix) + "e:*"
                async for keys in scan_keys(self.client, pattern):
                    pipe = self.client.pipeline(transaction=False)
                    for k in keys:
                        pipe.strlen(k)
                        pipe.getrange(k, 0, HEADER_SIZE - 1)
                    res = await pipe.execute()
                    for size, head in zip(res[::2], res[1::2], strict=True):
                        if not size:
                            continue  # expired between SCAN and STRLEN
                        entries += 1
                        stored += int(size)
                        try:
                            raw += header(head)[3]
                        except CodecError:
                            pass
                    if entries >= _STATS_MAX_KEYS:
                        break
        except Exception as e:
            self._failed(e)
            return self._stats[1] if self._stats is not None else TierStats(self.name, 0, 0, 0)
        self.breaker.success()
        st = TierStats(self.name, entries, stored, raw)
        self._stats = (now, st)
        return st

    async def close(self) -> None:
        """Send what is queued (bounded by the write timeout), stop the writer, close the client."""
        if self._writer is not None:
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self._queue.join()
            except TimeoutError:
                log.warning("redis: %d queued writes not sent at shutdown", self._queue.qsize())
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        try:
            await self.client.aclose()
        except Exception as e:  # closing a dead connection must not fail shutdown
            log.debug("redis close: %s", e)
