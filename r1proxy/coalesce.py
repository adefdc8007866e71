"""Coalescing across processes and machines through Redis: one upstream call per request identity.

A flight about to call upstream first tries to lead globally: ``SET <prefix>lock:{key} <token> NX PX
<lock_ttl>`` (with the old stream of that key deleted in the same Lua step). The leader publishes its
flight to a Redis Stream ``<prefix>fl:{key}``: a start record (headers, route), one record per frame,
then a terminal record (the assembled answer, or the error), after which the stream expires in a
minute and the lock is released (compare-and-delete). Publishing is lazy: a process that loses the
claim marks ``<prefix>want:{key}`` in the same Lua step, and the leader (which looks for the mark
every 100 ms, and once more atomically with letting go of the lock) publishes only when someone
follows: the common case, nobody else asking the same thing, costs a claim, those looks and no
stream. The lock's TTL is refreshed while the flight runs. A follower reads ``XREAD BLOCK`` from
``0`` (frames already sent are replayed, then live ones) into its own local ``Flight``, so its
clients are served exactly as local joiners are.

A leader that dies leaves a lock that expires: a follower that has sent nothing yet then tries to
lead itself; one that has sent frames ends its clients' streams with an error (two upstream streams
cannot be spliced). Any Redis trouble makes the flight a leader of one (fail open, counted by the
shared breaker): coalescing is an optimisation, never a dependency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .cache.breaker import Breaker
from .config import RedisConfig
from .errors import ProxyError
from .flight import Flight

log = logging.getLogger("r1proxy.redis")

# KEYS: lock, stream, want. Lead (and start from an empty stream), or say that someone follows.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 0
"""
# KEYS: lock, want. A leader nobody followed lets go, unless a follower arrived: then it must publish.
_LET_GO = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
STREAM_TTL_S = 60
BLOCK_S = 1.0
WANT_POLL_S = 0.1  # how often a leader nobody follows yet looks for a follower


@dataclass(slots=True)
class CoalesceCounters:
    led: int = 0  # flights this process called upstream for, published to others
    followed: int = 0  # flights answered by another process's upstream call
    leader_lost: int = 0  # followed leaders that died before finishing
    fallbacks: int = 0  # Redis trouble: called upstream without coordinating


def _dumps(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()


class Coalescer:
    """``flight.Shared`` on Redis. ``client``: the short-timeout client; ``blocking``: one whose socket
    timeout covers an ``XREAD BLOCK``; ``breaker``: the Redis breaker shared with the cache tier."""

    def __init__(self, client: Any, blocking: Any, cfg: RedisConfig, breaker: Breaker, *,
                 block_s: float = BLOCK_S) -> None:
        self.client = client
        self.blocking = blocking
        self.cfg = cfg
        self.breaker = breaker
        self.block_s = block_s
        self.lock_ms = int(cfg.lock_ttl * 1000)
        self.max_bytes = int(cfg.max_entry_mb * 1024 * 1024)
        self.counters = CoalesceCounters()
        self._claim = client.register_script(_CLAIM)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._let_go = client.register_script(_LET_GO)
        self._tasks: set[asyncio.Task[None]] = set()

    def lock_key(self, key: str) -> str:
        return f"{self.cfg.prefix}lock:{{{key}}}"

    def stream_key(self, key: str) -> str:
        return f"{self.cfg.prefix}fl:{{{key}}}"

    def want_key(self, key: str) -> str:
        return f"{self.cfg.prefix}want:{{{key}}}"

    async def follow(self, flight: Flight) -> bool:
        for _ in range(3):  # lead, or follow; a leader that died before sending anything lets us try again
            token = secrets.token_hex(8)
            try:
                if not self.breaker.allow():
                    raise ConnectionError("breaker open")
                async with asyncio.timeout(self.cfg.timeout):
                    led = await self._claim(keys=[self.lock_key(flight.key), self.stream_key(flight.key),
                                                  self.want_key(flight.key)], args=[token, self.lock_ms])
                self.breaker.success()
            except Exception as e:
                return self._alone(e)
            if led:
                self.counters.led += 1
                task = asyncio.get_running_loop().create_task(self._publish(flight, token))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return False
            flight.remote = True  # from the first frame on, this process's clients are served by another's call
            outcome = await self._read(flight)
            if outcome == "done":
                self.counters.followed += 1
                flight.remote = True
                return True
            sent_something = flight.started or bool(flight.items)
            flight.remote = sent_something
            if outcome == "trouble" and not sent_something:
                return self._alone(None)
            self.counters.leader_lost += outcome == "lost"
            if sent_something:
                flight.fail(ProxyError(502, "The r1proxy process answering this request (for several clients) "
                                            "stopped before the end; retry the request", type="upstream_error",
                                       code="coalesced_leader_lost"))
                return True
        return self._alone(None)

    def _alone(self, e: BaseException | None) -> bool:
        if e is not None and not (isinstance(e, ConnectionError) and str(e) == "breaker open"):
            self.breaker.failure(e if not isinstance(e, TimeoutError) else "no answer in time (coalescing)")
        self.counters.fallbacks += 1
        return False

    # ---- the leader's side -----------------------------------------------------------------------

    async def _publish(self, flight: Flight, token: str) -> None:
        skey, lkey = self.stream_key(flight.key), self.lock_key(flight.key)
        sent = 0
        started = False
        size = 0
        refreshed = time.monotonic()
        try:
            refreshed = await self._until_followed(flight, token, refreshed)
            if refreshed < 0:
                return  # nobody followed: the lock is released, nothing was published
            while True:
                finished = flight.finished  # before reading items: nothing is appended after finished
                pipe = self.client.pipeline(transaction=False)
                queued = 0
                if flight.started and not started:
                    pipe.xadd(skey, {"t": b"s", "v": _dumps({"headers": flight.headers,
                                                              "route": flight.outcome.route})})
                    started, queued = True, queued + 1
                while sent < len(flight.items):
                    item = flight.items[sent]
                    sent += 1
                    value = item if isinstance(item, bytes) else _dumps(item)
                    size += len(value)
                    pipe.xadd(skey, {"t": b"k" if isinstance(item, bytes) else b"c", "v": value})
                    queued += 1
                abandon = size > self.max_bytes
                if finished or abandon:
                    pipe.xadd(skey, self._terminal(flight) if not abandon else {"t": b"a", "v": b""})
                    pipe.expire(skey, STREAM_TTL_S)
                    await self._release(keys=[lkey], args=[token], client=pipe)
                    queued += 3
                elif time.monotonic() - refreshed > self.cfg.lock_ttl / 3:
                    await self._refresh(keys=[lkey], args=[token, self.lock_ms], client=pipe)
                    refreshed, queued = time.monotonic(), queued + 1
                if queued:
                    async with asyncio.timeout(max(1.0, 10 * self.cfg.timeout)):
                        await pipe.execute()
                    self.breaker.success()
                if finished or abandon:
                    return
                if flight.finished or sent < len(flight.items) or (flight.started and not started):
                    continue  # it moved on while we were writing: no await between this check and the wait
                await flight.wait(self.cfg.lock_ttl / 3)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # followers see the lock expire and fend for themselves
            self.breaker.failure(e)
            log.debug("coalescing: publishing %s stopped: %s", flight.key, e)

    async def _until_followed(self, flight: Flight, token: str, refreshed: float) -> float:
        """Keep the lock until another process follows (returns when the last refresh was) or the flight
        ends with nobody following (releases the lock; returns -1)."""
        lkey, wkey = self.lock_key(flight.key), self.want_key(flight.key)
        budget = max(1.0, 10 * self.cfg.timeout)
        while True:
            if flight.finished:
                async with asyncio.timeout(budget):
                    done = await self._let_go(keys=[lkey, wkey], args=[token])
                self.breaker.success()
                return -1.0 if done else refreshed
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(wkey)
            if time.monotonic() - refreshed > self.cfg.lock_ttl / 3:
                await self._refresh(keys=[lkey], args=[token, self.lock_ms], client=pipe)
                refreshed = time.monotonic()
            polled = time.monotonic()
            async with asyncio.timeout(budget):
                wanted = (await pipe.execute())[0]
            self.breaker.success()
            if wanted:
                return refreshed
            while not flight.finished:  # frames wake us often: look again only every WANT_POLL_S
                left = WANT_POLL_S - (time.monotonic() - polled)
                if left <= 0:
                    break
                await flight.wait(left)

    @staticmethod
    def _terminal(flight: Flight) -> dict[str, bytes]:
        if flight.result is not None and flight.error is None:
            return {"t": b"d", "v": _dumps({"result": flight.result, "cacheable": flight.cacheable,
                                            "headers": flight.headers, "route": flight.outcome.route})}
        err = flight.error or ProxyError(502, "Upstream gave no answer")
        return {"t": b"x", "v": _dumps({"status": err.status, "error": err.body()["error"],
                                        "in_stream": flight.error_in_stream})}

    # ---- a follower's side -----------------------------------------------------------------------

    async def _read(self, flight: Flight) -> str:
        """Fill ``flight`` from the leader's stream: "done", "lost" (leader gone) or "trouble" (Redis)."""
        skey, lkey = self.stream_key(flight.key), self.lock_key(flight.key)
        last: Any = "0-0"
        while True:
            if not self.breaker.allow():
                return "trouble"
            try:
                async with asyncio.timeout(self.block_s + 2 * self.cfg.timeout + 0.5):
                    resp = await self.blocking.xread({skey: last}, count=512, block=int(self.block_s * 1000))
                if not resp:  # quiet for a while: is the leader still there?
                    async with asyncio.timeout(self.cfg.timeout):
                        alive = await self.client.exists(lkey)
                        resp = None if alive else await self.client.xread({skey: last}, count=512)
                    if alive:
                        self.breaker.success()
                        continue
                self.breaker.success()
            except Exception as e:
                self.breaker.failure(e if not isinstance(e, TimeoutError) else "no answer in time (coalescing)")
                return "trouble"
            if not resp:
                return "lost"
            for _, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id
                    end = self._apply(flight, fields.get(b"t", b""), fields.get(b"v", b""))
                    if end:
                        flight.changed()
                        return end
            flight.changed()

    @staticmethod
    def _apply(flight: Flight, kind: bytes, value: bytes) -> str:
        if kind == b"c":
            chunk = json.loads(value)
            flight.items.append(chunk)
            flight.started = True
            if not ("error" in chunk and chunk.get("choices") == []):  # the error event a failed leader adds
                flight.data_count += 1
        elif kind == b"k":
            flight.items.append(bytes(value))
        elif kind == b"s":
            doc = json.loads(value)
            flight.headers, flight.outcome.route, flight.started = dict(doc["headers"]), doc["route"], True
        elif kind == b"d":
            doc = json.loads(value)
            flight.result, flight.cacheable = doc["result"], bool(doc["cacheable"])
            flight.headers = flight.headers or dict(doc["headers"])
            flight.outcome.route = flight.outcome.route or doc["route"]
            return "done"
        elif kind == b"x":
            doc = json.loads(value)
            err = doc["error"]
            if doc["status"] == 499:  # the leader's clients all left and it gave up: not our answer
                return "lost"
            flight.error = ProxyError(int(doc["status"]), str(err.get("message", "upstream error")),
                                      type=err.get("type"), code=err.get("code"), param=err.get("param"),
                                      metadata=err.get("metadata"))
            flight.error_in_stream = bool(doc["in_stream"])
            return "done"
        elif kind == b"a":  # the answer outgrew what is worth sharing: the leader let go of the lock
            return "lost"
        return ""

    def report(self) -> dict[str, int]:
        c = self.counters
        return {"led": c.led, "followed": c.followed, "leader_lost": c.leader_lost, "fallbacks": c.fallbacks}

    async def close(self) -> None:
        """Let publishers finish their last records (bounded); the clients belong to the caller."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(1.0, 10 * self.cfg.timeout))
            for t in self._tasks:
                t.cancel()
