"""What an upstream reply says it used: ``Usage`` parses an OpenAI/OpenRouter ``usage`` object once.

Every reader of token counts and cost (the cache entry, the request log, metrics, key budgets)
takes them from here, so a new field (cached tokens, cache writes, upstream discounts) is added
in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _float(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int = 0
    completion: int = 0  # includes reasoning
    reasoning: int = 0
    cost: float = 0.0  # what the upstream billed (OpenRouter's usage.cost), 0 when not reported
    cost_reported: bool = False  # whether the upstream sent a cost at all (else it is computed from prices)
    cached: int = 0  # prompt tokens read from the provider's prompt cache (part of prompt)
    cache_write: int = 0  # prompt tokens written to it (part of prompt)
    cache_discount: float | None = None  # USD the prompt cache saved, when the upstream says so

    @classmethod
    def of(cls, usage: Any) -> Usage:
        if not isinstance(usage, Mapping):
            return NO_USAGE
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else 0
        prompt_details = usage.get("prompt_tokens_details")
        pd: Mapping[str, Any] = prompt_details if isinstance(prompt_details, Mapping) else {}
        # OpenRouter: prompt_tokens_details.cached_tokens; DeepSeek's own API: prompt_cache_hit_tokens
        cached = _int(pd.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens"))
        cost = usage.get("cost")
        reported = isinstance(cost, (int, float)) and not isinstance(cost, bool)
        discount = usage.get("cache_discount")
        return cls(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), _int(reasoning),
                   _float(cost), reported, cached, _int(pd.get("cache_write_tokens")),
                   _float(discount) if isinstance(discount, (int, float)) and not isinstance(discount, bool)
                   else None)

    @classmethod
    def of_completion(cls, doc: Mapping[str, Any] | None) -> Usage:
        return cls.of(doc.get("usage")) if doc else NO_USAGE

    @property
    def tokens(self) -> int:
        return self.prompt + self.completion


NO_USAGE = Usage()
