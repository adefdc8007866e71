"""Choosing a deployment of a model alias, and retry timing.

``Balancer`` picks among an alias's deployments (round-robin, least-busy or latency), tracks in-flight counts,
time-to-first-byte EWMAs and consecutive failures, and cools a failing deployment down. ``backoff_delay`` and
``retry_after_seconds`` are the retry-timing rules. Pure: no aiohttp imports; clock and rng are injected.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]
STRATEGIES = ("round-robin", "least-busy", "latency")


@dataclass
class DeploymentState:
    """What the balancer knows about one deployment."""

    weight: int = 1
    in_flight: int = 0
    ewma_ttfb: float | None = None
    consecutive_failures: int = 0
    cooling_until: float = -math.inf
    successes: int = 0
    failures: int = 0
    last_pick: int = 0
    current: float = 0.0  # smooth weighted round-robin accumulator


class Balancer(Generic[T]):
    """Picks deployments of one alias. A deployment is cooled for ``cooldown_s`` after
    ``failures_to_cooldown`` consecutive failures; after that it is half-open: one more failure cools it
    again, one success clears it."""

    def __init__(self, deployments: Sequence[T], strategy: str = "round-robin", *,
                 weights: Sequence[int] | None = None, failures_to_cooldown: int = 3,
                 cooldown_s: float = 30.0, ewma_alpha: float = 0.3, now: Clock = time.monotonic) -> None:
        if not deployments:
            raise ValueError("a balancer needs at least one deployment")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        self.deployments = list(deployments)
        self.strategy = strategy
        self.failures_to_cooldown = max(1, failures_to_cooldown)
        self.cooldown_s = cooldown_s
        self.ewma_alpha = ewma_alpha
        self._now = now
        ws = list(weights) if weights is not None else [1] * len(self.deployments)
        if len(ws) != len(self.deployments):
            raise ValueError("weights must match deployments")
        self._states = [DeploymentState(weight=max(1, w)) for w in ws]
        self._picks = 0

    def _index(self, dep: T) -> int:
        for i, d in enumerate(self.deployments):
            if d is dep:
                return i
        return self.deployments.index(dep)

    def state(self, dep: T) -> DeploymentState:
        """The live state of ``dep`` (read it, don't write it)."""
        return self._states[self._index(dep)]

    def is_cooling(self, dep: T) -> bool:
        return self.state(dep).cooling_until > self._now()

    def choose(self, exclude: Collection[T] = ()) -> T:
        """The deployment to use next, skipping ``exclude`` (already tried for this request) and cooling ones.

        If every candidate is cooling, the one that recovers soonest; if all are excluded, from all of them.
        """
        now = self._now()
        excluded = {self._index(d) for d in exclude}
        candidates = [i for i in range(len(self.deployments)) if i not in excluded] or list(
            range(len(self.deployments)))
        warm = [i for i in candidates if self._states[i].cooling_until <= now]
        if not warm:
            i = min(candidates, key=lambda j: (self._states[j].cooling_until, self._states[j].last_pick))
        elif self.strategy == "least-busy":
            i = min(warm, key=lambda j: (self._states[j].in_flight, self._states[j].last_pick))
        elif self.strategy == "latency":
            untried = [j for j in warm if self._states[j].ewma_ttfb is None]
            if untried:
                i = min(untried, key=lambda j: self._states[j].last_pick)
            else:
                i = min(warm, key=lambda j: (self._states[j].ewma_ttfb or 0.0, self._states[j].last_pick))
        else:
            i = self._weighted_round_robin(warm)
        self._picks += 1
        self._states[i].last_pick = self._picks
        return self.deployments[i]

    def _weighted_round_robin(self, warm: list[int]) -> int:
        # nginx's smooth weighted round-robin: even spread, exact proportions, deterministic.
        total = 0
        for j in warm:
            st = self._states[j]
            st.current += st.weight
            total += st.weight
        best = max(warm, key=lambda j: (self._states[j].current, -j))
        self._states[best].current -= total
        return best

    def start(self, dep: T) -> None:
        """A request to ``dep`` began (for least-busy)."""
        self.state(dep).in_flight += 1

    def finish(self, dep: T) -> None:
        """A request to ``dep`` ended, successfully or not."""
        st = self.state(dep)
        st.in_flight = max(0, st.in_flight - 1)

    def report_success(self, dep: T, ttfb: float | None = None) -> None:
        """``dep`` answered; ``ttfb`` (seconds to first byte) feeds the latency EWMA. Clears any cool-down."""
        st = self.state(dep)
        st.successes += 1
        st.consecutive_failures = 0
        st.cooling_until = -math.inf
        if ttfb is not None:
            st.ewma_ttfb = ttfb if st.ewma_ttfb is None else (
                self.ewma_alpha * ttfb + (1 - self.ewma_alpha) * st.ewma_ttfb)

    def report_failure(self, dep: T, retry_after: float | None = None) -> None:
        """``dep`` failed (5xx, 429, timeout, connect error). A ``retry_after`` from the upstream cools it
        at once for that long; otherwise it cools after ``failures_to_cooldown`` consecutive failures."""
        st = self.state(dep)
        now = self._now()
        st.failures += 1
        st.consecutive_failures += 1
        if retry_after is not None and retry_after > 0:
            st.cooling_until = max(st.cooling_until, now + retry_after)
        if st.consecutive_failures >= self.failures_to_cooldown:
            st.cooling_until = max(st.cooling_until, now + self.cooldown_s)


def backoff_delay(attempt: int, base: float, max_delay: float, rng: random.Random | None = None, *,
                  floor: float = 0.0) -> float:
    """Jittered exponential backoff: uniform in [floor × c, c] with c = min(max_delay, base * 2**attempt);
    attempt 0 = first retry. floor 0 is full jitter."""
    ceiling = min(max_delay, base * 2.0 ** min(max(attempt, 0), 62))
    return (rng or random).uniform(floor * ceiling, ceiling)


def retry_after_seconds(headers: Mapping[str, str], *, now_epoch: Clock = time.time) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``Retry-After`` (seconds or HTTP date), or else OpenRouter's
    ``X-RateLimit-Reset`` (epoch ms). None when none is present or parseable; never negative."""
    h = {k.lower(): v.strip() for k, v in headers.items()}
    ms = _number(h.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000.0)
    ra = h.get("retry-after")
    if ra:
        secs = _number(ra)
        if secs is not None:
            return max(0.0, secs)
        try:
            when = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now_epoch())
    reset = _number(h.get("x-ratelimit-reset"))
    if reset is not None:
        # OpenRouter sends epoch milliseconds; accept epoch seconds too.
        at = reset / 1000.0 if reset > 1e11 else reset
        if at > 1e9:
            return max(0.0, at - now_epoch())
        return max(0.0, reset)  # a small number: already a delta in seconds
    return None


def _number(v: str | None) -> float | None:
    if not v:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None
