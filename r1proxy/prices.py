"""Model prices: USD per token for prompt, completion, cache reads and writes, and what a usage costs.

``PriceBook`` answers "what does this model cost" for a deployment: the alias's config prices
(``input_usd_per_mtok`` / ``output_usd_per_mtok`` / ``cache_read_usd_per_mtok``) when set, else the
prices OpenRouter's ``GET {base_url}/models`` listed for that upstream and model id. Listed prices
are kept in the ``model_prices`` table, so they are known offline and right after a restart;
``refresh`` replaces them (the caller fetches; see ``openrouter.py``). ``cost_of`` computes a cost
from token counts for when the upstream did not report one; a reported ``usage.cost`` is always
the record (docs/cost.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config, ModelConfig
from .db import Database

MTOK = 1_000_000

_UPSERT = """
INSERT INTO model_prices (upstream, model, prompt, completion, cache_read, cache_write, fetched_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (upstream, model) DO UPDATE SET
  prompt = excluded.prompt, completion = excluded.completion, cache_read = excluded.cache_read,
  cache_write = excluded.cache_write, fetched_at = excluded.fetched_at
"""
_LOAD = "SELECT upstream, model, prompt, completion, cache_read, cache_write, fetched_at FROM model_prices"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token. ``cache_read``/``cache_write`` are None when the list gives none (then a cached
    token costs the prompt price: no discount is claimed that nobody reported)."""

    prompt: float
    completion: float
    cache_read: float | None = None
    cache_write: float | None = None
    source: str = "openrouter"  # or "config"

    @property
    def read_price(self) -> float:
        return self.prompt if self.cache_read is None else self.cache_read

    @property
    def write_price(self) -> float:
        return self.prompt if self.cache_write is None else self.cache_write


def _per_token(v: Any) -> float | None:
    """OpenRouter's price strings ("0.00000055") as floats; None for absent or unusable values."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def parse_models(doc: Any) -> dict[str, Price]:
    """{model id: Price} from a ``GET /models`` body (``{"data":[{"id", "pricing":{...}}]}``).

    Models without a usable prompt and completion price are left out (e.g. a router id whose
    pricing is "-1")."""
    out: dict[str, Price] = {}
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, list):
        return out
    for m in data:
        if not isinstance(m, Mapping) or not isinstance(m.get("id"), str):
            continue
        p = m.get("pricing")
        if not isinstance(p, Mapping):
            continue
        prompt, completion = _per_token(p.get("prompt")), _per_token(p.get("completion"))
        if prompt is None or completion is None:
            continue
        out[m["id"]] = Price(prompt, completion, _per_token(p.get("input_cache_read")),
                             _per_token(p.get("input_cache_write")))
    return out


def config_price(dep: ModelConfig | None) -> Price | None:
    """The alias's own prices, when it sets any (they override the upstream's list)."""
    if dep is None or not (dep.input_usd_per_mtok or dep.output_usd_per_mtok):
        return None
    read = dep.cache_read_usd_per_mtok / MTOK if dep.cache_read_usd_per_mtok else None
    return Price(dep.input_usd_per_mtok / MTOK, dep.output_usd_per_mtok / MTOK, read, None, source="config")


def cost_of(price: Price, prompt: int, completion: int, cached: int = 0, cache_write: int = 0) -> float:
    """USD for one response: uncached prompt tokens at the prompt price, cache reads and writes at
    theirs, completion tokens (reasoning included: OpenAI-style usage counts it in completion) once."""
    cached = max(0, min(cached, prompt))
    cache_write = max(0, min(cache_write, prompt - cached))
    plain = prompt - cached - cache_write
    return (plain * price.prompt + cached * price.read_price + cache_write * price.write_price
            + completion * price.completion)


def prefix_saving(price: Price, cached: int) -> float:
    """What the upstream's prompt cache saved on ``cached`` tokens: their prompt price minus the read price."""
    return max(0.0, cached * (price.prompt - price.read_price))


class PriceBook:
    """Config prices over listed prices, per (upstream name, model id); persisted in ``model_prices``."""

    def __init__(self, config: Config, db: Database | None = None, *,
                 now: Callable[[], float] | None = None) -> None:
        import time

        self.config = config
        self.db = db
        self.now = now or time.time
        self.listed: dict[tuple[str, str], Price] = {}
        self.fetched_at: dict[str, float] = {}  # upstream name -> when its list was last stored

    async def load(self) -> int:
        """Read the stored lists (prices survive a restart and an offline start); returns how many."""
        if self.db is None:
            return 0
        for up, model, prompt, completion, read, write, at in await self.db.fetchall(_LOAD):
            self.listed[(up, model)] = Price(prompt, completion, read, write)
            self.fetched_at[up] = max(self.fetched_at.get(up, 0.0), at or 0.0)
        return len(self.listed)

    def replace(self, upstream: str, prices: Mapping[str, Price]) -> None:
        """Take a freshly fetched list for one upstream and queue it for the database."""
        at = self.now()
        for model, p in prices.items():
            self.listed[(upstream, model)] = p
        self.fetched_at[upstream] = at
        if self.db is not None and prices:
            self.db.submit_many(_UPSERT, [(upstream, m, p.prompt, p.completion, p.cache_read, p.cache_write, at)
                                          for m, p in prices.items()])

    def lookup(self, upstream: str, model: str, dep: ModelConfig | None = None) -> Price | None:
        """The price that applies to a request answered by ``upstream``/``model`` (deployment ``dep``)."""
        own = config_price(dep)
        if own is not None:
            return own
        return self.listed.get((upstream, model))

    def stale(self, upstreams: Iterable[str], max_age: float) -> list[str]:
        """Upstreams whose list is older than ``max_age`` seconds (or missing)."""
        now = self.now()
        return [u for u in upstreams if now - self.fetched_at.get(u, 0.0) >= max_age]
