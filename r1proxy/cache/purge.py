"""Purging the shared (Redis) tier, and telling every running r1proxy to drop its copies.

``purge_redis`` deletes matching entries under the prefix with ``SCAN`` + ``UNLINK`` (never ``KEYS``,
which blocks Redis on a large keyspace); a filter by model or age reads only each value's header and
metadata (``GETRANGE``), never the blobs. ``broadcast`` publishes the filter on ``<prefix>purge``;
``PurgeListener`` (one per process) receives it and hands it to the cache, which drops matching
entries from memory, and from its SQLite tier too when the purge was team-wide (``shared``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from r1proxy.cache.codec import HEADER_SIZE, CodecError, header
from r1proxy.cache.redisnames import entry_key, hits_key

log = logging.getLogger("r1proxy.redis")


@dataclass(frozen=True, slots=True)
class PurgeFilter:
    model: str | None = None
    before: float | None = None  # created_at earlier than this (Unix seconds)
    all: bool = False
    shared: bool = False  # team-wide: receivers purge their SQLite tier too, not only memory
    key: str | None = None  # exactly this entry (`cache purge --key`); the other filters are then unused

    def matches(self, model: str, created_at: float, key: str = "") -> bool:
        if self.key is not None:
            return key == self.key
        if self.all and self.model is None and self.before is None:
            return True
        return ((self.model is None or model == self.model)
                and (self.before is None or created_at < self.before))

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> PurgeFilter:
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError("not a purge filter")
        key = d.get("key")
        return cls(model=d.get("model"), before=d.get("before"), all=bool(d.get("all")),
                   shared=bool(d.get("shared")), key=None if key is None else str(key))


async def scan_keys(client: Any, pattern: str) -> AsyncIterator[list[bytes]]:
    """Batches of Redis keys matching ``pattern`` (SCAN, never KEYS)."""
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=1000)
        if keys:
            yield keys
        if not cursor:
            return


def glob_escape(s: str) -> str:
    """``s`` as a literal inside a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


async def purge_redis(client: Any, prefix: str, f: PurgeFilter) -> int:
    """Delete matching entries (and their hit counts) under ``prefix``; returns how many entries."""
    entry_prefix, hits_prefix = (prefix + "e:").encode(), (prefix + "h:").encode()
    if f.key is not None:  # one entry: no scan
        return 1 if await client.unlink(entry_key(prefix, f.key), hits_key(prefix, f.key)) else 0
    n = 0
    async for keys in scan_keys(client, glob_escape(prefix) + "e:*"):
        victims = keys
        if f.model is not None or f.before is not None:  # read each entry's metadata, never its blobs
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.getrange(k, 0, HEADER_SIZE - 1)
            heads = await pipe.execute()
            pipe = client.pipeline(transaction=False)
            sized = []
            for k, head in zip(keys, heads, strict=True):
                try:
                    meta_len = header(head)[1]
                except CodecError:
                    continue
                pipe.getrange(k, HEADER_SIZE, HEADER_SIZE + meta_len - 1)
                sized.append(k)
            metas = await pipe.execute()
            victims = []
            for k, meta in zip(sized, metas, strict=True):
                try:
                    m = json.loads(meta)
                    if f.matches(str(m.get("model") or ""), float(m.get("created_at") or 0.0),
                                 k[len(entry_prefix):].decode().strip("{}")):
                        victims.append(k)
                except (ValueError, TypeError, AttributeError):
                    continue
        if victims:
            pipe = client.pipeline(transaction=False)
            for k in victims:
                pipe.unlink(k, hits_prefix + k[len(entry_prefix):])
            await pipe.execute()
            n += len(victims)
    return n


async def broadcast(client: Any, prefix: str, f: PurgeFilter) -> int:
    """Tell every running r1proxy on this Redis; returns how many were listening."""
    return int(await client.publish(prefix + "purge", f.dumps()))


class PurgeListener:
    """Receives purge broadcasts for the life of the process; reconnects (bounded back-off) after errors."""

    def __init__(self, client: Any, prefix: str, on_purge: Callable[[PurgeFilter], Any]) -> None:
        self.client = client
        self.channel = prefix + "purge"
        self.on_purge = on_purge
        self.received = 0
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = 0.5
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                delay = 0.5
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        f = PurgeFilter.loads(msg["data"])
                    except (ValueError, TypeError) as e:
                        log.warning("redis: ignoring a malformed purge broadcast (%s)", e)
                        continue
                    self.received += 1
                    result = self.on_purge(f)
                    if asyncio.iscoroutine(result):
                        await result
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: listen again later; purges sent meanwhile are missed
                self.ready.clear()
                log.debug("redis: purge listener: %s", e)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
