"""A stable ``session_id`` per Roo conversation, for OpenRouter's sticky routing.

OpenRouter keeps a conversation on the provider holding its prompt cache; with ``session_id`` in
the body that starts on the first successful request instead of after the first observed cache
hit (docs/cost.md §4). The id is derived from what every turn of one conversation repeats
unchanged: the model, the first system (or developer) message and the first other message, by
their text (content-part shape and ``cache_control`` marks, which Roo moves from turn to turn,
do not count). A continuation therefore inherits its conversation's id without any state here,
and identical requests get identical ids. It goes only into the body sent upstream, never into
the cache key, and a client's own ``session_id`` is kept.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from .config import UpstreamConfig

PREFIX = "r1p-"
SYSTEM_ROLES = ("system", "developer")


def _text(content: Any) -> Any:
    """Content by its text: one text part is the same as a plain string; marks on parts do not count."""
    if isinstance(content, list):
        parts = [p.get("text", p) if isinstance(p, dict) and p.get("type") == "text" else p for p in content]
        return parts[0] if len(parts) == 1 else parts
    return content


def derive(payload: dict[str, Any]) -> str | None:
    """The conversation's id from an upstream body, or None when it has no messages."""
    messages = [m for m in payload.get("messages") or () if isinstance(m, dict)]
    if not messages:
        return None
    system = next((m for m in messages if m.get("role") in SYSTEM_ROLES), None)
    first = next((m for m in messages if m.get("role") not in SYSTEM_ROLES), None)
    seed = [payload.get("model"),
            None if system is None else _text(system.get("content")),
            None if first is None else [first.get("role"), _text(first.get("content"))]]
    digest = xxhash.xxh3_64_hexdigest(json.dumps(seed, sort_keys=True, ensure_ascii=False).encode())
    return PREFIX + digest


def with_session_id(payload: dict[str, Any], up: UpstreamConfig) -> dict[str, Any]:
    """The body with a ``session_id`` when the upstream is OpenRouter-kind and wants one."""
    if not (up.is_openrouter and up.session_ids) or "session_id" in payload:
        return payload
    sid = derive(payload)
    return payload if sid is None else {**payload, "session_id": sid}
