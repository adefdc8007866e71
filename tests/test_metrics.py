"""Metrics: a known event sequence gives exact figures in snapshot() and in the Prometheus text."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from r1proxy import metrics as metrics_mod
from r1proxy.metrics import BUCKETS, Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def lbl(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


@pytest.fixture
def loaded() -> tuple[Metrics, FakeClock]:
    clock = FakeClock()
    m = Metrics(clock=clock, process_metrics=False)
    m.set_cache_stats([("memory", 3, 1200), ("sqlite", 40, 99000)])
    m.request_done("r1", 200, "MISS", 2.0, 0.3, True)
    m.request_done("r1", 200, "HIT", 0.0004, 0.0002, True)
    m.request_done("r1", 200, "HIT", 0.0008, None, False)
    m.request_done("r1", 200, "COALESCED", 1.5, 0.9, True)
    m.request_done("v3", 200, "STALE", 0.003, 0.001, False)
    m.request_done("v3", 502, "MISS", 70.0, None, False)
    m.request_done("v3", 400, "BYPASS", 0.01, None, False)
    m.upstream_error("openrouter", "timeout")
    m.upstream_error("openrouter", "timeout")
    m.upstream_error("openrouter", "http_5xx")
    m.tokens("r1", 100, 50, 20)
    m.tokens("r1", 100, 50, 20, cached=True)
    m.tokens("v3", 10, 5, 0, cached=True)
    m.cost_spent(0.25)
    m.cost_saved(0.125)
    m.cost_saved(0.125)
    clock.now += 12.5
    return m, clock


def test_snapshot_exact(loaded: tuple[Metrics, FakeClock]) -> None:
    m, _ = loaded
    snap = m.snapshot()
    json.dumps(snap)  # /stats must be JSON-serialisable as is
    assert snap["total_requests"] == 7
    assert snap["hits"] == 4  # HIT×2 + COALESCED + STALE
    assert snap["misses"] == 2
    assert snap["overall_hit_rate"] == pytest.approx(4 / 6)
    assert snap["requests_by_status"] == {"200": 5, "502": 1, "400": 1}
    assert snap["requests_by_model"] == {"r1": 4, "v3": 3}
    assert snap["requests_by_cache"] == {"MISS": 2, "HIT": 2, "COALESCED": 1, "STALE": 1, "BYPASS": 1}
    assert (snap["l1_cache_size"], snap["l1_cache_bytes"]) == (3, 1200)
    assert (snap["l2_cache_size"], snap["l2_cache_bytes"]) == (40, 99000)
    assert snap["upstream_errors"] == 3
    assert snap["upstream_errors_by_upstream"] == {"openrouter": {"timeout": 2, "http_5xx": 1}}
    assert snap["tokens_saved"] == 165  # reasoning is inside completion, not added again
    assert snap["tokens_spent"] == 150
    assert snap["usd_saved"] == 0.25
    assert snap["usd_spent"] == 0.25
    assert snap["in_flight"] == 0
    assert snap["uptime_s"] == 12.5


def test_exposition_exact(loaded: tuple[Metrics, FakeClock]) -> None:
    m, _ = loaded
    s = samples(m)
    assert s[("r1proxy_requests_total", lbl(model="r1", status="200", cache="HIT", stream="true"))] == 1
    assert s[("r1proxy_requests_total", lbl(model="r1", status="200", cache="HIT", stream="false"))] == 1
    assert s[("r1proxy_requests_total", lbl(model="v3", status="502", cache="MISS", stream="false"))] == 1
    assert sum(v for (n, _), v in s.items() if n == "r1proxy_requests_total") == 7

    hit = "r1proxy_request_duration_seconds"
    assert s[(hit + "_bucket", lbl(cache="HIT", le="0.0005"))] == 1
    assert s[(hit + "_bucket", lbl(cache="HIT", le="0.001"))] == 2
    assert s[(hit + "_bucket", lbl(cache="HIT", le="+Inf"))] == 2
    assert s[(hit + "_count", lbl(cache="HIT"))] == 2
    assert s[(hit + "_sum", lbl(cache="HIT"))] == pytest.approx(0.0012)
    assert s[(hit + "_bucket", lbl(cache="MISS", le="2.5"))] == 1
    assert s[(hit + "_bucket", lbl(cache="MISS", le="60.0"))] == 1  # the 70 s one is only in +Inf
    assert s[(hit + "_bucket", lbl(cache="MISS", le="+Inf"))] == 2
    assert len([k for k in s if k[0] == hit + "_bucket" and ("cache", "HIT") in k[1]]) == len(BUCKETS) + 1

    ttfb = "r1proxy_time_to_first_byte_seconds"
    assert s[(ttfb + "_count", lbl(cache="HIT"))] == 1  # the None ttfb is not observed
    assert s[(ttfb + "_count", lbl(cache="MISS"))] == 1
    assert (ttfb + "_count", lbl(cache="BYPASS")) not in s

    assert s[("r1proxy_upstream_errors_total", lbl(upstream="openrouter", kind="timeout"))] == 2
    assert s[("r1proxy_tokens_total", lbl(model="r1", type="prompt", source="cache"))] == 100
    assert s[("r1proxy_tokens_total", lbl(model="r1", type="reasoning", source="upstream"))] == 20
    assert ("r1proxy_tokens_total", lbl(model="v3", type="reasoning", source="cache")) not in s
    assert s[("r1proxy_cost_saved_usd_total", lbl())] == 0.25
    assert s[("r1proxy_cost_spent_usd_total", lbl())] == 0.25
    assert s[("r1proxy_in_flight_requests", lbl())] == 0
    assert s[("r1proxy_uptime_seconds", lbl())] == 12.5
    assert s[("r1proxy_cache_entries", lbl(tier="memory"))] == 3
    assert s[("r1proxy_cache_bytes", lbl(tier="sqlite"))] == 99000


def test_in_flight_gauge() -> None:
    m = Metrics(process_metrics=False)
    m.inc_in_flight()
    m.inc_in_flight()
    assert m.snapshot()["in_flight"] == 2
    assert samples(m)[("r1proxy_in_flight_requests", lbl())] == 2
    m.dec_in_flight()
    m.dec_in_flight()
    assert m.in_flight == 0


def test_private_registries_do_not_collide() -> None:
    # Process collectors too: on one shared registry the second would raise "Duplicated timeseries".
    a, b = Metrics(), Metrics()
    a.request_done("x", 200, "HIT", 0.001, None, False)
    assert b.snapshot()["total_requests"] == 0
    assert REGISTRY.get_sample_value(
        "r1proxy_requests_total", {"model": "x", "status": "200", "cache": "HIT", "stream": "false"}) is None
    assert a.registry.get_sample_value(
        "r1proxy_requests_total", {"model": "x", "status": "200", "cache": "HIT", "stream": "false"}) == 1
    assert b"process_resident_memory_bytes" in a.render()[0]


def test_pushed_tier_stats_objects() -> None:
    @dataclass
    class TierStats:  # the shape r1proxy.cache returns from its async stats()
        name: str
        entries: int
        bytes: int
        raw_bytes: int = 0

    m = Metrics(process_metrics=False)
    m.set_cache_stats([TierStats("memory", 2, 300, 900), TierStats("sqlite", 5, 1000, 4000)])
    snap = m.snapshot()
    assert (snap["l1_cache_size"], snap["l1_cache_bytes"], snap["l2_cache_size"], snap["l2_cache_bytes"]) == (
        2, 300, 5, 1000)
    assert samples(m)[("r1proxy_cache_entries", lbl(tier="sqlite"))] == 5


def test_model_label_cardinality_is_capped() -> None:
    m = Metrics(process_metrics=False, max_models=2)
    for name in ("a", "b", "c", "d", "a"):
        m.request_done(name, 200, "MISS", 0.1, None, False)
    m.tokens("e", 1, 1)
    assert m.snapshot()["requests_by_model"] == {"a": 2, "b": 1, metrics_mod.OTHER_MODEL: 2}
    assert samples(m)[("r1proxy_tokens_total", lbl(model=metrics_mod.OTHER_MODEL, type="prompt",
                                                   source="upstream"))] == 1


def test_openmetrics_negotiation() -> None:
    m = Metrics(process_metrics=False)
    m.request_done("x", 200, "HIT", 0.001, None, False)
    body, ctype = m.render("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_empty_snapshot_hit_rate_is_zero() -> None:
    snap = Metrics(process_metrics=False).snapshot()
    assert snap["overall_hit_rate"] == 0.0
    assert snap["total_requests"] == 0
