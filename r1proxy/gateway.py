"""The chat pipeline: auth → identify (memoised) → one hit path → admit → join or start a flight → reply.

``Gateway`` holds the runtime state of one app (config, cache, flights in progress, policy
objects, the clock) and answers ``/chat/completions``. Routing lives in ``routing``, the
flight lifecycle in ``flight.Flights``, cache decisions in ``cache.freshness``, the replies
in ``reply``, and what a finished request leaves behind in ``accounting``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp
import xxhash
from aiohttp import web

from .accounting import Accounting, RequestRecord
from .auth import Auth
from .cache import CacheEntry, NullCache, TieredCache
from .cache.freshness import StaleFinder, no_stale, usable
from .cache.keys import KeyMaker
from .clock import Clock
from .config import Config, KeyConfig
from .costing import Costing
from .errors import ProxyError
from .flight import Flight, Flights, OnDone, Shared
from .metrics import Metrics
from .policy import UpstreamPolicy
from .ratelimit import KeyLimiter
from .reply import FindStale, Stale, StreamFollower, follow_json, send_entry, take_outcome
from .reqlog import RequestLog
from .request import CacheControl, RequestIdentity, parse_cache_control, prompt_of, validate
from .routing import Router
from .rules import BYPASS, COALESCED, HIT, MISS, NONE, STALE, seconds_to_utc_midnight, utc_day
from .semantic import TIER as SEMANTIC_TIER
from .semantic import SemanticHits
from .sharedlimits import SharedLimits
from .templates import prepare

if TYPE_CHECKING:
    from .cache.semantic.tier import Probe

log = logging.getLogger("r1proxy")


IDENT_MEMO_SIZE = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Gateway:
    def __init__(self, config: Config, session: aiohttp.ClientSession, cache: TieredCache | None = None,
                 reqlog: RequestLog | None = None, clock: Clock | None = None, shared: Shared | None = None,
                 shared_limits: SharedLimits | None = None, semantic: SemanticHits | None = None,
                 limiter: KeyLimiter | None = None) -> None:
        self.config = config
        self.cache = cache if cache is not None else NullCache()
        self.reqlog = reqlog
        self.clock = clock or Clock()
        self.policy = UpstreamPolicy(config, self.clock)
        self.router = Router(config, self.policy)
        self.aliases = self.router.aliases
        self.flights = Flights(session, config.retry, self.policy, shared)
        self.keys = KeyMaker(config.cache.ignore_patterns, config.cache.namespace)
        self.semantic = semantic  # the opt-in near-duplicate tier ([cache.semantic]); None when off
        self.auth = Auth(config.keys)
        self.limiter = limiter if limiter is not None else KeyLimiter(config.keys)  # shared: server.workers > 1
        self.metrics = Metrics()
        self.costing = Costing(config, session, reqlog.db if reqlog is not None else None, now=self.clock.now)
        self.policy.on_attempt = self.costing.on_attempt
        self.accounting = Accounting(config, self.metrics, self.limiter, reqlog, self.cache, self.flights.keep,
                                     self.clock, costing=self.costing)
        self.shared_limits = shared_limits  # with [cache.redis]: key limits and pacing across processes
        if shared_limits is not None:
            self.accounting.on_usage = shared_limits.record
            self.policy.shared = shared_limits
        self.started_at = self.clock.now()
        self._idents: OrderedDict[bytes, RequestIdentity] = OrderedDict()
        self._rid = itertools.count(1)
        self._rid_prefix = uuid.uuid4().hex[:6]
        self.deadline: float | None = None  # loop.time() the shutdown drain ends (set by shutdown.drain())

    async def start(self) -> None:
        await self.accounting.start()
        await self.costing.start()

    def flush_accounting(self) -> None:
        """Account for every finished request now (tests and limits want current numbers)."""
        self.accounting.flush()

    async def refresh_cache_stats(self) -> None:
        self.flush_accounting()
        self.metrics.set_cache_stats(await self.cache.stats())
        self.metrics.set_free_quota({up: (q["used_today"], q["left_today"])
                                     for up, q in self.costing.free_quota().items()})
        reports: dict[str, dict[str, object]] = dict(self.cache.reports())
        shared = getattr(self.flights.shared, "report", None)
        if shared is not None:
            reports["redis_coalescing"] = dict(shared())
        if self.shared_limits is not None:
            reports["redis_limits"] = dict(self.shared_limits.report())
        self.metrics.set_tier_reports(reports)

    async def stop(self, timeout: float) -> None:
        """Let flights that are finishing for the cache end, within ``timeout``; account for everything."""
        await self.flights.drain(timeout)
        await self.costing.stop()
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

    # -- the endpoint ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rid = request.headers.get("X-Request-Id")
        if rid is None or not _REQUEST_ID.fullmatch(rid):  # it goes into logs: only a plain token is kept
            rid = f"{self._rid_prefix}{next(self._rid):x}"
        rec = RequestRecord(request_id=rid, t0=self.clock.monotonic(), ts=self.clock.now())
        self.metrics.inc_in_flight()
        held = False
        try:
            key = self.auth.check(request.headers)
            rec.key_name = key.name
            count_hits = self.config.cache.count_hits_in_rate_limit
            if count_hits:
                self._admit(key)
                held = True
                await self._admit_shared(key)
            return await self._chat(request, rec, key, admit=not count_hits)
        except ProxyError as e:
            rec.status, rec.error_type = e.status, e.type
            raise
        except asyncio.CancelledError:
            # cut (the shutdown deadline, or aiohttp): a client that got nothing is no "200, 0 bytes"
            rec.error_type = "shutdown" if self.deadline is not None else "cancelled"
            if rec.response_bytes == 0:
                rec.status = 499
            raise
        finally:
            if held or rec.admitted:
                self.limiter.release(rec.key_name)
            self.metrics.dec_in_flight()
            self._account(rec)

    def _account(self, rec: RequestRecord) -> None:
        """Account for a finished request; a leader whose client left before its upstream call ended
        (finish_on_disconnect) is accounted when the call ends: the upstream bills the whole answer."""
        flight = rec.leading
        if flight is None or flight.finished or flight.task is None:
            self.accounting.finished(rec)
            return
        rec.latency = self.clock.monotonic() - rec.t0  # the client's wait, not the call's

        def settle(_task: object) -> None:
            take_outcome(rec, flight)
            self.accounting.finished(rec)

        flight.task.add_done_callback(settle)

    def _admit(self, key: KeyConfig) -> None:
        """Per-key rpm/tpm/parallel limits and daily budgets; raises a 429 when over."""
        if key.tpm or key.daily_tokens or key.daily_usd:
            self.accounting.flush()  # usage must be current before it is judged (rpm and parallel count here)
        if key.daily_tokens or key.daily_usd:
            now = self.clock.now()
            day = utc_day(now)
            used = self.limiter.day_usage(key.name, day) or self.accounting.usage.get((key.name, day))
            if used is not None:
                why = self.limiter.budget_exceeded(key.name, {"tokens": used[1], "usd": used[2]})
                if why:
                    wait = seconds_to_utc_midnight(now)
                    raise ProxyError(429, f"Key {key.name!r} used up its {why.replace('_', ' ')} budget; "
                                          f"it resets at 00:00 UTC", code="budget_exceeded",
                                     headers={"x-should-retry": "false", "Retry-After": str(int(wait))})
        d = self.limiter.acquire(key.name)
        if not d.allowed:
            raise ProxyError(429, f"Rate limit for key {key.name!r} reached ({d.reason}); retry in "
                                  f"{max(1, round(d.retry_after))}s", code="rate_limit_exceeded", headers=d.headers())

    async def _admit_shared(self, key: KeyConfig) -> None:
        """The same limits across every process on the Redis (after the local ones passed); raises a 429."""
        if self.shared_limits is None:
            return
        now = self.clock.now()
        no = await self.shared_limits.admit(key, utc_day(now))
        if no is None:
            return
        if no.reason.startswith("daily"):
            raise ProxyError(429, f"Key {key.name!r} used up its {no.reason.replace('_', ' ')} budget (shared across "
                                  "r1proxy processes); it resets at 00:00 UTC", code="budget_exceeded",
                             headers={"x-should-retry": "false",
                                      "Retry-After": str(int(seconds_to_utc_midnight(now)))})
        wait = max(1, math.ceil(no.retry_after))
        raise ProxyError(429, f"Rate limit for key {key.name!r} reached ({no.reason}, shared across r1proxy "
                              f"processes); retry in {wait}s", code="rate_limit_exceeded",
                         headers={"Retry-After": str(wait)})

    def identify(self, raw: bytes, partition: str = "") -> RequestIdentity:
        """Validate and derive everything the body decides (raises 400/404 for bad input); ``partition``
        is the key name when ``cache.share = "key"``."""
        body = validate(raw)
        deployments = self.router.resolve(body["model"])
        first = deployments[0]
        body_cache = body.get("cache")
        cc = parse_cache_control(None, body_cache)  # validates the body's cache object
        cache_key, canonical = "", b""
        if self.cache.enabled:
            # the alias's first deployment, not the balancer's pick: the key must not move
            primary = prepare(body, first, first.model)
            cache_key, canonical = self.keys.cache_key(first.upstream, primary, cc.namespace, partition)
        return RequestIdentity(body["model"], deployments, bool(body.get("stream")), body_cache, cache_key,
                               canonical, body)

    def _known(self, raw: bytes, partition: str) -> tuple[bytes, RequestIdentity | None]:
        """The memoised identity of a body seen before (no parsing), keyed by its hash (and partition)."""
        if not self.cache.enabled:
            return b"", None
        digest = xxhash.xxh3_128_digest(partition.encode() + b"\0" + raw if partition else raw)
        known = self._idents.get(digest)
        if known is not None:
            self._idents.move_to_end(digest)
        return digest, known

    def _remember(self, digest: bytes, ident: RequestIdentity) -> None:
        if digest:
            self._idents[digest] = ident.memo()
            if len(self._idents) > IDENT_MEMO_SIZE:
                self._idents.popitem(last=False)

    async def _chat(self, request: web.Request, rec: RequestRecord, key: KeyConfig,
                    admit: bool) -> web.StreamResponse:
        raw = await request.read()
        rec.request_bytes = len(raw)
        if self.config.server.log_prompts:  # opt-in: prompts stay out of the request log by default
            rec.prompt = prompt_of(raw)
        partition = key.name if self.config.cache.share == "key" else ""
        digest, ident = self._known(raw, partition)
        if ident is None:
            ident = self.identify(raw, partition)
            self._remember(digest, ident)
        self.router.allowed(ident.model, key)
        first = ident.first
        rec.stream, rec.alias, rec.upstream_model = ident.stream, ident.model, first.model
        cc = parse_cache_control(request.headers.get("Cache-Control"), ident.body_cache)
        if self.cache.enabled:
            rec.cache_key = ident.cache_key
            hit = await self._lookup(ident.cache_key, cc) if cc.lookup else None
            if hit is not None:
                return self._serve(rec, hit[0], hit[1], ident.stream, first.reasoning, HIT)
        probe = None
        if self.semantic is not None and cc.lookup and self.semantic.serves(key.name):
            if ident.body is None:
                ident = self.identify(raw, partition)
            assert ident.body is not None
            # the client's body, as typed: the template of the alias (e.g. R1's system prompt merged into
            # the first user turn) is the same for both requests, and would hide where the task text is
            probe = await self.semantic.probe(first.upstream, ident.body, cc.namespace, partition)
            now = self.clock.now()
            found = await self.semantic.lookup(probe, self._entry, lambda e: usable(e, cc, now))
            if found is not None:  # served as is: nothing is stored, so it never feeds another semantic hit
                rec.semantic_source, rec.semantic_similarity = found.match.key, found.match.similarity
                resp = self._serve(rec, found.entry, SEMANTIC_TIER, ident.stream, first.reasoning, HIT)
                resp.headers.update(found.headers())
                return resp
        if cc.only_if_cached:
            rec.cache = MISS if self.cache.enabled else NONE
            raise ProxyError(504, "Not in cache (Cache-Control: only-if-cached)" if self.cache.enabled
                             else "Caching is off (Cache-Control: only-if-cached)", code="cache_miss",
                             headers={"x-should-retry": "false"})  # final: the SDK retries 504s otherwise
        if ident.body is None:  # a memoised identity: the flight needs the parsed body
            ident = self.identify(raw, partition)
        return await self._miss(request, rec, key, ident, cc, admit, probe)

    async def _entry(self, key: str) -> CacheEntry | None:
        entry, _tier = await self.cache.get(key)  # memory first, then the slower tiers
        return entry

    async def _lookup(self, key: str, cc: CacheControl) -> tuple[CacheEntry, str] | None:
        """The one hit path: memory without awaiting, then the slower tiers (promoted on a hit)."""
        entry = self.cache.get_nowait(key)
        tier: str | None = self.cache.memory_name
        if entry is None:
            entry, tier = await self.cache.get(key)
        if entry is None or not usable(entry, cc, self.clock.now()):
            return None
        return entry, tier or ""

    def _serve(self, rec: RequestRecord, entry: CacheEntry, tier: str, stream: bool, mode: str,
               label: str) -> web.Response:
        now = self.clock.now()
        self.cache.touch_nowait(entry.key, now)
        rec.touched = entry.key
        return send_entry(rec, entry, tier, stream=stream, mode=mode, label=label, now=now, cache=self.cache,
                          clock=self.clock, hit_usage=self.config.server.hit_usage)

    async def _miss(self, request: web.Request, rec: RequestRecord, key: KeyConfig, ident: RequestIdentity,
                    cc: CacheControl, admit: bool, probe: Probe | None = None) -> web.StreamResponse:
        if admit:  # cache hits are free: only what reaches for the upstream counts against the key
            self._admit(key)
            rec.admitted = True
            await self._admit_shared(key)
        cache_key = ident.cache_key if self.cache.enabled else ""
        flight = self.flights.join(cache_key) if cc.lookup else None
        if flight is not None:
            rec.cache = COALESCED
            flight.store = flight.store or cc.store  # a joiner that may store keeps the answer, whoever started
        else:
            rec.cache = (MISS if cc.lookup else BYPASS) if self.cache.enabled else NONE
            assert ident.body is not None
            routes = self.router.routes(ident.model, ident.deployments, ident.body)
            rec.session_id = str(routes[0].payload.get("session_id") or "") if routes else ""
            flight = self.flights.start(cache_key, ident.stream, routes, dict(request.headers), store=cc.store,
                                        coalesce=cc.lookup,
                                        on_done=self._storer(cache_key, cc, ident.canonical, rec.upstream_model,
                                                             probe))
            flight.max_event = self.config.stream.max_event_bytes
            rec.leading = flight
        mode = ident.first.reasoning
        find_stale = self._stale_finder(cache_key, cc)
        with self._alone_at_most(flight), self.flights.following(flight,
                                                                 finish_alone=self.config.cache.finish_on_disconnect):
            if ident.stream:
                answer = await StreamFollower(request, rec, flight, mode, self.config.stream, find_stale,
                                              self.clock).run()
            else:
                answer = await follow_json(rec, flight, mode, find_stale)
        if isinstance(answer, Stale):
            return self._serve(rec, answer.entry, "", ident.stream, mode, STALE)
        return answer

    @contextmanager
    def _alone_at_most(self, flight: Flight) -> Iterator[None]:
        """Once the last client left, a flight finishing for the cache alone gets at most
        ``cache.finish_on_disconnect_max`` more (not the upstream's total_timeout)."""
        try:
            yield
        finally:
            cap = self.config.cache.finish_on_disconnect_max
            task = flight.task
            if flight.followers <= 0 and not flight.finished and task is not None and cap > 0:
                def abandon() -> None:
                    if flight.followers <= 0 and not flight.finished:
                        log.info("stopped reading an answer nobody waited for after %gs "
                                 "(cache.finish_on_disconnect_max)", cap)
                        task.cancel()
                asyncio.get_running_loop().call_later(cap, abandon)

    def _stale_finder(self, cache_key: str, cc: CacheControl) -> FindStale:
        if not cache_key or not self.cache.enabled:
            return no_stale
        return StaleFinder(self.cache, cache_key, cc, self.config.cache.stale_if_error, self.clock.now)

    def _storer(self, key: str, cc: CacheControl, canonical: bytes, model: str, probe: Probe | None) -> OnDone:
        async def store(f: Flight) -> None:
            if not (key and f.result is not None and f.cacheable and f.store and self.cache.enabled):
                return
            now = self.clock.now()
            ttl = cc.ttl if cc.ttl is not None else self.config.cache.ttl
            await self.cache.put(CacheEntry.from_completion(key, f.result, now=now, ttl=ttl, model=model,
                                                            namespace=cc.namespace, request=canonical))
            if self.semantic is not None:
                self.semantic.remember(probe, key)
        return store

