"""r1proxy.ratelimit: bucket arithmetic, tpm window, parallel cap, budgets, headers; fake clock only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from r1proxy.config import KeyConfig
from r1proxy.ratelimit import Decision, KeyLimiter, SlidingWindow, TokenBucket


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class Limits:
    name: str = "alice"
    rpm: int = 0
    tpm: int = 0
    max_parallel: int = 0
    daily_tokens: int = 0
    daily_usd: float = 0.0


def test_bucket_burst_then_refill() -> None:
    clock = Clock()
    b = TokenBucket(60, burst=3, now=clock)
    assert [b.try_take()[0] for _ in range(4)] == [True, True, True, False]
    ok, wait, left = b.try_take()
    assert not ok and wait == pytest.approx(1.0) and left == 0
    clock.t += 0.5
    assert b.try_take() == (False, pytest.approx(0.5), 0)
    clock.t += 0.5
    assert b.try_take()[0]
    clock.t += 100
    assert b.try_take() == (True, 0.0, 2)  # capped at burst
    assert b.try_take(5)[1] == math.inf  # can never hold 5


def test_bucket_unlimited_and_clock_going_back() -> None:
    clock = Clock()
    assert TokenBucket(0, now=clock).try_take(1000)[0]
    b = TokenBucket(60, burst=1, now=clock)
    assert b.try_take()[0]
    clock.t -= 10  # a non-monotonic clock must not mint tokens
    assert not b.try_take()[0]


@pytest.mark.parametrize("rpm,burst", [(20, 20), (60, 5), (7, 1), (1000, 50)])
def test_bucket_holds_rate_within_5_percent(rpm: int, burst: int) -> None:
    """Hammered every 10 ms for 10 minutes: grants ≤ burst + rate·T, and ≥ 95 % of that."""
    clock = Clock()
    b = TokenBucket(rpm, burst, now=clock)
    granted = 0
    for _ in range(60_000):
        granted += b.try_take()[0]
        clock.t += 0.01
    bound = burst + rpm * 10
    assert granted <= bound
    assert granted >= 0.95 * bound


def test_sliding_window_expiry() -> None:
    clock = Clock()
    w = SlidingWindow(60, now=clock)
    w.add(100)
    clock.t += 30
    w.add(50)
    assert w.total() == 150 and w.count() == 2
    assert w.wait_until_below(120) == pytest.approx(30)
    assert w.wait_until_below(200) == 0
    clock.t += 30
    assert w.total() == 50 and w.oldest_expiry() == pytest.approx(30)


def test_rpm_decision_and_headers() -> None:
    clock = Clock()
    lim = KeyLimiter([Limits(rpm=2)], now=clock)
    d1 = lim.acquire("alice")
    assert d1.allowed and d1.limit == 2 and d1.remaining == 1
    assert d1.headers() == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "1", "x-ratelimit-reset": "30"}
    assert lim.acquire("alice").allowed
    d3 = lim.acquire("alice")
    assert not d3.allowed and d3.reason == "rpm" and d3.retry_after == pytest.approx(30)
    assert d3.headers()["Retry-After"] == "30" and d3.headers()["x-ratelimit-remaining"] == "0"
    assert lim.in_flight("alice") == 2  # refused requests take no slot
    clock.t += 30
    assert lim.acquire("alice").allowed


def test_unknown_and_unlimited_keys_pass() -> None:
    lim = KeyLimiter([Limits(name="bob")], now=Clock())
    assert lim.acquire("nobody") == Decision(True)
    assert all(lim.acquire("bob").allowed for _ in range(1000))
    assert Decision(True).headers() == {}


def test_tpm_counts_after_the_fact() -> None:
    clock = Clock()
    lim = KeyLimiter([Limits(tpm=1000)], now=clock)
    assert lim.acquire("alice").allowed
    lim.add_tokens("alice", 600)
    d = lim.acquire("alice")
    assert d.allowed and d.limit == 1000 and d.remaining == 400
    lim.add_tokens("alice", 500)  # over: a request is refused while the last minute's count ≥ tpm
    clock.t += 10
    d = lim.acquire("alice")
    assert not d.allowed and d.reason == "tpm" and d.retry_after == pytest.approx(50)
    clock.t += 50
    assert lim.acquire("alice").allowed


def test_parallel_cap_is_released() -> None:
    lim = KeyLimiter([Limits(max_parallel=2)], now=Clock())
    assert lim.acquire("alice").allowed and lim.acquire("alice").allowed
    refused = lim.acquire("alice")
    assert not refused.allowed and refused.reason == "parallel" and refused.headers()["Retry-After"] == "1"
    lim.release("alice")
    lim.release("alice")
    assert lim.in_flight("alice") == 0
    lim.release("alice")  # an extra release never goes negative
    assert lim.in_flight("alice") == 0


def test_budget_exceeded() -> None:
    lim = KeyLimiter([Limits(daily_tokens=1000, daily_usd=0.5), Limits(name="free")], now=Clock())
    assert lim.budget_exceeded("alice", {"tokens": 999, "usd": 0.1}) is None
    assert lim.budget_exceeded("alice", {"tokens": 1000}) == "daily_tokens"
    assert lim.budget_exceeded("alice", {"tokens": 0, "usd": 0.5}) == "daily_usd"
    assert lim.budget_exceeded("free", {"tokens": 10**9, "usd": 10**6}) is None
    assert lim.budget_exceeded("nobody", {"tokens": 10**9}) is None


def test_accepts_keyconfig_and_reload_keeps_usage() -> None:
    clock = Clock()
    key = KeyConfig(name="k", key_sha256="0" * 64, rpm=1, tpm=100)
    lim = KeyLimiter([key], now=clock)
    assert lim.acquire("k").allowed
    lim.add_tokens("k", 100)
    lim.set_limits(KeyConfig(name="k", key_sha256="0" * 64, rpm=5, tpm=100))
    assert lim.in_flight("k") == 1
    assert lim.acquire("k").reason == "tpm"


def test_key_rpm_holds_over_a_burst_of_clients() -> None:
    """Ten clients each retrying every 0.1 s for 5 minutes against rpm=30: within 5 % of burst + rpm·T."""
    clock = Clock()
    lim = KeyLimiter([Limits(rpm=30)], now=clock)
    granted = 0
    for _ in range(3000):
        for _ in range(10):
            d = lim.acquire("alice")
            if d.allowed:
                granted += 1
                lim.release("alice")
        clock.t += 0.1
    bound = 30 + 30 * 5
    assert 0.95 * bound <= granted <= bound
