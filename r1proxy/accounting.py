"""Accounting: what each finished request leaves behind, done in batches after the reply.

``RequestRecord`` collects one request's facts as it goes (the gateway and the reply fill it in).

Metrics, per-key usage (limits and daily budgets, persisted so budgets survive a restart), the
request-log row, the one access line on stderr and the hit counts in slower cache tiers. Batches
run ``DELAY_S`` after the first request or at ``BATCH`` requests: off the hot path, one write for
many requests under load. Limits and ``/stats`` flush first so they judge current numbers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cache import TieredCache
from .clock import Clock
from .config import Config
from .costing import Costing
from .logsetup import log_requests
from .metrics import Metrics
from .ratelimit import KeyLimiter
from .reqlog import RequestLog
from .route import FailedAttempt
from .rules import NONE, served_from_cache, utc_day
from .usage import NO_USAGE, Usage

if TYPE_CHECKING:
    from .flight import Flight

log = logging.getLogger("r1proxy")

DELAY_S = 0.05
BATCH = 32


@dataclass(slots=True)
class RequestRecord:
    """One request's facts, filled in as it goes: the request log row and metrics come from it."""

    request_id: str
    t0: float
    key_name: str = ""
    alias: str = ""
    upstream_model: str = ""
    stream: bool = False
    cache: str = NONE
    tier: str = ""
    status: int = 200
    error_type: str = ""
    ttfb: float | None = None
    route: str = ""
    cache_key: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    usage: Usage = NO_USAGE
    generation_id: str = ""
    cost_saved: float = 0.0
    admitted: bool = False
    latency: float = 0.0
    touched: str = ""  # the cache entry this request hit, for the batched hit count
    ts: float = 0.0  # wall-clock start, for the request log
    prompt: str | None = None  # the last user message, only with server.log_prompts
    provider: str = ""  # who served the answer upstream (OpenRouter's `provider`)
    session_id: str = ""  # the session_id sent upstream (OpenRouter sticky routing)
    leading: Flight | None = None  # the upstream call this request started (its money is this request's)
    failed_attempts: list[FailedAttempt] = field(default_factory=list)  # upstream calls this request made
    semantic_source: str | None = None  # a semantic hit: the entry whose answer was served
    semantic_similarity: float | None = None


class Accounting:
    def __init__(self, config: Config, metrics: Metrics, limiter: KeyLimiter, reqlog: RequestLog | None,
                 cache: TieredCache, keep: Callable[[asyncio.Task[Any]], None], clock: Clock,
                 costing: Costing | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.limiter = limiter
        self.reqlog = reqlog
        self.cache = cache
        self.keep = keep  # holds background work until it ends (waited for at shutdown)
        self.usage: dict[tuple[str, str], list[float]] = {}  # (key name, UTC day) -> [requests, tokens, usd]
        self.clock = clock
        self.costing = costing or Costing(config)  # prices and the free quota (costing.py)
        self._pending: list[RequestRecord] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._pruned_at = 0.0
        # with [cache.redis]: (key name, UTC day, tokens, usd) also counted across processes (sharedlimits)
        self.on_usage: Callable[[str, str, int, float], None] | None = None

    async def start(self) -> None:
        """Load today's per-key usage (daily budgets survive a restart); prune old request rows."""
        if self.reqlog is not None:
            day = utc_day(self.clock.now())
            for name, (reqs, tokens, usd) in (await self.reqlog.load_usage(day)).items():
                self.usage[(name, day)] = [reqs, tokens, usd]
            if self.config.server.log_retention:
                self._pruned_at = self.clock.now()
                self.reqlog.prune(self._pruned_at - self.config.server.log_retention)

    def finished(self, ctx: RequestRecord) -> None:
        """Queue a request's accounting; it runs right after the reply is on its way (off the hot path)."""
        if not ctx.latency:
            ctx.latency = self.clock.monotonic() - ctx.t0
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
        hits = [(ctx.touched, self.clock.now()) for ctx in pending if ctx.touched]
        if hits:
            self.keep(asyncio.get_running_loop().create_task(self.cache.touch_slow(hits)))
        now = self.clock.now()
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

    def _account(self, ctx: RequestRecord, day: str,
                 usage_delta: dict[str, list[float]]) -> dict[str, Any] | None:
        latency = ctx.latency
        usage = ctx.usage
        prompt, completion, reasoning = usage.prompt, usage.completion, usage.reasoning
        from_cache = served_from_cache(ctx.cache)
        # spent $0 when served from cache (a coalesced follower's answer was paid by its leader)
        upstream, model = self.costing.where(ctx.route, ctx.alias, ctx.upstream_model)
        money = self.costing.figures(ctx.cache, usage, upstream, model)
        cost, saved = money.spent, money.saved
        m = self.metrics
        m.request_done(ctx.alias or "-", ctx.status, ctx.cache, latency, ctx.ttfb, ctx.stream)
        if prompt or completion:
            m.tokens(ctx.alias or "-", prompt, completion, reasoning, cached=from_cache)
        if not from_cache and (usage.cached or usage.cache_write or money.prefix_saved):
            m.prefix_cache(ctx.alias or "-", usage.cached, usage.cache_write, money.prefix_saved)
            alias = ctx.alias or "-"  # an estimate is replaced by OpenRouter's figure later (generations.py)
            self.costing.reconcile(money, upstream, ctx.generation_id, ctx.ts,
                                   lambda diff: m.prefix_cache(alias, 0, 0, diff))
        if saved:
            m.cost_saved(saved)
        if cost:
            m.cost_spent(cost)
        for attempt in ctx.failed_attempts:  # the flight's own record: one per failed upstream call
            m.upstream_error(attempt.route, attempt.kind)
        tokens = 0 if from_cache else prompt + completion
        if ctx.key_name:
            for totals in (self.usage.setdefault((ctx.key_name, day), [0, 0, 0.0]),
                           usage_delta.setdefault(ctx.key_name, [0, 0, 0.0])):
                totals[0] += 1
                totals[1] += tokens
                totals[2] += cost
            self.limiter.add_day_usage(ctx.key_name, day, 1, tokens, cost)  # shared between workers
            if tokens:
                self.limiter.add_tokens(ctx.key_name, tokens)
            if self.on_usage is not None and (tokens or cost):
                self.on_usage(ctx.key_name, day, int(tokens), float(cost))
        if not self.config.server.log_requests:
            return None
        row = {"ts": ctx.ts, "request_id": ctx.request_id, "key_name": ctx.key_name, "alias": ctx.alias,
               "upstream_model": ctx.upstream_model, "route": ctx.route, "stream": int(ctx.stream),
               "cache": ctx.cache, "tier": ctx.tier, "status": ctx.status, "error_type": ctx.error_type,
               "latency_ms": round(latency * 1000, 3),
               "ttfb_ms": None if ctx.ttfb is None else round(ctx.ttfb * 1000, 3),
               "prompt_tokens": prompt, "completion_tokens": completion, "reasoning_tokens": reasoning,
               "cost": cost, "cost_saved": saved, "cost_source": money.source or None,
               "cached_tokens": usage.cached, "cache_write_tokens": usage.cache_write,
               "prefix_saved": money.prefix_saved, "failed_attempts": len(ctx.failed_attempts),
               "provider": ctx.provider or None, "session_id": ctx.session_id or None,
               "request_bytes": ctx.request_bytes, "response_bytes": ctx.response_bytes,
               "generation_id": ctx.generation_id, "cache_key": ctx.cache_key, "prompt": ctx.prompt,
               "semantic_source": ctx.semantic_source, "semantic_similarity": ctx.semantic_similarity}
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
