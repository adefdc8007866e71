"""The chat pipeline: validate → route → cache lookup → join or start a flight → reply.

``Gateway`` holds the runtime state of one app (config, cache, flights in progress, policy
objects) and answers ``/chat/completions``. A hit is rendered from the stored completion in
the shape the client asked for; a miss follows a ``Flight`` live (SSE) or waits for it (JSON);
only complete, successful answers are stored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import xxhash
from aiohttp import web

from . import sse
from .auth import Auth
from .cache import CacheEntry, TieredCache
from .cache.keys import KeyMaker
from .completion import Renderer, dumps, render_json, render_sse
from .config import Config, KeyConfig, ModelConfig
from .errors import ProxyError, bad_request
from .flight import Flight, Hooks, Route
from .logsetup import log_requests
from .metrics import Metrics
from .policy import UpstreamPolicy
from .ratelimit import KeyLimiter
from .reqlog import RequestLog, utc_day
from .templates import prepare

log = logging.getLogger("r1proxy")


@dataclass(slots=True)
class CacheControl:
    lookup: bool = True
    store: bool = True
    max_age: float | None = None
    only_if_cached: bool = False
    ttl: float | None = None
    namespace: str = ""
    stale_ok: bool = True


@dataclass(slots=True)
class Ctx:
    """One request's facts, filled in as it goes: the request log row and metrics come from it."""

    request_id: str
    t0: float
    key_name: str = ""
    alias: str = ""
    upstream_model: str = ""
    stream: bool = False
    cache: str = "NONE"
    tier: str = ""
    status: int = 200
    error_type: str = ""
    ttfb: float | None = None
    route: str = ""
    cache_key: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    generation_id: str = ""
    cost_saved: float = 0.0
    admitted: bool = False
    latency: float = 0.0
    touched: str = ""  # the cache entry this request hit, for the batched hit count
    ts: float = 0.0  # wall-clock start, for the request log
    prompt: str | None = None  # the last user message, only with server.log_prompts


_DEFAULT_CC = CacheControl()  # read-only: requests with no cache controls share it


def parse_cache_control(header: str | None, body_cache: Any) -> CacheControl:
    cc = CacheControl()
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            cc.lookup, cc.stale_ok = False, False
        elif name == "no-store":
            cc.store = False
        elif name == "only-if-cached":
            cc.only_if_cached = True
        elif name in ("max-age", "s-maxage"):
            try:
                cc.max_age = max(0.0, float(value.strip().strip('"')))
                if not math.isfinite(cc.max_age):
                    raise ValueError
            except ValueError:
                raise bad_request(f"Cache-Control {name} must be a number of seconds") from None
    if body_cache is not None:
        if not isinstance(body_cache, dict):
            raise bad_request("`cache` must be an object such as {\"no-cache\": true}", "cache")
        if body_cache.get("no-cache"):
            cc.lookup, cc.stale_ok = False, False
        if body_cache.get("no-store"):
            cc.store = False
        for name, attr in (("ttl", "ttl"), ("s-maxage", "max_age")):
            if name in body_cache:
                v = body_cache[name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise bad_request(f"cache.{name} must be a number of seconds", f"cache.{name}")
                setattr(cc, attr, float(v))
        ns = body_cache.get("namespace")
        if ns is not None:
            if not isinstance(ns, str):
                raise bad_request("cache.namespace must be a string", "cache.namespace")
            cc.namespace = ns
    return cc


def validate(raw: bytes) -> dict[str, Any]:
    """The request body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object with `model` and `messages`")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise bad_request(f"Request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required and must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string `role`", f"messages[{i}]")
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise bad_request("`stream` must be true or false", "stream")
    return body


@dataclass(slots=True)
class Ident:
    """What a raw request body means (pure function of the bytes and the config): memoised so a
    repeated body skips JSON parsing and canonicalisation on the hit path."""

    model: str
    deps: list[ModelConfig | None]  # the alias's deployments ([None]: a pass-through model id)
    stream: bool
    body_cache: Any
    cache_key: str
    canonical: bytes = b""
    body: dict[str, Any] | None = None

    def memo(self) -> Ident:
        return Ident(self.model, self.deps, self.stream, self.body_cache, self.cache_key)


IDENT_MEMO_SIZE = 4096
# Accounting (metrics, request log, access lines, hit counts) runs in batches this long after a reply:
# off the hot path, and one write for many requests under load. Limits and /stats flush it first.
ACCOUNTING_DELAY_S = 0.05
ACCOUNTING_BATCH = 32
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Gateway:
    def __init__(self, config: Config, session: aiohttp.ClientSession, cache: TieredCache | None,
                 reqlog: RequestLog | None = None, hooks: Hooks | None = None) -> None:
        self.config = config
        self.session = session
        self.cache = cache
        self.reqlog = reqlog
        self.policy = UpstreamPolicy(config)
        self.hooks: Hooks = hooks or self.policy
        self.keys = KeyMaker(config.cache.ignore_patterns, config.cache.namespace)
        self.auth = Auth(config.keys)
        self.limiter = KeyLimiter(config.keys)
        self.aliases = config.aliases()
        self.flights: dict[str, Flight] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.metrics = Metrics()
        self.usage: dict[tuple[str, str], list[float]] = {}  # (key name, UTC day) -> [requests, tokens, usd]
        self.clock = time.time
        self.started_at = time.time()
        self._idents: OrderedDict[bytes, Ident] = OrderedDict()
        self._pending: list[Ctx] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._pruned_at = 0.0
        self._rid = itertools.count(1)
        self._rid_prefix = uuid.uuid4().hex[:6]

    async def start(self) -> None:
        """Load today's per-key usage (daily budgets survive a restart)."""
        if self.reqlog is not None:
            day = utc_day(self.clock())
            for name, (reqs, tokens, usd) in (await self.reqlog.load_usage(day)).items():
                self.usage[(name, day)] = [reqs, tokens, usd]
            if self.config.server.log_retention:
                self._pruned_at = self.clock()
                self.reqlog.prune(self._pruned_at - self.config.server.log_retention)

    async def refresh_cache_stats(self) -> None:
        self.flush_accounting()
        if self.cache is not None:
            self.metrics.set_cache_stats(await self.cache.stats())

    async def stop(self, timeout: float) -> None:
        """Let flights that are finishing for the cache end, within ``timeout``; account for everything."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        self.flush_accounting()

    def reload(self, config: Config) -> None:
        """Take new keys and key limits from a re-read config (SIGHUP); the rest needs a restart."""
        self.auth = Auth(config.keys)
        for k in config.keys:
            self.limiter.set_limits(k)
        changed = [name for name in ("server", "upstreams", "models", "cache", "stream", "retry")
                   if getattr(config, name) != getattr(self.config, name)]
        self.config = replace(self.config, keys=config.keys)
        log.info("reloaded %d key(s) from %s", len(config.keys), config.source)
        if changed:
            log.warning("reload applies keys and limits only; restart to apply changes in: %s", ", ".join(changed))

    # -- routing ---------------------------------------------------------------------------

    def resolve(self, name: str) -> list[ModelConfig | None]:
        """The deployments of a model alias; [None] for a pass-through model id."""
        deps = self.aliases.get(name)
        if deps:
            return list(deps)
        if not self.config.server.allow_unknown_models:
            known = ", ".join(sorted(self.aliases))
            raise ProxyError(404, f"Unknown model {name!r}; configured models: {known}", code="model_not_found",
                             param="model")
        return [None]

    @staticmethod
    def allowed(name: str, key: KeyConfig) -> None:
        if key.models and name not in key.models:
            raise ProxyError(403, f"This key may not use model {name!r}", code="model_not_allowed", param="model")

    def routes(self, alias: str, deps: list[ModelConfig | None], body: dict[str, Any]) -> list[Route]:
        """Deployments of the alias (balancer's order), then each fallback alias's deployments."""
        first = deps[0]
        if first is None:
            return [self._route(alias, None, body)]
        out = [self._route(alias, d, body) for d in self.policy.order(alias, [d for d in deps if d])]
        for fb in first.fallbacks:
            fdeps = self.aliases.get(fb, [])
            out.extend(self._route(fb, d, body) for d in self.policy.order(fb, fdeps))
        return out

    def _route(self, alias: str, dep: ModelConfig | None, body: dict[str, Any]) -> Route:
        if dep is None:
            up = self.config.upstreams[self.config.server.default_upstream]
            return Route(alias, up, prepare(body, None, alias), None)
        up = self.config.upstreams[dep.upstream]
        return Route(alias, up, prepare(body, dep, dep.model), dep)

    # -- the endpoint ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rid = request.headers.get("X-Request-Id")
        if rid is None or not _REQUEST_ID.fullmatch(rid):  # it goes into logs: only a plain token is kept
            rid = f"{self._rid_prefix}{next(self._rid):x}"
        ctx = Ctx(request_id=rid, t0=time.monotonic(), ts=time.time())
        self.metrics.inc_in_flight()
        held = False
        try:
            key = self.auth.check(request.headers)
            ctx.key_name = key.name
            count_hits = self.config.cache.count_hits_in_rate_limit
            if count_hits:
                self._admit(key)
                held = True
            return await self._chat(request, ctx, key, admit=not count_hits)
        except ProxyError as e:
            ctx.status, ctx.error_type = e.status, e.type
            raise
        finally:
            if held or ctx.admitted:
                self.limiter.release(ctx.key_name)
            self.metrics.dec_in_flight()
            self.finished(ctx)

    def _admit(self, key: KeyConfig) -> None:
        """Per-key rpm/tpm/parallel limits and daily budgets; raises a 429 when over."""
        if self._pending:
            self.flush_accounting()  # usage must be current before it is judged
        if key.daily_tokens or key.daily_usd:
            used = self.usage.get((key.name, utc_day(self.clock())))
            if used is not None:
                why = self.limiter.budget_exceeded(key.name, {"tokens": used[1], "usd": used[2]})
                if why:
                    wait = 86400 - self.clock() % 86400
                    raise ProxyError(429, f"Key {key.name!r} used up its {why.replace('_', ' ')} budget; "
                                          f"it resets at 00:00 UTC", code="budget_exceeded",
                                     headers={"x-should-retry": "false", "Retry-After": str(int(wait))})
        d = self.limiter.acquire(key.name)
        if not d.allowed:
            raise ProxyError(429, f"Rate limit for key {key.name!r} reached ({d.reason}); retry in "
                                  f"{max(1, round(d.retry_after))}s", code="rate_limit_exceeded", headers=d.headers())

    def identify(self, raw: bytes) -> Ident:
        """Validate and derive everything the body decides (raises 400/404 for bad input)."""
        body = validate(raw)
        deps = self.resolve(body["model"])
        first = deps[0]
        body_cache = body.get("cache")
        cc = parse_cache_control(None, body_cache)  # validates the body's cache object
        cache_key, canonical = "", b""
        if self.cache is not None and self.config.cache.enabled:
            primary = prepare(body, first, first.model if first else body["model"])
            # the alias's first deployment, not the balancer's pick: the key must not move
            upstream = first.upstream if first is not None else self.config.server.default_upstream
            cache_key, canonical = self.keys.cache_key(upstream, primary, cc.namespace)
        return Ident(body["model"], deps, bool(body.get("stream")), body_cache, cache_key, canonical, body)

    async def _fast_hit(self, request: web.Request, ctx: Ctx, key: KeyConfig,
                        ident: Ident) -> web.StreamResponse | None:
        """A memory hit for a body seen before, without parsing it; None to take the full path."""
        assert self.cache is not None
        self.allowed(ident.model, key)
        header = request.headers.get("Cache-Control")
        cc = _DEFAULT_CC if header is None and ident.body_cache is None else parse_cache_control(
            header, ident.body_cache)
        if not cc.lookup:
            return None
        entry = self.cache.get_nowait(ident.cache_key)
        tier = self.cache.memory_name
        if entry is None:
            entry, tier = await self.cache.get(ident.cache_key)  # the disk tier (promoted on a hit)
        if entry is None or not self._usable(entry, cc):
            return None
        first = ident.deps[0]
        ctx.stream, ctx.alias, ctx.cache_key = ident.stream, ident.model, ident.cache_key
        ctx.upstream_model = first.model if first else ident.model
        return await self._serve_hit(request, ctx, entry, tier or "", ident.stream,
                                     first.reasoning if first else "field", "HIT")

    async def _chat(self, request: web.Request, ctx: Ctx, key: KeyConfig, admit: bool) -> web.StreamResponse:
        raw = await request.read()
        ctx.request_bytes = len(raw)
        if self.config.server.log_prompts:  # opt-in: prompts stay out of the request log by default
            ctx.prompt = _prompt_of(raw)
        use_cache = self.cache is not None and self.config.cache.enabled
        digest = b""
        if use_cache:
            digest = xxhash.xxh3_128_digest(raw)
            known = self._idents.get(digest)
            if known is not None:
                self._idents.move_to_end(digest)
                fast = await self._fast_hit(request, ctx, key, known)
                if fast is not None:
                    return fast
        ident = self.identify(raw)
        if use_cache:
            self._idents[digest] = ident.memo()
            if len(self._idents) > IDENT_MEMO_SIZE:
                self._idents.popitem(last=False)
        body = ident.body
        assert body is not None
        stream = ident.stream
        ctx.stream = stream
        cc = parse_cache_control(request.headers.get("Cache-Control"), ident.body_cache)
        alias, deps = ident.model, ident.deps
        self.allowed(alias, key)
        ctx.alias = alias
        first = deps[0]
        mode = first.reasoning if first else "field"
        ctx.upstream_model = first.model if first else alias
        cache_key, canonical = ident.cache_key, ident.canonical
        if use_cache:
            ctx.cache_key = cache_key
            if cc.lookup:
                hit = await self._lookup(cache_key, cc)
                if hit is not None:
                    entry, tier = hit
                    return await self._serve_hit(request, ctx, entry, tier, stream, mode, "HIT")
            if cc.only_if_cached:
                ctx.cache = "MISS"
                raise ProxyError(504, "Not in cache (Cache-Control: only-if-cached)", code="cache_miss")
        elif cc.only_if_cached:
            raise ProxyError(504, "Caching is off (Cache-Control: only-if-cached)", code="cache_miss")

        if admit:  # cache hits are free: only what reaches for the upstream counts against the key
            self._admit(key)
            ctx.admitted = True
        flight = self.flights.get(cache_key) if cache_key and cc.lookup else None
        if flight is not None and not flight.finished:
            ctx.cache = "COALESCED"
            flight.store = flight.store or cc.store  # a joiner that may store keeps the answer, whoever started
        else:
            ctx.cache = "MISS" if use_cache and cc.lookup else ("BYPASS" if use_cache else "NONE")
            flight = self._start(cache_key, stream, self.routes(alias, deps, body), request, cc, canonical, ctx)
        try:
            if stream:
                return await self._follow_stream(request, ctx, flight, mode, cc, cache_key)
            return await self._follow_json(ctx, flight, mode, cc, cache_key)
        except _Stale as s:
            return await self._serve_hit(request, ctx, s.entry, "", stream, mode, "STALE")
        finally:
            flight.followers -= 1
            if (flight.followers <= 0 and not flight.finished and flight.task is not None
                    and not self.config.cache.finish_on_disconnect):
                flight.task.cancel()  # nobody is listening and we may not finish for the cache

    async def _lookup(self, key: str, cc: CacheControl) -> tuple[CacheEntry, str] | None:
        assert self.cache is not None
        entry, tier = await self.cache.get(key)
        if entry is None or not self._usable(entry, cc):
            return None
        return entry, tier or ""

    def _usable(self, entry: CacheEntry, cc: CacheControl) -> bool:
        now = self.clock()
        return entry.fresh(now) and (cc.max_age is None or now - entry.created_at <= cc.max_age)

    def _start(self, key: str, stream: bool, routes: list[Route], request: web.Request, cc: CacheControl,
               canonical: bytes, ctx: Ctx) -> Flight:
        flight = Flight(key, stream)
        headers = dict(request.headers)  # filtered per route in the flight, with that upstream's key

        async def done(f: Flight) -> None:
            if key and self.flights.get(key) is f:
                del self.flights[key]
            await asyncio.sleep(0)  # followers send [DONE] first; compressing for the store can wait
            if f.result is not None and f.cacheable and f.store and self.cache is not None and key:
                await self._store(key, f, cc, canonical, ctx)

        flight.store = cc.store
        if key:
            self.flights[key] = flight
        flight.task = asyncio.get_running_loop().create_task(
            flight.run(self.session, routes, headers, self.config.retry, self.hooks, done))
        self.tasks.add(flight.task)
        flight.task.add_done_callback(self.tasks.discard)
        return flight

    async def _store(self, key: str, f: Flight, cc: CacheControl, canonical: bytes, ctx: Ctx) -> None:
        assert self.cache is not None and f.result is not None
        doc = f.result
        now = self.clock()
        usage = doc.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        msg = (doc.get("choices") or [{}])[0].get("message") or {}
        body = dumps(doc)
        entry = CacheEntry(
            key=key, completion=doc, created_at=now, expires_at=now + (cc.ttl if cc.ttl is not None
                                                                        else self.config.cache.ttl),
            model=ctx.upstream_model, namespace=cc.namespace, request=canonical,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            reasoning_tokens=int(details.get("reasoning_tokens") or 0),
            cost=float(usage.get("cost") or 0.0), last_hit_at=now,
            preview_user=_last_user_text(canonical)[:160], preview_answer=str(msg.get("content") or "")[:160],
            raw_bytes=len(body) + len(canonical))
        await self.cache.put(entry)

    # -- replies ---------------------------------------------------------------------------

    def _cache_headers(self, ctx: Ctx, tier: str = "", age: float | None = None) -> dict[str, str]:
        h = {"X-Cache": ctx.cache, "X-Request-Id": ctx.request_id}
        if ctx.cache_key:
            h["X-Cache-Key"] = ctx.cache_key
        if tier:
            h["X-Cache-Tier"] = tier
        if age is not None:
            h["Age"] = str(int(max(0.0, age)))
        if ctx.route:
            h["X-R1proxy-Route"] = ctx.route
        return h

    async def _serve_hit(self, request: web.Request, ctx: Ctx, entry: CacheEntry, tier: str, stream: bool,
                         mode: str, label: str) -> web.StreamResponse:
        assert self.cache is not None
        ctx.cache, ctx.tier = label, tier
        variant = (mode, stream)
        body = entry.rendered.get(variant)
        if body is None:
            body = render_sse(entry.completion, mode) if stream else render_json(entry.completion, mode, cached=True)
            if self.cache.memory is not None:
                self.cache.memory.note_rendered(entry, variant, body)
        now = self.clock()
        self.cache.touch_nowait(entry.key, now)
        ctx.touched = entry.key
        ctx.usage = entry.completion.get("usage") or {}
        ctx.cost_saved = entry.cost
        ctx.ttfb = time.monotonic() - ctx.t0
        ctx.response_bytes = len(body)
        headers = self._cache_headers(ctx, tier, now - entry.created_at)
        if label == "STALE":
            headers["Warning"] = '110 r1proxy "Response is stale"'
        if stream:
            headers.update(sse.SSE_HEADERS)
            return web.Response(body=body, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def _follow_json(self, ctx: Ctx, flight: Flight, mode: str, cc: CacheControl,
                           key: str) -> web.StreamResponse:
        flight.followers += 1
        while not flight.finished:
            await flight.wait(None)
        self._take_outcome(ctx, flight)
        if flight.result is None or (flight.error is not None and not flight.result):
            stale = await self._stale(key, cc, flight.error)
            if stale is not None:
                raise _Stale(stale)
            raise flight.error or ProxyError(502, "Upstream gave no answer")
        body = render_json(flight.result, mode)
        ctx.usage = flight.result.get("usage") or {}
        ctx.response_bytes = len(body)
        headers = self._cache_headers(ctx)
        headers.update(flight.headers)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def _follow_stream(self, request: web.Request, ctx: Ctx, flight: Flight, mode: str, cc: CacheControl,
                             key: str) -> web.StreamResponse:
        flight.followers += 1
        loop = asyncio.get_running_loop()
        early_at = loop.time() + self.config.stream.early_headers_s
        keepalive = self.config.stream.keepalive_s
        renderer = Renderer(mode)
        resp: web.StreamResponse | None = None
        i = 0
        replayed = False

        async def open_stream() -> web.StreamResponse:
            ctx.route = flight.outcome.route  # known once upstream answered (not for early headers)
            headers = self._cache_headers(ctx)
            headers.update(flight.headers)
            headers.update(sse.SSE_HEADERS)
            r = web.StreamResponse(status=200, headers=headers)
            await r.prepare(request)
            return r

        try:
            while True:
                items = flight.items
                if resp is None and (flight.started or (flight.finished and flight.result is not None)):
                    resp = await open_stream()
                if resp is not None and i < len(items):
                    out = []
                    raw = flight.raw if mode == "field" else {}
                    for n in range(i, len(items)):
                        item = items[n]
                        if isinstance(item, bytes):
                            out.append(item)
                            continue
                        if ctx.ttfb is None:
                            ctx.ttfb = time.monotonic() - ctx.t0
                        frame = raw.get(n)
                        if frame is None:
                            frame = sse.data_frame(dumps(renderer.chunk(item) if mode != "field" else item))
                        out.append(frame)
                    i = len(items)
                    data = b"".join(out)
                    ctx.response_bytes += len(data)
                    await resp.write(data)
                    continue
                if flight.finished:
                    break
                now = loop.time()
                timeout = keepalive if resp is not None else max(0.0, early_at - now)
                if resp is None and timeout <= 0:
                    resp = await open_stream()  # headers now: Node's fetch gives up after 300 s without them
                    await resp.write(sse.KEEPALIVE)
                    continue
                before = len(flight.items)
                await flight.wait(timeout)
                if resp is not None and len(flight.items) == before and not flight.finished:
                    await resp.write(sse.KEEPALIVE)
            self._take_outcome(ctx, flight)
            if flight.result is not None and flight.data_count == 0 and flight.error is None:
                # a JSON reply (or a joined non-stream flight) followed by a streaming client: replay it
                assert resp is not None
                data = render_sse(flight.result, mode, cached=False)
                replayed = True
                ctx.ttfb = ctx.ttfb or (time.monotonic() - ctx.t0)
                ctx.response_bytes += len(data)
                await resp.write(data)
            elif flight.error is not None and not flight.error_in_stream:
                stale = await self._stale(key, cc, flight.error)
                if resp is None:
                    if stale is not None:
                        raise _Stale(stale)
                    raise flight.error
                if stale is not None:
                    # only keep-alives went out: the stale answer can still be the whole reply (the
                    # X-Cache header said MISS already, so a comment says what happened)
                    ctx.cache, ctx.cost_saved = "STALE", stale.cost
                    ctx.usage = stale.completion.get("usage") or {}
                    data = (sse.comment_frame(f"r1proxy: upstream failed ({flight.error.status}); "
                                              "serving a stale cached answer")
                            + render_sse(stale.completion, mode))
                    ctx.response_bytes += len(data)
                    await resp.write(data)
                else:
                    # headers already went out (keep-alives): the error must be a final data event
                    ctx.status, ctx.error_type = flight.error.status, flight.error.type
                    await resp.write(sse.data_frame(dumps(flight.error.body())))
            elif flight.error is not None:
                ctx.status, ctx.error_type = flight.error.status, flight.error.type
            elif not replayed:
                assert resp is not None
                await resp.write(sse.DONE)
            if flight.result is not None:
                ctx.usage = flight.result.get("usage") or {}
            assert resp is not None
            await resp.write_eof()
            return resp
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            ctx.status, ctx.error_type = 499, "client_closed"
            if resp is None:
                raise
            return resp

    def _take_outcome(self, ctx: Ctx, flight: Flight) -> None:
        ctx.route = flight.outcome.route
        ctx.generation_id = flight.outcome.generation_id
        if ctx.cache != "COALESCED":
            ctx.ttfb = ctx.ttfb if ctx.ttfb is not None else flight.outcome.ttfb

    async def _stale(self, key: str, cc: CacheControl, error: ProxyError | None) -> CacheEntry | None:
        """An expired entry still inside the stale-if-error window, when the failure is the upstream's."""
        if not key or self.cache is None or not cc.stale_ok or not self.config.cache.stale_if_error:
            return None
        if error is not None and not (error.status >= 500 or error.status in (408, 429)):
            return None  # 4xx like 400/401/402 need fixing, not hiding (RFC 5861 serves stale for 5xx)
        entry, _tier = await self.cache.get(key)
        if entry is None or self.clock() > entry.expires_at + self.config.cache.stale_if_error:
            return None
        return entry

    def finished(self, ctx: Ctx) -> None:
        """Queue a request's accounting; it runs right after the reply is on its way (off the hot path)."""
        ctx.latency = time.monotonic() - ctx.t0
        if not self._pending:
            self._flush_handle = asyncio.get_running_loop().call_later(ACCOUNTING_DELAY_S, self.flush_accounting)
        self._pending.append(ctx)
        if len(self._pending) == ACCOUNTING_BATCH:  # bounded batches: no long pause under load
            asyncio.get_running_loop().call_soon(self.flush_accounting)

    def flush_accounting(self) -> None:
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


class _Stale(Exception):
    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry


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


PROMPT_LOG_CHARS = 4000


def _prompt_of(raw: bytes) -> str | None:
    """The last user message of a request body, for the opt-in prompt log (None if there is none)."""
    text = _last_user_text(raw)
    return text[:PROMPT_LOG_CHARS] if text else None


def _last_user_text(canonical: bytes) -> str:
    try:
        doc = json.loads(canonical)
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            return ""
        for m in reversed(doc["messages"]):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, dict):
                    c = " ".join(c.get("$texts", []))
                if isinstance(c, list):
                    c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
                return str(c or "")
    except (ValueError, TypeError):
        pass
    return ""
