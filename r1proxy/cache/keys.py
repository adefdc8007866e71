"""Cache identity: the one place that decides which requests are "the same".

``cache_key()`` hashes (xxh3-128, version-prefixed) a canonical JSON of the request as it
is sent upstream: every field that can change the answer, including fields r1proxy does
not know, minus a short list of known non-output fields. Normalisation is the cheap, safe
half of semantic dedup: key order and spacing, text-only content arrays vs plain strings,
CRLF vs LF, and user-configured volatile text (``cache.ignore_patterns``) masked.

The canonical JSON is ``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``;
orjson writes the same bytes ~15x faster (a miss computes it before its upstream call) except for
floats below 1e-4 (decimals where Python writes an exponent), integers beyond 64 bits (refused) and
non-finite numbers (only a config can hold one: orjson writes ``null``, as it does in the body sent
upstream), so those few bodies go through ``json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import orjson
import xxhash

from .. import jsonfast

KEY_VERSION = "r1"
SEMANTIC_VERSION = "r1s"  # semantic partition keys: never equal to an entry key
SLOT = "\u2400text"  # stands for the free text a semantic partition leaves out

# Fields that never change the model's output: transport, accounting, client bookkeeping.
NON_OUTPUT_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "cache", "usage"})
MASK = "\u2400masked"


class KeyMaker:
    """Builds cache keys; compiled once per config (patterns, namespace)."""

    def __init__(self, ignore_patterns: Iterable[str] = (), namespace: str = "") -> None:
        self.patterns = [re.compile(p) for p in ignore_patterns]
        self.namespace = namespace

    def canonical(self, upstream: str, body: dict[str, Any], namespace: str = "", partition: str = "") -> bytes:
        """The canonical request JSON a key stands for (what the store keeps beside the answer)."""
        doc: dict[str, Any] = {}
        for k, v in body.items():
            if k in NON_OUTPUT_FIELDS:
                continue
            doc[k] = self._messages(v) if k == "messages" and isinstance(v, list) else v
        ns = namespace or self.namespace
        head: dict[str, Any] = {"upstream": upstream}
        if ns:
            head["namespace"] = ns
        if partition:  # cache.share = "key": one key's answers are never another key's hits
            head["partition"] = partition
        doc["$r1proxy"] = head
        return canonical_json(doc)

    def key(self, canonical: bytes) -> str:
        return f"{KEY_VERSION}:{xxhash.xxh3_128_hexdigest(canonical)}"

    def cache_key(self, upstream: str, body: dict[str, Any], namespace: str = "",
                  partition: str = "") -> tuple[str, bytes]:
        """(key, canonical request bytes) for a request body as sent upstream."""
        canon = self.canonical(upstream, body, namespace, partition)
        return self.key(canon), canon

    def semantic_key(self, upstream: str, slotted: dict[str, Any], namespace: str = "", partition: str = "") -> str:
        """The semantic partition of a request: the key of its canonical form (same namespace and
        ``cache.share`` partition as its cache key) with the final user text replaced by ``SLOT``
        (the caller does that; see ``cache/semantic/partition.py``). Never equal to a cache key."""
        canon = self.canonical(upstream, slotted, namespace, partition)
        return f"{SEMANTIC_VERSION}:{xxhash.xxh3_128_hexdigest(canon)}"

    def _text(self, s: str) -> str:
        if "\r" in s:
            s = s.replace("\r\n", "\n")
        for p in self.patterns:
            s = p.sub(MASK, s)
        return s

    def _messages(self, messages: list[Any]) -> list[Any]:
        out = []
        for m in messages:
            if not isinstance(m, dict):
                out.append(m)
                continue
            m2 = dict(m)
            c = m2.get("content")
            if isinstance(c, str):
                m2["content"] = self._text(c)
            elif isinstance(c, list):
                m2["content"] = self._content_parts(c)
            out.append(m2)
        return out

    def _content_parts(self, parts: list[Any]) -> Any:
        if parts and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                         and set(p) <= {"type", "text", "cache_control"} for p in parts):
            texts = [self._text(p["text"]) for p in parts]
            # one text part is the same prompt as a plain string; prompt-cache marks never change output
            return texts[0] if len(texts) == 1 else {"$texts": texts}
        norm = []
        for p in parts:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                p = dict(p, text=self._text(p["text"]))
                p.pop("cache_control", None)
            norm.append(p)
        return norm


def canonical_json(doc: Any) -> bytes:
    """Sorted-key compact JSON, exactly as ``json.dumps(sort_keys=True, ensure_ascii=False)`` spells it."""
    try:
        out = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits (or a type JSON has not)
        out = b""
    # a float below 1e-4 (orjson: 0.00001, json: 1e-05) is the only place orjson writes "0.0000"
    # outside a string; inside one it only costs the slow path
    if not out or b"0.0000" in out:
        out = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return out


def last_user_text(canonical: bytes) -> str:
    """The last user message of a (canonical or client) request body, as plain text."""
    try:
        doc = jsonfast.loads(canonical.decode())
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            return ""
        for m in reversed(doc["messages"]):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, dict):
                    c = " ".join(c.get("$texts", []))
                if isinstance(c, list):
                    c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
                return str(c or "")
    except (ValueError, TypeError):
        pass
    return ""
