"""The chat pipeline: validate → route → cache lookup → join or start a flight → reply.

``Gateway`` holds the runtime state of one app (config, cache, flights in progress, policy
objects) and answers ``/chat/completions``. A hit is rendered from the stored completion in
the shape the client asked for; a miss follows a ``Flight`` live (SSE) or waits for it (JSON);
only complete, successful answers are stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import aiohttp
import xxhash
from aiohttp import web

from . import sse
from .accounting import Accounting
from .auth import Auth
from .cache import CacheEntry, TieredCache
from .cache.keys import KeyMaker
from .completion import Renderer, dumps, render_json, render_sse
from .config import Config, KeyConfig, ModelConfig
from .errors import ProxyError
from .flight import Flight, Hooks, Route
from .metrics import Metrics
from .policy import UpstreamPolicy
from .ratelimit import KeyLimiter
from .reqlog import RequestLog, utc_day
from .request import DEFAULT_CC, CacheControl, Ctx, Ident, last_user_text, parse_cache_control, prompt_of, validate
from .templates import prepare

log = logging.getLogger("r1proxy")


IDENT_MEMO_SIZE = 4096
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
        self.accounting = Accounting(config, self.metrics, self.limiter, reqlog, cache, self.tasks)
        self.clock = time.time
        self.accounting.clock = lambda: self.clock()  # one notion of "now" (tests move it)
        self.started_at = time.time()
        self._idents: OrderedDict[bytes, Ident] = OrderedDict()
        self._rid = itertools.count(1)
        self._rid_prefix = uuid.uuid4().hex[:6]

    async def start(self) -> None:
        await self.accounting.start()

    def flush_accounting(self) -> None:
        """Account for every finished request now (tests and limits want current numbers)."""
        self.accounting.flush()

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
            self.accounting.finished(ctx)

    def _admit(self, key: KeyConfig) -> None:
        """Per-key rpm/tpm/parallel limits and daily budgets; raises a 429 when over."""
        self.accounting.flush()  # usage must be current before it is judged
        if key.daily_tokens or key.daily_usd:
            used = self.accounting.usage.get((key.name, utc_day(self.clock())))
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
        cc = DEFAULT_CC if header is None and ident.body_cache is None else parse_cache_control(
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
            ctx.prompt = prompt_of(raw)
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
        flight.followers += 1  # paired with the decrement below, whatever way the reply ends
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
            preview_user=last_user_text(canonical)[:160], preview_answer=str(msg.get("content") or "")[:160],
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
        while not flight.finished:
            await flight.wait(None)
        self._take_outcome(ctx, flight)
        if flight.result is None:
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

class _Stale(Exception):
    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry
