"""Upstream policy for flights: pacing queues, cool-downs, load balancing, route order.

``UpstreamPolicy`` implements the flight's ``Hooks``: before an attempt it waits for the
deployment's pacer slot (rpm / max_parallel, FIFO, bounded by ``max_queue_s``); after it, it
reports to the balancer, cools a deployment down on 429 + Retry-After, and marks the free
daily quota exhausted so later requests fail fast or fall back at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .balance import Balancer, retry_after_seconds
from .clock import Clock
from .config import Config, ModelConfig
from .errors import ProxyError
from .pacing import PacerExhausted, PacerTimeout, UpstreamPacer
from .route import Hooks, Route
from .rules import daily_quota, seconds_to_utc_midnight, upstream_failed
from .sharedlimits import PaceRefused, SharedLimits


class UpstreamPolicy(Hooks):
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.on_attempt: Callable[[Route, int, Any], None] | None = None  # told of every attempt's status
        now = self.clock.monotonic
        self._now = now
        self.pacers: dict[int, UpstreamPacer] = {}
        self.balancers: dict[str, Balancer[ModelConfig]] = {}
        self.daily_advice: dict[int, str] = {}  # deployment -> the upstream's daily-quota message
        self.shared: SharedLimits | None = None  # with [cache.redis]: pacing across processes
        for alias, deps in config.aliases().items():
            for d in deps:
                self.pacers[id(d)] = UpstreamPacer(d.rpm, d.max_parallel, name=f"{d.upstream}/{d.model}", now=now)
            self.balancers[alias] = Balancer(deps, deps[0].strategy, weights=[d.weight for d in deps],
                                             failures_to_cooldown=config.retry.failures_to_cooldown,
                                             cooldown_s=config.retry.cooldown_s, now=now)

    def state(self) -> list[dict[str, float | int | str]]:
        """Each paced deployment's queue and cool-down state (for ``/stats``)."""
        return [p.state() for p in self.pacers.values()]

    def order(self, alias: str, deps: list[ModelConfig]) -> list[ModelConfig]:
        """The alias's deployments in the order to try them (balancer's choice first)."""
        bal = self.balancers.get(alias)
        if bal is None or len(deps) < 2:
            return deps
        out: list[ModelConfig] = []
        while len(out) < len(deps):
            out.append(bal.choose(exclude=out))
        return out

    def skip(self, route: Route) -> str | None:
        dep = route.deployment
        if dep is None:
            return None
        pacer = self.pacers.get(id(dep))
        now = self._now()
        if pacer is not None and now < pacer.daily_exhausted_until:
            return "daily quota exhausted"
        bal = self.balancers.get(dep.name)
        if bal is not None and (len(bal.deployments) > 1 or dep.fallbacks) and bal.is_cooling(dep):
            return "cooling down after repeated failures"
        return None

    def _advice(self, route: Route) -> str:
        said = self.daily_advice.get(id(route.deployment))
        return f" (OpenRouter: {said})" if said else ""

    def skip_error(self, route: Route, why: str) -> ProxyError:
        pacer = self.pacers.get(id(route.deployment))
        left = pacer.daily_exhausted_until - self._now() if pacer is not None else 0.0
        if left > 0:  # a 429 the SDK must not retry, as for the upstream's own daily-quota 429
            return ProxyError(429, f"{route.label}: the free daily quota is used up; it resets in "
                                   f"{left / 3600:.1f} h{self._advice(route)}", code=429,
                              headers={"x-should-retry": "false", "Retry-After": str(max(1, round(left)))})
        return super().skip_error(route, why)

    async def before_attempt(self, route: Route) -> Any:
        dep = route.deployment
        if dep is None:
            return None
        if self.shared is not None and dep.rpm:  # the account's limit, before this process's own
            try:
                await self.shared.pace(f"{dep.upstream}/{dep.model}", dep.rpm, dep.max_queue_s)
            except PaceRefused as e:
                what = "the free daily quota is used up" if e.why == "daily" else "the upstream is at its rpm"
                raise ProxyError(429, f"{route.label}: {what} (shared across r1proxy processes); try again in "
                                      f"{max(1, round(e.retry_after))}s", code=429,
                                 headers={"Retry-After": str(max(1, round(e.retry_after))),
                                          **({"x-should-retry": "false"} if e.why == "daily" else {})}) from None
        pacer = self.pacers.get(id(dep))
        if pacer is not None:
            try:
                await pacer.acquire(dep.max_queue_s)
            except PacerExhausted as e:
                raise ProxyError(429, f"{route.label}: the free daily quota is used up; it resets in "
                                      f"{e.retry_after / 3600:.1f} h{self._advice(route)}", code=429,
                                 headers={"x-should-retry": "false"}) from None
            except PacerTimeout as e:
                raise ProxyError(429, f"{route.label}: waited {e.waited_s:.0f}s in the upstream queue "
                                      f"({e.waiting_for}); try again shortly", code=429,
                                 headers={"Retry-After": str(max(1, round(e.retry_after)))}) from None
        bal = self.balancers.get(dep.name)
        if bal is not None:
            bal.start(dep)
        return pacer

    def after_attempt(self, route: Route, token: Any, status: int, ttfb: float | None,
                      retry_after: float | None, payload: Any) -> None:
        if self.on_attempt is not None:  # the free quota counts every call (costing.Costing.on_attempt)
            self.on_attempt(route, status, payload)
        dep = route.deployment
        if dep is None:
            return
        if isinstance(token, UpstreamPacer):
            token.release()
        bal = self.balancers.get(dep.name)
        if bal is not None:
            bal.finish(dep)
            if status == 200:
                bal.report_success(dep, ttfb)
            elif upstream_failed(status):
                bal.report_failure(dep, retry_after if status == 429 else None)
        pacer = self.pacers.get(id(dep))
        if pacer is None or status != 429:
            return
        gone = daily_quota(status, payload)
        if gone is not None:
            reset = retry_after_seconds(gone.headers) if gone.headers else None
            gone_for = reset or seconds_to_utc_midnight(self.clock.now())
            pacer.mark_daily_exhausted(gone_for)
            if self.shared is not None:
                self.shared.quota_gone(f"{dep.upstream}/{dep.model}", gone_for)
            self.daily_advice[id(dep)] = gone.message[:300]  # OpenRouter's own words ("Add 10 credits to …")
        elif retry_after:
            pacer.cool_down(retry_after)  # queued requests wait it out instead of failing
