"""Accounting: what each finished request leaves behind, done in batches after the reply.

``RequestRecord`` collects one request's facts as it goes (the gateway and the reply fill it in).

Metrics, per-key usage (limits and daily budgets, persisted so budgets survive a restart), the
request-log row, the one access line on stderr and the hit counts in slower cache tiers. Batches
run ``DELAY_S`` after the first request or at ``BATCH`` requests: off the hot path, one write for
many requests under load. The request-log rows and key usage of those batches go to the database
writer together, ``LOG_DELAY_S`` after the first (each hand-off is a commit on the writer thread,
and the writer's cost per row falls with the batch's size). Limits, ``/stats`` and a shutdown
``flush`` first: they judge current numbers, and hand every row over at once.
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
from .costing import Costing, Money
from .logsetup import Access, log_requests
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
BATCH = 8  # 32 paused the loop ~0.26 ms every 32nd hit at one connection (its p99); 2 costs more per hit
LOG_DELAY_S = 0.25  # request-log rows reach the writer at most this long after their accounting batch


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
        self._log_rows: list[tuple[Any, ...]] = []  # accounted, not yet handed to the writer
        self._log_usage: dict[tuple[str, str], list[float]] = {}  # (key name, UTC day) -> the same
        self._log_handle: asyncio.TimerHandle | None = None
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
            self._flush_handle = asyncio.get_running_loop().call_later(DELAY_S, self._settle)
        self._pending.append(ctx)
        if len(self._pending) == BATCH:  # bounded batches: no long pause under load
            asyncio.get_running_loop().call_soon(self._settle)

    def flush(self) -> None:
        """Account for every finished request now and hand the request log to the writer at once."""
        self._settle(write=True)

    def write_log(self) -> None:
        """Hand the accounted request-log rows and key usage to the database writer (one batch)."""
        if self._log_handle is not None:
            self._log_handle.cancel()
            self._log_handle = None
        rows, self._log_rows = self._log_rows, []
        usage, self._log_usage = self._log_usage, {}
        if self.reqlog is None:
            return
        for (name, day), (reqs, tokens, usd) in usage.items():  # budgets survive a restart
            self.reqlog.add_usage(name, day, int(reqs), int(tokens), usd)
        if rows:
            self.reqlog.record_values(rows)

    def _settle(self, write: bool = False) -> None:
        """Account for every finished request: metrics, key usage, request-log rows (held for
        ``write_log``, or handed over now with ``write``), access lines."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, []
        if not pending:
            if write:
                self.write_log()
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
        money: dict[tuple[Any, ...], tuple[str, Money]] = {}
        logged = [out for ctx in pending if (out := self._account(ctx, day, delta, money)) is not None]
        for name, (reqs, tokens, usd) in delta.items():  # today's usage per key, for limits and budgets
            totals = self.usage.setdefault((name, day), [0, 0, 0.0])
            totals[0] += reqs
            totals[1] += tokens
            totals[2] += usd
        rows = [row for row, _ in logged]
        if self.reqlog is not None and (rows or delta):
            for name, (reqs, tokens, usd) in delta.items():
                held = self._log_usage.setdefault((name, day), [0, 0, 0.0])
                held[0] += reqs
                held[1] += tokens
                held[2] += usd
            self._log_rows += rows
        if logged:
            log_requests(log, [line for _, line in logged])
        if write:
            self.write_log()
        elif self._log_handle is None and (self._log_rows or self._log_usage):
            self._log_handle = asyncio.get_running_loop().call_later(LOG_DELAY_S, self.write_log)

    def _account(self, ctx: RequestRecord, day: str, usage_delta: dict[str, list[float]],
                 money_memo: dict[tuple[Any, ...], tuple[str, Money]]) -> tuple[tuple[Any, ...], Access] | None:
        """Metrics, costing and key usage (``usage_delta``) of one finished request; its request-log row
        and access line (None with ``server.log_requests = false``). ``money_memo`` keeps a batch's
        figures per (route, alias, model, outcome, usage): the hits of one entry share one."""
        latency = ctx.latency
        usage = ctx.usage
        prompt, completion, reasoning = usage.prompt, usage.completion, usage.reasoning
        from_cache = served_from_cache(ctx.cache)
        # spent $0 when served from cache (a coalesced follower's answer was paid by its leader)
        memo_key = (ctx.route, ctx.alias, ctx.upstream_model, ctx.cache, id(usage))  # usage: alive all batch
        known = money_memo.get(memo_key)
        if known is None:
            upstream, model = self.costing.where(ctx.route, ctx.alias, ctx.upstream_model)
            known = money_memo[memo_key] = (upstream, self.costing.figures(ctx.cache, usage, upstream, model))
        upstream, money = known
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
            totals = usage_delta.get(ctx.key_name)
            if totals is None:
                totals = usage_delta[ctx.key_name] = [0, 0, 0.0]
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
        latency_ms = round(latency * 1000, 3)
        ttfb_ms = None if ctx.ttfb is None else round(ctx.ttfb * 1000, 3)
        # the request-log row in rollups.REQUEST_COLUMNS order (no mapping to build and take apart again)
        return ((ctx.ts, ctx.request_id, ctx.key_name, ctx.alias, ctx.upstream_model, ctx.route, int(ctx.stream),
                 ctx.cache, ctx.tier, ctx.status, ctx.error_type, latency_ms, ttfb_ms, prompt, completion, reasoning,
                 cost, saved, ctx.request_bytes, ctx.response_bytes, ctx.generation_id, ctx.cache_key, ctx.prompt,
                 usage.cached, usage.cache_write, money.source or None, money.prefix_saved,
                 len(ctx.failed_attempts), ctx.provider or None, ctx.session_id or None, ctx.semantic_source,
                 ctx.semantic_similarity),
                Access(ctx.request_id, ctx.key_name, ctx.alias, ctx.status, ctx.cache, ctx.tier, latency_ms, ttfb_ms,
                       prompt, completion, ctx.response_bytes, ctx.route, ctx.error_type))
