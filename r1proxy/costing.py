"""Money per request: what was spent upstream, what the local cache saved, what the upstream's
prompt cache saved, and whether a figure was reported by the upstream or computed from prices.

``Costing`` is one app's owner of the ``PriceBook``, the ``FreeQuota`` and the ``AccountWatch``
that keeps both current. ``figures`` is the one rule for a request's money (docs/cost.md §8):

- a request that made its own upstream call spent the upstream's ``usage.cost`` when it sent one
  ("reported"), else prompt/cached/completion tokens x the applicable prices ("computed");
- a request served from the cache (HIT, STALE, a coalesced follower) spent $0 and saved what the
  answer it got cost when it was bought (reported, or computed the same way);
- the upstream's prompt cache saved ``cache_discount`` when reported, else cached tokens x
  (prompt price - cache-read price); nothing when no price is known. Such an estimate on an
  OpenRouter call is replaced later by OpenRouter's own figure (``reconcile``, generations.py).

``on_attempt`` sees every upstream attempt (the policy calls it) and counts ``:free`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import Config, ModelConfig
from .db import Database
from .generations import Generations, Pending
from .openrouter import AccountWatch
from .prices import Price, PriceBook, cost_of, prefix_saving
from .quota import FreeQuota, is_free_model
from .route import Route
from .rules import daily_quota, served_from_cache
from .usage import Usage

log = logging.getLogger("r1proxy")

REPORTED, COMPUTED = "reported", "computed"


@dataclass(frozen=True, slots=True)
class Money:
    spent: float = 0.0  # paid upstream for this request
    saved: float = 0.0  # by the local cache (served from it)
    prefix_saved: float = 0.0  # by the upstream's prompt cache, on a call this request made
    source: str = ""  # REPORTED, COMPUTED, or "" when no figure is known
    prefix_source: str = ""  # the same for prefix_saved (COMPUTED: an estimate from listed prices)


NO_MONEY = Money()


class Costing:
    def __init__(self, config: Config, session: aiohttp.ClientSession | None = None, db: Database | None = None,
                 *, now: Callable[[], float] | None = None) -> None:
        import time

        self.config = config
        self.prices = PriceBook(config, db, now=now or time.time)
        self.quota = FreeQuota(db, now=now or time.time)
        self.watch = AccountWatch(config, session, self.prices, self.quota) if session is not None else None
        self.generations = Generations(session, db) if session is not None else None
        self._deployments: dict[tuple[str, str], ModelConfig | None] = {}
        aliases = config.aliases()
        self._alias_first = {name: (deps[0].upstream, deps[0].model) for name, deps in aliases.items()}
        # the upstreams whose free quota is worth showing: OpenRouter ones with a :free model configured
        self.free_upstreams = sorted({m.upstream for m in config.models if is_free_model(m.model)
                                      and config.upstreams[m.upstream].is_openrouter})

    async def start(self) -> None:
        """Prices and quota from the database (offline and after a restart), then the account watch."""
        await self.prices.load()
        await self.quota.load()
        if self.watch is not None:
            self.watch.start()

    async def stop(self) -> None:
        if self.watch is not None:
            await self.watch.stop()
        if self.generations is not None:
            await self.generations.close()

    # -- prices ------------------------------------------------------------------------------

    def _deployment(self, upstream: str, model: str) -> ModelConfig | None:
        key = (upstream, model)
        if key not in self._deployments:
            self._deployments[key] = next((m for m in self.config.models if m.upstream == upstream
                                           and m.model == model), None)
        return self._deployments[key]

    def where(self, route: str, alias: str, upstream_model: str) -> tuple[str, str]:
        """(upstream name, model id) that answered: the flight's route label ("upstream/model"), or for
        a cache hit the alias's first deployment (what its cache key stands for)."""
        if route and "/" in route:
            up, _, model = route.partition("/")
            return up, model
        if alias in self._alias_first:
            return self._alias_first[alias]
        return self.config.server.default_upstream, upstream_model or alias

    def price(self, upstream: str, model: str) -> Price | None:
        return self.prices.lookup(upstream, model, self._deployment(upstream, model))

    # -- money -------------------------------------------------------------------------------

    def figures(self, cache: str, usage: Usage, upstream: str, model: str) -> Money:
        """The money of one finished request (see the module docstring)."""
        if not (usage.prompt or usage.completion or usage.cost_reported):
            return NO_MONEY
        # a price is looked up only for a figure computed from it (figures runs for every request)
        price: Price | None = None
        if usage.cost_reported:
            value, source = usage.cost, REPORTED
        elif (price := self.price(upstream, model)) is not None:
            value, source = cost_of(price, usage.prompt, usage.completion, usage.cached, usage.cache_write), COMPUTED
        else:
            value, source = 0.0, ""
        if served_from_cache(cache):
            return Money(0.0, value, 0.0, source)
        if usage.cache_discount is not None:
            prefix, prefix_source = usage.cache_discount, REPORTED
        elif usage.cached:
            if price is None and usage.cost_reported:
                price = self.price(upstream, model)
            prefix = prefix_saving(price, usage.cached) if price is not None else 0.0
            prefix_source = COMPUTED
        else:
            prefix, prefix_source = 0.0, ""
        return Money(value, 0.0, prefix, source, prefix_source)

    def reconcile(self, money: Money, upstream: str, generation_id: str, ts: float,
                  correct: Callable[[float], None]) -> bool:
        """After a call whose prompt-cache saving is an estimate: ask OpenRouter for its own figure
        (generations.py), which then replaces the estimate. True when that was started."""
        up = self.config.upstreams.get(upstream)
        if (self.generations is None or money.prefix_source != COMPUTED or not generation_id
                or up is None or not up.is_openrouter):
            return False
        return self.generations.want(Pending(up, generation_id, ts, money.prefix_saved, correct))

    # -- the free quota ----------------------------------------------------------------------

    def on_attempt(self, route: Route, status: int, payload: Any) -> None:
        """One upstream attempt ended with ``status`` (0: no connection); counts ``:free`` calls."""
        up = route.upstream
        if not up.is_openrouter or route.deployment is None:
            return
        model = route.deployment.model
        if not is_free_model(model):
            return
        gone = daily_quota(status, payload)
        if gone is not None:
            self.quota.exhausted(up.name, gone.headers or None)
            return
        self.quota.count(up.name, model, status)

    def free_quota(self) -> dict[str, dict[str, Any]]:
        """Per OpenRouter upstream with a ``:free`` model: used, limit and left today (for /stats)."""
        return self.quota.status(self.free_upstreams)

    def quota_text(self) -> str:
        """"free requests left today: N (resets 00:00 UTC)" (per upstream when there are several)."""
        ups = self.free_upstreams
        if not ups:
            return ""
        if len(ups) == 1:
            return self.quota.text(ups[0])
        return "; ".join(f"{u}: {self.quota.text(u)}" for u in ups)
