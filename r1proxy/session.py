"""A stable ``session_id`` per Roo conversation, for OpenRouter's sticky routing.

OpenRouter keeps a conversation on the provider holding its prompt cache; with ``session_id`` in
the body that starts on the first successful request instead of after the first observed cache
hit (docs/cost.md §4). The id is derived from what every turn of one conversation repeats
unchanged: the model, the first system (or developer) message and the first other message, by
their text (content-part shape and ``cache_control`` marks, which Roo moves from turn to turn,
do not count). A continuation therefore inherits its conversation's id without any state here,
and identical requests get identical ids. It goes only into the body sent upstream, never into
the cache key, and a client's own ``session_id`` is kept. The id hashes ``json.dumps(seed, sort_keys=True,
ensure_ascii=False)``; the usual seed (strings, lists of strings) is spelled with orjson, byte for byte
the same (a miss derives the id before its upstream call: ~70 us with json for Roo's 20 KB system prompt).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
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
    try:
        text = _plain_json(seed)
    except _Other:
        text = json.dumps(seed, sort_keys=True, ensure_ascii=False).encode()
    return PREFIX + xxhash.xxh3_64_hexdigest(text)


class _Other(Exception):
    """A seed holding something other than strings, None and lists of them (e.g. an image part)."""


def _plain_json(v: Any) -> bytes:
    """``json.dumps(v, ensure_ascii=False).encode()`` for strings, None and lists of them (orjson escapes
    strings exactly as json does with ensure_ascii=False); raises ``_Other`` for anything else."""
    if type(v) is str:
        try:
            return orjson.dumps(v)
        except TypeError:  # a lone surrogate
            raise _Other from None
    if v is None:
        return b"null"
    if type(v) is list:
        return b"[" + b", ".join([_plain_json(x) for x in v]) + b"]"
    raise _Other


def with_session_id(payload: dict[str, Any], up: UpstreamConfig) -> dict[str, Any]:
    """The body with a ``session_id`` when the upstream is OpenRouter-kind and wants one."""
    if not (up.is_openrouter and up.session_ids) or "session_id" in payload:
        return payload
    sid = derive(payload)
    return payload if sid is None else {**payload, "session_id": sid}
