"""Accounting: what each finished request leaves behind, done in batches after the reply.

Metrics, per-key usage (limits and daily budgets, persisted so budgets survive a restart), the
request-log row, the one access line on stderr and the hit counts in slower cache tiers. Batches
run ``DELAY_S`` after the first request or at ``BATCH`` requests: off the hot path, one write for
many requests under load. Limits and ``/stats`` flush first so they judge current numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .cache import TieredCache
from .config import Config
from .logsetup import log_requests
from .metrics import Metrics
from .ratelimit import KeyLimiter
from .reqlog import RequestLog, utc_day
from .request import Ctx

log = logging.getLogger("r1proxy")

DELAY_S = 0.05
BATCH = 32


class Accounting:
    def __init__(self, config: Config, metrics: Metrics, limiter: KeyLimiter, reqlog: RequestLog | None,
                 cache: TieredCache | None, tasks: set[asyncio.Task[Any]]) -> None:
        self.config = config
        self.metrics = metrics
        self.limiter = limiter
        self.reqlog = reqlog
        self.cache = cache
        self.tasks = tasks  # the gateway's: background work it waits for at shutdown
        self.usage: dict[tuple[str, str], list[float]] = {}  # (key name, UTC day) -> [requests, tokens, usd]
        self.clock = time.time
        self._pending: list[Ctx] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._pruned_at = 0.0

    async def start(self) -> None:
        """Load today's per-key usage (daily budgets survive a restart); prune old request rows."""
        if self.reqlog is not None:
            day = utc_day(self.clock())
            for name, (reqs, tokens, usd) in (await self.reqlog.load_usage(day)).items():
                self.usage[(name, day)] = [reqs, tokens, usd]
            if self.config.server.log_retention:
                self._pruned_at = self.clock()
                self.reqlog.prune(self._pruned_at - self.config.server.log_retention)

    def finished(self, ctx: Ctx) -> None:
        """Queue a request's accounting; it runs right after the reply is on its way (off the hot path)."""
        ctx.latency = time.monotonic() - ctx.t0
        if not self._pending:
            self._flush_handle = asyncio.get_running_loop().call_later(DELAY_S, self.flush)
        self._pending.append(ctx)
        if len(self._pending) == BATCH:  # bounded batches: no long pause under load
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Account for every finished request: metrics, key usage, request-log rows, log lines."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        hits = [(ctx.touched, self.clock()) for ctx in pending if ctx.touched]
        if hits and self.cache is not None:
            task = asyncio.get_running_loop().create_task(self.cache.touch_slow(hits))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        now = self.clock()
        day = utc_day(now)
        if self.reqlog is not None and self.config.server.log_retention and now - self._pruned_at > 3600:
            self._pruned_at = now  # hourly: the request log keeps log_retention worth of rows
            self.reqlog.prune(now - self.config.server.log_retention)
        delta: dict[str, list[float]] = {}
        rows = [row for ctx in pending if (row := self._account(ctx, day, delta)) is not None]
        if self.reqlog is not None:
            for name, (reqs, tokens, usd) in delta.items():  # budgets survive a restart
                self.reqlog.add_usage(name, day, int(reqs), int(tokens), usd)
        if rows and self.reqlog is not None:
            self.reqlog.record_many(rows)
        if rows:
            log_requests(log, [_access(row) for row in rows])

    def _account(self, ctx: Ctx, day: str, usage_delta: dict[str, list[float]]) -> dict[str, Any] | None:
        latency = ctx.latency
        usage = ctx.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
        served_from_cache = ctx.cache in ("HIT", "STALE")
        cost = 0.0 if served_from_cache else float(usage.get("cost") or 0.0)
        m = self.metrics
        m.request_done(ctx.alias or "-", ctx.status, ctx.cache, latency, ctx.ttfb, ctx.stream)
        if prompt or completion:
            m.tokens(ctx.alias or "-", prompt, completion, reasoning, cached=served_from_cache)
        if served_from_cache and ctx.cost_saved:
            m.cost_saved(ctx.cost_saved)
        if cost:
            m.cost_spent(cost)
        if ctx.status >= 500 and ctx.error_type not in ("cancelled",):
            m.upstream_error(ctx.route or ctx.alias or "-", ctx.error_type or str(ctx.status))
        tokens = 0 if served_from_cache else prompt + completion
        if ctx.key_name:
            for totals in (self.usage.setdefault((ctx.key_name, day), [0, 0, 0.0]),
                           usage_delta.setdefault(ctx.key_name, [0, 0, 0.0])):
                totals[0] += 1
                totals[1] += tokens
                totals[2] += cost
            if tokens:
                self.limiter.add_tokens(ctx.key_name, tokens)
        if not self.config.server.log_requests:
            return None
        row = {"ts": ctx.ts, "request_id": ctx.request_id, "key_name": ctx.key_name, "alias": ctx.alias,
               "upstream_model": ctx.upstream_model, "route": ctx.route, "stream": int(ctx.stream),
               "cache": ctx.cache, "tier": ctx.tier, "status": ctx.status, "error_type": ctx.error_type,
               "latency_ms": round(latency * 1000, 3),
               "ttfb_ms": None if ctx.ttfb is None else round(ctx.ttfb * 1000, 3),
               "prompt_tokens": prompt, "completion_tokens": completion, "reasoning_tokens": reasoning,
               "cost": cost, "cost_saved": ctx.cost_saved if served_from_cache else 0.0,
               "request_bytes": ctx.request_bytes, "response_bytes": ctx.response_bytes,
               "generation_id": ctx.generation_id, "cache_key": ctx.cache_key, "prompt": ctx.prompt}
        return row


def _access(row: dict[str, Any]) -> dict[str, Any]:
    """The short access-log line for a request-log row (the database row has everything)."""
    out = {"request_id": row["request_id"], "key_name": row["key_name"], "model": row["alias"], "status": row["status"],
           "cache": row["cache"], "tier": row["tier"] or None, "ms": row["latency_ms"], "ttfb_ms": row["ttfb_ms"],
           "tokens": f"{row['prompt_tokens']}/{row['completion_tokens']}", "bytes": row["response_bytes"]}
    if row["route"]:
        out["route"] = row["route"]
    if row["error_type"]:
        out["error"] = row["error_type"]
    return out
