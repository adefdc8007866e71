"""r1proxy.balance: strategies, cool-down, backoff jitter bounds, Retry-After parsing; fake clock and rng."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from r1proxy.balance import Balancer, backoff_delay, retry_after_seconds
from r1proxy.config import ModelConfig


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_round_robin_cycles() -> None:
    b = Balancer(["a", "b", "c"], now=Clock())
    assert [b.choose() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_weighted_round_robin_is_smooth_and_exact() -> None:
    b = Balancer(["a", "b"], weights=[3, 1], now=Clock())
    picks = [b.choose() for _ in range(8)]
    assert Counter(picks) == {"a": 6, "b": 2}
    assert "b" in picks[:4] and "b" in picks[4:]


def test_works_with_unhashable_modelconfigs() -> None:
    deps = [ModelConfig(name="r1", model="deepseek/deepseek-r1"), ModelConfig(name="r1", model="x/r1")]
    b = Balancer(deps, now=Clock())
    first = b.choose()
    b.report_failure(first)
    assert b.state(first).failures == 1
    assert b.choose(exclude=[first]) is deps[1]


def test_least_busy() -> None:
    b = Balancer(["a", "b", "c"], "least-busy", now=Clock())
    b.start("a")
    b.start("a")
    b.start("b")
    assert b.choose() == "c"
    b.start("c")
    b.start("c")
    assert b.choose() == "b"
    b.start("b")
    assert b.state("b").in_flight == 2
    b.finish("b")
    b.finish("a")
    b.finish("a")
    b.finish("a")  # never negative
    assert b.state("a").in_flight == 0 and b.choose() == "a"


def test_latency_explores_untried_then_prefers_fastest() -> None:
    b = Balancer(["a", "b", "c"], "latency", ewma_alpha=0.5, now=Clock())
    tried = [b.choose(), b.choose(), b.choose()]
    assert sorted(tried) == ["a", "b", "c"]
    b.report_success("a", 2.0)
    b.report_success("b", 1.0)
    assert b.choose() == "c"  # still untried
    b.report_success("c", 3.0)
    assert b.choose() == "b"
    b.report_success("b", 5.0)  # EWMA 3.0 now; a (2.0) is best
    assert b.state("b").ewma_ttfb == pytest.approx(3.0)
    assert b.choose() == "a"


def test_cooldown_after_consecutive_failures() -> None:
    clock = Clock()
    b = Balancer(["a", "b"], failures_to_cooldown=2, cooldown_s=30, now=clock)
    b.report_failure("a")
    assert not b.is_cooling("a")
    b.report_success("a")
    b.report_failure("a")
    assert not b.is_cooling("a")  # the success reset the streak
    b.report_failure("a")
    assert b.is_cooling("a")
    assert {b.choose() for _ in range(4)} == {"b"}
    clock.t += 30
    assert not b.is_cooling("a")
    assert "a" in {b.choose() for _ in range(2)}
    b.report_failure("a")  # half-open: one more failure cools it again
    assert b.is_cooling("a")
    b.report_success("a")
    assert not b.is_cooling("a")


def test_all_cooling_picks_soonest_recovery() -> None:
    clock = Clock()
    b = Balancer(["a", "b", "c"], failures_to_cooldown=1, cooldown_s=30, now=clock)
    b.report_failure("b")
    clock.t += 5
    b.report_failure("a")
    b.report_failure("c", retry_after=60)
    assert b.choose() == "b"
    assert b.choose(exclude=["b"]) == "a"
    assert b.choose(exclude=["a", "b", "c"]) == "b"  # everything excluded: fall back to all


def test_retry_after_cools_immediately() -> None:
    clock = Clock()
    b = Balancer(["a", "b"], failures_to_cooldown=5, now=clock)
    b.report_failure("a", retry_after=10)
    assert b.is_cooling("a") and b.state("a").cooling_until == 110
    clock.t += 10
    assert not b.is_cooling("a")


def test_rejects_bad_setup() -> None:
    with pytest.raises(ValueError):
        Balancer([])
    with pytest.raises(ValueError):
        Balancer(["a"], "random")
    with pytest.raises(ValueError):
        Balancer(["a"], weights=[1, 2])


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0), (10_000, 8.0)]:
        values = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(2000)]
        assert all(0.0 <= v <= ceiling for v in values)
        assert max(values) > 0.9 * ceiling and min(values) < 0.1 * ceiling  # really full jitter
        assert sum(values) / len(values) == pytest.approx(ceiling / 2, rel=0.05)
    assert backoff_delay(3, 0.5, 8.0, random.Random(1)) == backoff_delay(3, 0.5, 8.0, random.Random(1))


def test_retry_after_seconds_forms() -> None:
    now = 1_745_000_000.0
    clock = Clock(now)
    assert retry_after_seconds({"Retry-After": "3"}, now_epoch=clock) == 3
    assert retry_after_seconds({"retry-after": "1.5"}, now_epoch=clock) == 1.5
    assert retry_after_seconds({"Retry-After": "-4"}, now_epoch=clock) == 0
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}, now_epoch=clock) == 0.25
    date = format_datetime(datetime.fromtimestamp(now + 42, tz=UTC), usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now_epoch=clock) == pytest.approx(42)
    past = format_datetime(datetime.fromtimestamp(now - 42, tz=UTC), usegmt=True)
    assert retry_after_seconds({"Retry-After": past}, now_epoch=clock) == 0
    reset_ms = str(int((now + 3600) * 1000))
    assert retry_after_seconds({"X-RateLimit-Reset": reset_ms}, now_epoch=clock) == pytest.approx(3600)
    reset_s = str(int(now + 60))
    assert retry_after_seconds({"X-RateLimit-Reset": reset_s}, now_epoch=clock) == pytest.approx(60)
    assert retry_after_seconds({"Retry-After": "5", "X-RateLimit-Reset": reset_ms}, now_epoch=clock) == 5
    assert retry_after_seconds({"Retry-After": "soon"}, now_epoch=clock) is None
    assert retry_after_seconds({"Retry-After": "nan"}, now_epoch=clock) is None
    assert retry_after_seconds({}, now_epoch=clock) is None
