"""Request, cache, token and cost metrics: the counters, and their Prometheus and JSON views.

One ``Metrics`` per app, with its own private ``CollectorRegistry``: nothing touches
prometheus_client's global default registry, so tests, reloads and several apps in one
process never collide. Callers report events; this module never looks into the cache,
except through the tier figures pushed to it before a scrape. It does not import aiohttp.

Why plain counters and a custom collector rather than ``Counter``/``Histogram`` objects:
``request_done`` runs on the hot path of a sub-millisecond cache hit. Three prometheus_client
``labels(...).inc()/observe()`` calls cost about 4.8 µs there (a lock per child, label
validation, one dict lookup per metric). Plain dicts keyed by label tuples and a bisect
into fixed buckets cost about 0.55 µs (timeit, same machine). The work moves to scrape
time, when ``_Collector`` builds the metric families. The proxy is one asyncio thread, so
the counters need no lock; scrapes copy each dict before reading it.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# From a memory hit (~0.5 ms) to a long reasoning completion (a minute); +Inf is implicit.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)
# Cache outcomes that were answered without waiting for a fresh upstream call of their own.
HIT_STATES = frozenset({"HIT", "COALESCED", "STALE"})
MISS_STATES = frozenset({"MISS"})
# The cache reports tiers by name; /stats shows the first as l1_* and the second as l2_*.
L1_TIERS = ("memory", "l1")
L2_TIERS = ("sqlite", "disk", "l2")
# Clients choose model names; past this many distinct names, new ones are counted as OTHER_MODEL
# (an unbounded label set would let one client grow every scrape without limit).
MAX_MODELS = 200
OTHER_MODEL = "_other"

# A row is (tier, entries, bytes), or any object with .name, .entries and .bytes (cache TierStats).
CacheStatsRow = Any


def _tier_row(row: CacheStatsRow) -> tuple[str, int, int]:
    if hasattr(row, "entries"):
        return str(row.name), int(row.entries), int(row.bytes)
    tier, entries, size = row[:3]
    return str(tier), int(entries), int(size)


class _Histogram:
    """Non-cumulative bucket counts plus sum; made cumulative only at scrape time."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Metrics:
    """All figures for one app instance; ``render()`` for /metrics, ``snapshot()`` for /stats."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, process_metrics: bool = True,
                 max_models: int = MAX_MODELS) -> None:
        self._clock = clock
        self._max_models = max_models
        self._started = clock()
        # (model, status, cache, stream) -> count
        self._requests: dict[tuple[str, int, str, bool], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._ttfb: dict[str, _Histogram] = {}
        self._upstream_errors: dict[tuple[str, str], int] = {}
        # (model, kind, source) -> tokens; source is "upstream" (paid for) or "cache" (saved)
        self._tokens: dict[tuple[str, str, str], int] = {}
        self._models: set[str] = set()
        self._usd_saved = 0.0
        self._usd_spent = 0.0
        # the upstream's prompt cache (OpenRouter/DeepSeek): (model, "read"|"write") -> tokens, and USD saved
        self._prefix_tokens: dict[tuple[str, str], int] = {}
        self._usd_prefix_saved = 0.0
        self.in_flight = 0
        self._cache_rows: list[tuple[str, int, int]] = []
        self._free: dict[str, tuple[int, int]] = {}  # upstream -> (free requests used today, left today)
        self._tier_reports: dict[str, dict[str, Any]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        if process_metrics:
            from prometheus_client import PlatformCollector, ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= self._max_models:
            return OTHER_MODEL
        self._models.add(model)
        return model

    def request_done(self, model: str, status: int, cache: str, latency_s: float,
                     ttfb_s: float | None, stream: bool) -> None:
        """Count one finished request; ``cache`` is HIT/MISS/COALESCED/STALE/BYPASS. Hot path: ~0.5 µs."""
        key = (model, status, cache, stream)
        requests = self._requests
        if key in requests:
            requests[key] += 1
        else:
            key = (self._model(model), status, cache, stream)
            requests[key] = requests.get(key, 0) + 1
        h = self._latency.get(cache)
        if h is None:
            h = self._latency[cache] = _Histogram()
        h.counts[bisect_left(BUCKETS, latency_s)] += 1
        h.total += latency_s
        if ttfb_s is not None:
            h = self._ttfb.get(cache)
            if h is None:
                h = self._ttfb[cache] = _Histogram()
            h.counts[bisect_left(BUCKETS, ttfb_s)] += 1
            h.total += ttfb_s

    def upstream_error(self, upstream: str, kind: str) -> None:
        """Count one failed upstream attempt (kind: timeout, connect, http_429, http_5xx, …)."""
        key = (upstream, kind)
        self._upstream_errors[key] = self._upstream_errors.get(key, 0) + 1

    def tokens(self, model: str, prompt: int, completion: int, reasoning: int = 0, *,
               cached: bool = False) -> None:
        """Add one response's usage; ``reasoning`` is the part of ``completion`` spent reasoning.

        ``cached=True`` for a response served from the cache: its tokens count as saved.
        """
        model = self._model(model)
        source = "cache" if cached else "upstream"
        t = self._tokens
        for kind, n in (("prompt", prompt), ("completion", completion), ("reasoning", reasoning)):
            if n:
                t[(model, kind, source)] = t.get((model, kind, source), 0) + n

    def prefix_cache(self, model: str, read: int, write: int, usd_saved: float) -> None:
        """One upstream call's prompt-cache use: tokens read and written, and what the reads saved."""
        model = self._model(model)
        for kind, n in (("read", read), ("write", write)):
            if n:
                self._prefix_tokens[(model, kind)] = self._prefix_tokens.get((model, kind), 0) + n
        self._usd_prefix_saved += usd_saved

    def cost_saved(self, usd: float) -> None:
        """Add the upstream price a cache hit avoided."""
        self._usd_saved += usd

    def cost_spent(self, usd: float) -> None:
        """Add the upstream price of a completed upstream call."""
        self._usd_spent += usd

    def totals(self) -> tuple[int, int]:
        """(requests, cache hits) since start: the heartbeat's status text."""
        requests = hits = 0
        for (_model, _status, cache, _stream), n in self._requests.items():
            requests += n
            if cache.upper() in HIT_STATES:
                hits += n
        return requests, hits

    def inc_in_flight(self) -> None:
        self.in_flight += 1

    def dec_in_flight(self) -> None:
        self.in_flight -= 1

    def set_free_quota(self, quota: dict[str, tuple[int, int]]) -> None:
        """upstream -> (``:free`` requests used today, left today), pushed before a scrape."""
        self._free = dict(quota)

    def set_cache_stats(self, rows: Iterable[CacheStatsRow]) -> None:
        """The cache tiers' figures, pushed before a scrape or snapshot (the /metrics and /stats
        handlers call ``m.set_cache_stats(await cache.stats())`` first)."""
        self._cache_rows = [_tier_row(r) for r in rows]

    def set_tier_reports(self, reports: dict[str, dict[str, Any]]) -> None:
        """Counters and breaker state of tiers that keep them (the shared Redis tier), pushed like cache stats."""
        self._tier_reports = dict(reports)

    def tier_reports(self) -> dict[str, dict[str, Any]]:
        return dict(self._tier_reports)

    def cache_stats(self) -> list[tuple[str, int, int]]:
        """The last pushed (tier, entries, bytes) rows."""
        return list(self._cache_rows)

    def uptime_s(self) -> float:
        return self._clock() - self._started

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Prometheus exposition text and its content type; OpenMetrics if ``accept`` asks for it."""
        if "application/openmetrics-text" in accept:
            return generate_openmetrics(self.registry), OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def snapshot(self) -> dict[str, Any]:
        """The same figures as plain JSON-ready data for /stats."""
        requests = dict(self._requests)
        by_status: dict[str, int] = {}
        by_model: dict[str, int] = {}
        by_cache: dict[str, int] = {}
        for (model, status, cache, _stream), n in requests.items():
            by_status[str(status)] = by_status.get(str(status), 0) + n
            by_model[model] = by_model.get(model, 0) + n
            by_cache[cache.upper()] = by_cache.get(cache.upper(), 0) + n
        hits = sum(n for c, n in by_cache.items() if c in HIT_STATES)
        misses = sum(n for c, n in by_cache.items() if c in MISS_STATES)
        tiers = {t.lower(): (e, b) for t, e, b in self.cache_stats()}
        l1 = next((tiers[t] for t in L1_TIERS if t in tiers), (0, 0))
        l2 = next((tiers[t] for t in L2_TIERS if t in tiers), (0, 0))
        errors: dict[str, dict[str, int]] = {}
        for (upstream, kind), n in dict(self._upstream_errors).items():
            errors.setdefault(upstream, {})[kind] = n
        tokens = dict(self._tokens)
        prefix_read = sum(n for (_m, kind), n in dict(self._prefix_tokens).items() if kind == "read")
        upstream_prompt = sum(n for (_m, kind, src), n in tokens.items() if src == "upstream" and kind == "prompt")
        saved = sum(n for (_m, kind, src), n in tokens.items()
                    if src == "cache" and kind in ("prompt", "completion"))
        spent = sum(n for (_m, kind, src), n in tokens.items()
                    if src == "upstream" and kind in ("prompt", "completion"))
        return {
            "total_requests": sum(requests.values()),
            "hits": hits,
            "misses": misses,
            "overall_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "requests_by_cache": by_cache,
            "requests_by_status": by_status,
            "requests_by_model": by_model,
            "l1_cache_size": l1[0],
            "l1_cache_bytes": l1[1],
            "l2_cache_size": l2[0],
            "l2_cache_bytes": l2[1],
            "cache_tiers": {t: {"entries": e, "bytes": b} for t, (e, b) in tiers.items()},
            "upstream_errors": sum(sum(k.values()) for k in errors.values()),
            "upstream_errors_by_upstream": errors,
            "tokens_saved": saved,
            "tokens_spent": spent,
            "usd_saved": round(self._usd_saved, 6),
            "usd_spent": round(self._usd_spent, 6),
            "usd_saved_prefix": round(self._usd_prefix_saved, 6),
            "prefix_cached_tokens": prefix_read,
            "prefix_hit_rate": round(prefix_read / upstream_prompt, 4) if upstream_prompt else 0.0,
            "in_flight": self.in_flight,
            "uptime_s": round(self.uptime_s(), 3),
        }


class _Collector(Collector):
    """Builds the metric families from a ``Metrics`` at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self._m = m

    def describe(self) -> Iterable[Metric]:
        # Registration must not call the cache stats provider, so no auto-describe via collect().
        return []

    def collect(self) -> Iterable[Metric]:
        m = self._m
        req = CounterMetricFamily("r1proxy_requests", "Finished client requests.",
                                  labels=["model", "status", "cache", "stream"])
        for (model, status, cache, stream), n in dict(m._requests).items():
            req.add_metric([model, str(status), cache, "true" if stream else "false"], n)
        yield req
        for name, doc, hists in (
            ("r1proxy_request_duration_seconds", "Time from request received to response finished.",
             m._latency),
            ("r1proxy_time_to_first_byte_seconds", "Time from request received to first body byte sent.",
             m._ttfb),
        ):
            fam = HistogramMetricFamily(name, doc, labels=["cache"])
            for cache, h in dict(hists).items():
                fam.add_metric([cache], h.buckets(), h.total)
            yield fam
        err = CounterMetricFamily("r1proxy_upstream_errors", "Failed upstream attempts.",
                                  labels=["upstream", "kind"])
        for (upstream, kind), n in dict(m._upstream_errors).items():
            err.add_metric([upstream, kind], n)
        yield err
        tok = CounterMetricFamily("r1proxy_tokens",
                                  "Tokens by model, type and source (cache = saved); "
                                  "reasoning is part of completion.",
                                  labels=["model", "type", "source"])
        for (model, kind, source), n in dict(m._tokens).items():
            tok.add_metric([model, kind, source], n)
        yield tok
        yield CounterMetricFamily("r1proxy_cost_saved_usd", "Upstream USD avoided by cache hits.",
                                  value=m._usd_saved)
        yield CounterMetricFamily("r1proxy_cost_spent_usd", "Upstream USD spent.", value=m._usd_spent)
        yield CounterMetricFamily("r1proxy_cost_saved_prefix_usd",
                                  "Upstream USD the provider's prompt cache saved on calls made.",
                                  value=m._usd_prefix_saved)
        pre = CounterMetricFamily("r1proxy_prefix_cache_tokens",
                                  "Prompt tokens read from (read) or written to (write) the provider's prompt cache.",
                                  labels=["model", "type"])
        for (model, kind), n in dict(m._prefix_tokens).items():
            pre.add_metric([model, kind], n)
        yield pre
        yield GaugeMetricFamily("r1proxy_in_flight_requests", "Requests being served now.", value=m.in_flight)
        yield GaugeMetricFamily("r1proxy_uptime_seconds", "Seconds since this app instance started.",
                                value=m.uptime_s())
        used = GaugeMetricFamily("r1proxy_free_requests_used_today", "Upstream calls to :free models this UTC day.",
                                 labels=["upstream"])
        left = GaugeMetricFamily("r1proxy_free_requests_left_today",
                                 "Free-model requests left this UTC day (50, or 1000 with credits).",
                                 labels=["upstream"])
        for up, (n_used, n_left) in dict(m._free).items():
            used.add_metric([up], n_used)
            left.add_metric([up], n_left)
        yield used
        yield left
        entries = GaugeMetricFamily("r1proxy_cache_entries", "Entries per cache tier.", labels=["tier"])
        size = GaugeMetricFamily("r1proxy_cache_bytes", "Stored bytes per cache tier.", labels=["tier"])
        for tier, e, b in m.cache_stats():
            entries.add_metric([tier], e)
            size.add_metric([tier], b)
        yield entries
        yield size
        events = CounterMetricFamily("r1proxy_shared_tier_events",
                                     "Shared (Redis) tier and coordination events: hits, misses, errors, lookups "
                                     "skipped while the breaker is open, writes, dropped writes, …",
                                     labels=["tier", "event"])
        breaker = GaugeMetricFamily("r1proxy_shared_tier_breaker_open",
                                    "1 while the breaker keeps the shared tier out of use (degraded), else 0.",
                                    labels=["tier"])
        for tier, report in m.tier_reports().items():
            for event, n in report.items():
                if isinstance(n, int) and not isinstance(n, bool) and event != "queued":
                    events.add_metric([tier, event], n)
            if "state" in report:
                breaker.add_metric([tier], 0 if report["state"] == "closed" else 1)
        yield events
        yield breaker
