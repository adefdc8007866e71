""""Why did this miss?": compare a request with the nearest stored one and name the first difference.

Works on canonical requests (what a cache key stands for: the body as sent upstream, after the
alias's templates, with ``cache.ignore_patterns`` applied). ``nearest`` picks, among stored
requests for the same model, the one sharing the longest run of leading messages (then the
longest common text in the next one). ``differences`` lists where the two part: messages first
(in prompt order: message index, field, the line and a few characters either side), then
``tools`` (which tool), then every other field (``temperature`` …). For a text difference it says
which pattern would have hidden it: one from ``cache.ignore_patterns`` or a known volatile Roo
section (``SUGGESTED``), and whether that pattern is configured. Pure functions; ``ops_explain``
does the database and command-line side.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .cache.keys import MASK
from .config import ROO_CURRENT_TIME

CONTEXT = 40  # characters shown either side of a difference
HEAD = "$r1proxy"
# Roo Code's environment sections that change on every request (only the first is masked by default)
SUGGESTED = {
    "Roo's # Current Time section": ROO_CURRENT_TIME,
    "Roo's # Current Cost section": r"# Current Cost\n(?:.+\n?)*",
}


@dataclass(frozen=True, slots=True)
class Stored:
    key: str
    canonical: dict[str, Any]
    created_at: float = 0.0
    expires_at: float = 0.0


def parse(canonical: bytes | str) -> dict[str, Any]:
    doc = json.loads(canonical)
    if not isinstance(doc, dict):
        raise ValueError("a canonical request is a JSON object")
    return doc


def text_of(content: Any) -> str | None:
    """The text of a canonical message content (a string, ``{"$texts": [...]}`` or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("$texts"), list):
        return "\n".join(str(t) for t in content["$texts"])
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    return None


def _messages(doc: dict[str, Any]) -> list[Any]:
    m = doc.get("messages")
    return m if isinstance(m, list) else []


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def closeness(this: dict[str, Any], other: dict[str, Any]) -> tuple[int, int, int]:
    """(leading messages in common, common characters of the next message, -fields that differ)."""
    a, b = _messages(this), _messages(other)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    chars = 0
    if k < min(len(a), len(b)):
        chars = _common_prefix(json.dumps(a[k], sort_keys=True), json.dumps(b[k], sort_keys=True))
    fields = sum(1 for f in set(this) | set(other) if f != "messages" and this.get(f) != other.get(f))
    return k, chars, -fields


def nearest(this: dict[str, Any], stored: Iterable[Stored], exclude: str = "") -> Stored | None:
    """The stored request for the same model closest to ``this`` (``exclude``: its own key)."""
    best: tuple[tuple[int, int, int], Stored] | None = None
    for s in stored:
        if s.key == exclude or s.canonical.get("model") != this.get("model"):
            continue
        score = closeness(this, s.canonical)
        if best is None or score > best[0]:
            best = (score, s)
    return None if best is None else best[1]


def _snippet(text: str, at: int) -> dict[str, Any]:
    """The line holding position ``at``, with CONTEXT characters either side of ``at``."""
    line_no = text.count("\n", 0, at) + 1
    start, end = max(0, at - CONTEXT), min(len(text), at + CONTEXT)
    return {"line": line_no, "text": ("…" if start else "") + text[start:end] + ("…" if end < len(text) else ""),
            "line_text": text[text.rfind("\n", 0, at) + 1:(text.find("\n", at) + 1 or len(text) + 1) - 1]}


def _short(v: Any, limit: int = 120) -> str:
    s = json.dumps(v, ensure_ascii=False, sort_keys=True)
    return s if len(s) <= limit else s[:limit] + "…"


def maskers(a: str, b: str, configured: Sequence[str]) -> list[dict[str, Any]]:
    """Patterns that would make texts ``a`` and ``b`` equal: configured ones, then known Roo sections."""
    out = []
    candidates = [(p, f"cache.ignore_patterns[{i}]") for i, p in enumerate(configured)]
    candidates += [(p, name) for name, p in SUGGESTED.items() if p not in configured]
    for pattern, name in candidates:
        rx = re.compile(pattern)
        if rx.sub(MASK, a) == rx.sub(MASK, b):
            out.append({"pattern": pattern, "name": name, "configured": pattern in configured})
    return out


def _message_difference(i: int, x: Any, y: Any, configured: Sequence[str]) -> dict[str, Any]:
    """Where stored message ``x`` and this message ``y`` (both at index ``i``) part."""
    if x is None or y is None:
        which = "this request" if x is None else "the stored request"
        role = (y if x is None else x).get("role") if isinstance(y if x is None else x, dict) else None
        return {"field": f"messages[{i}]", "message_index": i,
                "summary": f"messages[{i}] ({role}) is only in {which}"
                           + (" — a later turn of the same conversation" if x is None else "")}
    if not (isinstance(x, dict) and isinstance(y, dict)):
        return {"field": f"messages[{i}]", "message_index": i, "stored": _short(x), "this": _short(y),
                "summary": f"messages[{i}] differs"}
    for f in sorted(set(x) | set(y), key=lambda k: (k != "role", k != "content", k)):
        if x.get(f) == y.get(f):
            continue
        out: dict[str, Any] = {"field": f"messages[{i}].{f}", "message_index": i}
        tx, ty = (text_of(x.get(f)), text_of(y.get(f))) if f == "content" else (None, None)
        if tx is not None and ty is not None:
            at = _common_prefix(tx, ty)
            sx, sy = _snippet(tx, at), _snippet(ty, at)
            out.update(line=sy["line"], stored=sx["text"], this=sy["text"], stored_line=sx["line_text"],
                       this_line=sy["line_text"], masked_by=maskers(tx, ty, configured),
                       summary=f"messages[{i}].content ({y.get('role')}), line {sy['line']}: "
                               f"{sx['line_text'][:80]!r} → {sy['line_text'][:80]!r}")
        else:
            out.update(stored=_short(x.get(f)), this=_short(y.get(f)),
                       summary=f"messages[{i}].{f}: {_short(x.get(f), 60)} → {_short(y.get(f), 60)}")
        return out
    return {"field": f"messages[{i}]", "message_index": i, "summary": f"messages[{i}] differs"}


def _tools_difference(x: Any, y: Any) -> dict[str, Any]:
    def name(t: Any) -> str:
        return str((t.get("function") or {}).get("name", "?")) if isinstance(t, dict) else "?"

    a, b = (x if isinstance(x, list) else []), (y if isinstance(y, list) else [])
    out: dict[str, Any] = {"field": "tools", "stored": f"{len(a)} tools", "this": f"{len(b)} tools"}
    names_a, names_b = [name(t) for t in a], [name(t) for t in b]
    added, removed = sorted(set(names_b) - set(names_a)), sorted(set(names_a) - set(names_b))
    i = next((n for n in range(min(len(a), len(b))) if a[n] != b[n]), min(len(a), len(b)))
    out["tool_index"] = i
    bits = [f"{len(a)} → {len(b)} tools"]
    if added:
        bits.append("added " + ", ".join(added))
    if removed:
        bits.append("removed " + ", ".join(removed))
    if not added and not removed and i < min(len(a), len(b)):
        bits.append(f"tools[{i}] ({names_b[i]}) changed" if names_a[i] == names_b[i] else f"tools[{i}] reordered")
    out["summary"] = "tools: " + "; ".join(bits)
    return out


def differences(stored: dict[str, Any], this: dict[str, Any], configured: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every place the two canonical requests part, the first difference first (see module docstring)."""
    out: list[dict[str, Any]] = []
    a, b = _messages(stored), _messages(this)
    for i in range(max(len(a), len(b))):
        x, y = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
        if x != y:
            out.append(_message_difference(i, x, y, configured))
            break  # what follows the first differing message is another conversation anyway
    if stored.get("tools") != this.get("tools"):
        out.append(_tools_difference(stored.get("tools"), this.get("tools")))
    for f in sorted((set(stored) | set(this)) - {"messages", "tools"}):
        if stored.get(f) != this.get(f):
            where = f if f != HEAD else "cache partition (upstream, namespace or key)"
            out.append({"field": f, "stored": _short(stored.get(f)), "this": _short(this.get(f)),
                        "summary": f"{where}: {_short(stored.get(f), 60)} → {_short(this.get(f), 60)}"})
    return out


def explain(this: dict[str, Any], candidates: Iterable[Stored], *, key: str = "",
            configured: Sequence[str] = ()) -> dict[str, Any]:
    """The whole explanation as JSON-ready data (what ``r1proxy cache explain --json`` prints)."""
    pool = list(candidates)
    same = next((s for s in pool if key and s.key == key), None)
    near = nearest(this, pool, exclude=key)
    out: dict[str, Any] = {"key": key, "model": this.get("model"), "messages": len(_messages(this)),
                           "stored_with_same_key": None, "nearest": None, "first_difference": None,
                           "differences": []}
    if same is not None:
        out["stored_with_same_key"] = {"key": same.key, "created_at": same.created_at,
                                       "expires_at": same.expires_at}
    if near is None:
        return out
    common = closeness(this, near.canonical)[0]
    out["nearest"] = {"key": near.key, "created_at": near.created_at, "messages": len(_messages(near.canonical)),
                      "messages_in_common": common}
    diffs = differences(near.canonical, this, configured)
    out["differences"] = diffs
    out["first_difference"] = diffs[0] if diffs else None
    return out


def render(report: dict[str, Any]) -> str:
    """The explanation for a person."""
    lines = [f"request {report['key'] or '(not stored)'} — model {report['model']}, {report['messages']} messages"]
    same = report.get("stored_with_same_key")
    if same is not None:
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(same["expires_at"]))
        lines.append(f"  an entry with this very key is stored (fresh until {expires}): it hits unless it has "
                     "expired or the request asks for no-cache")
    near = report.get("nearest")
    if near is None:
        lines.append("  no other stored request for this model to compare with")
        return "\n".join(lines)
    lines.append(f"  nearest stored request {near['key']}: {near['messages_in_common']} of its "
                 f"{near['messages']} messages in common")
    first = report.get("first_difference")
    if first is None:
        lines.append("  no difference in the canonical requests")
        return "\n".join(lines)
    lines.append(f"  first difference: {first['summary']}")
    if "stored" in first and "line" in first:
        lines.append(f"    stored: {first['stored']!r}")
        lines.append(f"    this:   {first['this']!r}")
    for m in first.get("masked_by") or ():
        state = "is configured" if m["configured"] else "is NOT in cache.ignore_patterns"
        lines.append(f"  {m['name']} pattern {m['pattern']!r} would have masked it ({state})")
    if "masked_by" in first and not first["masked_by"]:
        lines.append("  no configured or known pattern masks it")
    for d in report["differences"][1:]:
        lines.append(f"  also: {d['summary']}")
    return "\n".join(lines)
