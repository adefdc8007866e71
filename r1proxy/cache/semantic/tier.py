"""The semantic tier as the gateway sees it: probe a request, find a guarded match, remember a stored answer.

``SemanticTier.probe()`` splits a request into partition + free text and embeds the text off
the event loop (the model loads lazily, once, in the worker thread). ``find()`` searches the
partition and returns the candidates that pass every guard (``guards.check``), best first, with
the refusals it met on the way. ``remember()`` indexes an entry the gateway has just stored from an
upstream answer; an answer served by this tier is never remembered, so one semantic hit never
feeds another. Whether a candidate's entry still exists and is fresh is the caller's check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from r1proxy.cache.keys import KeyMaker
from r1proxy.cache.semantic import guards
from r1proxy.cache.semantic.encoder import MAX_TOKENS, Encoder, load_encoder
from r1proxy.cache.semantic.partition import Refusal, split
from r1proxy.cache.semantic.store import Candidate, VectorStore


@dataclass(slots=True)
class Probe:
    """One request's semantic side: partition, text and vector, or why it has none."""

    partition: str = ""
    text: str = ""
    vector: Any = None
    refused: str = ""  # why this request takes no part (empty when it does)

    @property
    def usable(self) -> bool:
        return self.vector is not None


@dataclass(slots=True)
class Match:
    key: str
    similarity: float
    source_text: str


@dataclass(slots=True)
class Search:
    matches: list[Match] = field(default_factory=list)  # candidates that pass every guard, best first
    refusals: list[tuple[str, guards.Verdict]] = field(default_factory=list)  # (candidate key, verdict)

    @property
    def match(self) -> Match | None:
        return self.matches[0] if self.matches else None


class SemanticTier:
    """Probe, search and index for one app; ``threshold`` is the cosine floor."""

    def __init__(self, keys: KeyMaker, store: VectorStore, *, threshold: float = 0.95, candidates: int = 5,
                 model_dir: str = "", executor: Executor | None = None,
                 encoder: Callable[[str], Encoder] = load_encoder) -> None:
        self.keys = keys
        self.store = store
        self.threshold = threshold
        self.candidates = candidates
        self.model_dir = model_dir
        self.executor = executor
        self._load = encoder

    def _embed_sync(self, text: str) -> Any:
        enc = self._load(self.model_dir)
        if enc.token_count(text) >= MAX_TOKENS:
            return None  # truncated: the vector would not stand for the whole text
        return enc.embed(text)

    async def probe(self, upstream: str, body: dict[str, Any], namespace: str = "", share: str = "") -> Probe:
        s = split(self.keys, upstream, body, namespace, share)
        if isinstance(s, Refusal):
            return Probe(refused=s.reason)
        loop = asyncio.get_running_loop()
        vec = await loop.run_in_executor(self.executor, self._embed_sync, s.text)
        if vec is None:
            return Probe(s.partition, s.text, refused=f"text of {MAX_TOKENS}+ tokens")
        return Probe(s.partition, s.text, vec)

    async def find(self, probe: Probe) -> Search:
        """The candidates of the probe's partition that pass every guard, best first."""
        out = Search()
        if not probe.usable:
            return out
        found: list[Candidate] = await self.store.search(probe.partition, probe.vector, floor=self.threshold,
                                                          limit=self.candidates)
        for c in found:
            verdict = guards.check(probe.text, c.text, c.similarity, self.threshold)
            if verdict.ok:
                out.matches.append(Match(c.key, c.similarity, c.text))
            else:
                out.refusals.append((c.key, verdict))
        return out

    def remember(self, probe: Probe, key: str) -> None:
        """Index ``key``, an entry just stored from an upstream answer to the probed request."""
        if probe.usable:
            self.store.add(probe.partition, key, probe.text, probe.vector)

    def forget(self, key: str) -> None:
        """Drop a candidate whose entry is gone (purged or evicted) or was reported wrong."""
        self.store.forget(key)

    def indexed(self, key: str) -> bool:
        """Whether ``key`` is still indexed in SQLite (or its row is still queued): False once its entry is gone."""
        return self.store.indexed(key)
