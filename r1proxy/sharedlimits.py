"""Limits shared by every r1proxy process on one Redis: per-key rpm/tpm/daily budgets and upstream pacing.

The local limits (``ratelimit.KeyLimiter``, ``pacing.UpstreamPacer``) still run first in each process;
these add the bound across processes, because an OpenRouter account's ``:free`` 20 requests a minute
and daily quota, and a key's budget, belong to the account or the key, not to one process. Each check
is one atomic Lua call on Redis time: rpm and pacing are sliding-window logs (a sorted set of grants in
the last 60 s), tpm a sliding sum of recorded usage, daily budgets a hash per key and UTC day. Usage is
recorded after the fact, off the reply path. Every key carries a TTL. Any Redis trouble leaves the local
limits alone in charge (fail open), counted by the Redis breaker.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cache.breaker import Breaker
from .config import KeyConfig, RedisConfig

log = logging.getLogger("r1proxy.redis")

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
# KEYS: rpm log, tpm log, day hash. ARGV: rpm, tpm, daily tokens, daily usd, member.
# Returns {reason, wait ms}: reason "" when admitted (and then one rpm grant is taken).
_ADMIT = _NOW + """
local rpm, tpm, dtok, dusd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if dtok > 0 or dusd > 0 then
  local d = redis.call('HMGET', KEYS[3], 'tokens', 'usd')
  if dtok > 0 and tonumber(d[1] or '0') >= dtok then return {'daily_tokens', -1} end
  if dusd > 0 and tonumber(d[2] or '0') >= dusd then return {'daily_usd', -1} end
end
if tpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  local items = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local used = 0
  for i = 1, #items, 2 do used = used + tonumber(string.match(items[i], '^(%d+)')) end
  if used >= tpm then return {'tpm', tonumber(items[2]) + 60000 - now} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
return {'', 0}
"""
# KEYS: tpm log, day hash. ARGV: tokens, usd, member, day ttl seconds.
_RECORD = _NOW + """
if tonumber(ARGV[1]) > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[2], 'usd', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
# KEYS: pacing log, exhausted flag. ARGV: rpm, member. Returns wait ms (0 = granted, -1 = quota gone).
_PACE = _NOW + """
local gone = redis.call('PTTL', KEYS[2])
if gone > 0 then return -gone end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + 60000 - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # rpm | tpm | daily_tokens | daily_usd
    retry_after: float  # seconds; -1: until the UTC day ends


class PaceRefused(Exception):
    def __init__(self, why: str, retry_after: float) -> None:
        super().__init__(why)
        self.why = why  # "rpm" (waited too long) or "daily" (the shared quota is gone)
        self.retry_after = retry_after


class SharedLimits:
    def __init__(self, client: Any, cfg: RedisConfig, breaker: Breaker, *,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.client = client
        self.cfg = cfg
        self.breaker = breaker
        self.prefix = cfg.prefix
        self._sleep = sleep
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)
        self._pace = client.register_script(_PACE)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refused = 0
        self.fallbacks = 0

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{{{name}}}"

    async def _call(self, script: Any, keys: list[str], args: list[Any], timeout: float | None = None) -> Any:
        """One bounded script call; None on any trouble (the caller falls back to its local limits)."""
        if not self.breaker.allow():
            self.fallbacks += 1
            return None
        try:
            async with asyncio.timeout(timeout or self.cfg.timeout):
                out = await script(keys=keys, args=args)
        except Exception as e:
            self.breaker.failure(e if not isinstance(e, TimeoutError) else "no answer in time (limits)")
            self.fallbacks += 1
            return None
        self.breaker.success()
        return out

    async def admit(self, key: KeyConfig, day: str) -> Refusal | None:
        """The key's shared rpm/tpm/daily verdict; None when admitted (or when Redis cannot say)."""
        if not (key.rpm or key.tpm or key.daily_tokens or key.daily_usd):
            return None
        out = await self._call(self._admit, [self._k("rpm", key.name), self._k("tpm", key.name),
                                             self._k("day", f"{key.name}:{day}")],
                               [key.rpm, key.tpm, key.daily_tokens, key.daily_usd, secrets.token_hex(6)])
        if not out or not out[0]:
            return None
        self.refused += 1
        reason = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
        return Refusal(reason, -1.0 if int(out[1]) < 0 else max(1.0, int(out[1]) / 1000))

    def record(self, key_name: str, day: str, tokens: int, usd: float) -> None:
        """Count a finished request's usage against the key everywhere (write-behind)."""
        if not key_name or not (tokens or usd):
            return
        task = asyncio.get_running_loop().create_task(self._call(
            self._record, [self._k("tpm", key_name), self._k("day", f"{key_name}:{day}")],
            [int(tokens), repr(float(usd)), secrets.token_hex(6), 2 * 86400], timeout=max(1.0, 10 * self.cfg.timeout)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def pace(self, deployment: str, rpm: int, max_wait_s: float) -> None:
        """Wait for a shared upstream grant (at most ``max_wait_s``); raises PaceRefused."""
        if rpm <= 0:
            return
        waited = 0.0
        member = secrets.token_hex(6)
        while True:
            out = await self._call(self._pace, [self._k("pace", deployment), self._k("quota", deployment)],
                                   [rpm, member])
            if out is None or int(out) == 0:
                return
            if int(out) < 0:
                raise PaceRefused("daily", -int(out) / 1000)
            wait = int(out) / 1000
            if waited + wait > max_wait_s:
                self.refused += 1
                raise PaceRefused("rpm", wait)
            await self._sleep(wait)
            waited += wait

    def quota_gone(self, deployment: str, seconds: float) -> None:
        """An upstream daily quota is exhausted: every process fails fast until it resets."""
        if seconds <= 0:
            return

        async def mark() -> None:
            if not self.breaker.allow():
                return
            try:
                async with asyncio.timeout(max(1.0, 10 * self.cfg.timeout)):
                    await self.client.set(self._k("quota", deployment), b"1", px=max(1, int(seconds * 1000)))
                self.breaker.success()
            except Exception as e:
                self.breaker.failure(e)

        task = asyncio.get_running_loop().create_task(mark())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def report(self) -> dict[str, int]:
        return {"refused": self.refused, "fallbacks": self.fallbacks}

    async def settle(self) -> None:
        """Wait for usage records on their way to Redis (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(1.0, 10 * self.cfg.timeout))
