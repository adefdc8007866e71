"""R1 reply fidelity: normalise upstream chunks, assemble them, render JSON and SSE.

Normal form (what is assembled and stored): reasoning in ``reasoning_content`` (OpenRouter's
``reasoning``, a ``reasoning_details`` duplicate, or a leading ``<think>`` block of content),
``choices`` always an array, usage with ``cache_read_input_tokens``. Rendering applies an
alias's ``reasoning`` mode ("field", "think-tags", "drop") the same way to live chunks and to
replays, so a cached answer looks like the live one.
"""

from __future__ import annotations

import time
from typing import Any

from .jsonfast import dumps as dumps  # re-exported: replies and stored entries encode through here

OK_FINISH = frozenset({"stop", "length", "tool_calls"})
OPEN, CLOSE = "<think>", "</think>"


def fix_usage(usage: Any) -> bool:
    """Copy ``prompt_tokens_details.cached_tokens`` to ``cache_read_input_tokens`` (what Roo reads).

    Returns whether the usage was changed."""
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and "cached_tokens" in details and "cache_read_input_tokens" not in usage:
            usage["cache_read_input_tokens"] = details.get("cached_tokens") or 0
            return True
    return False


def _details_text(details: Any) -> str:
    if not isinstance(details, list):
        return ""
    return "".join(str(d.get("text") or d.get("summary") or "") for d in details if isinstance(d, dict))


def _move_reasoning(d: dict[str, Any]) -> bool:
    """Returns whether anything moved (the chunk then needs re-encoding)."""
    if "reasoning" not in d and "reasoning_details" not in d:
        return False
    r = d.pop("reasoning", None)
    details = d.pop("reasoning_details", None)
    if not r and details:
        r = _details_text(details)  # only when `reasoning` is absent: never count both
    if r and not d.get("reasoning_content"):
        d["reasoning_content"] = r
    return True


class _ThinkSplitter:
    """Splits a leading ``<think>…</think>`` block out of a content stream."""

    def __init__(self) -> None:
        self.state = "start"
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) to emit for this piece of content."""
        if self.state == "after":  # the newlines after </think> may come in later chunks
            text = text.lstrip("\n")
            if text:
                self.state = "out"
            return "", text
        if self.state == "out":
            return "", text
        self.buf += text
        if self.state == "start":
            head = self.buf.lstrip()
            if head.startswith(OPEN):
                self.state, self.buf = "in", head[len(OPEN):]
            elif OPEN.startswith(head):
                return "", ""  # undecided: wait for more bytes
            else:
                self.state, out, self.buf = "out", self.buf, ""
                return "", out
        end = self.buf.find(CLOSE)
        if end >= 0:
            reasoning, rest = self.buf[:end], self.buf[end + len(CLOSE):].lstrip("\n")
            self.state, self.buf = ("out" if rest else "after"), ""
            return reasoning, rest
        hold = next((k for k in range(len(CLOSE) - 1, 0, -1) if self.buf.endswith(CLOSE[:k])), 0)
        out, self.buf = (self.buf[:-hold], self.buf[-hold:]) if hold else (self.buf, "")
        return out, ""

    def flush(self) -> tuple[str, str]:
        buf, self.buf = self.buf, ""
        if self.state == "in":
            return buf, ""
        self.state = "out"
        return "", buf


class Normalizer:
    """Per-stream state that turns upstream chunks into the normal form, in place."""

    def __init__(self) -> None:
        self._split: dict[int, _ThinkSplitter] = {}
        self.changed = False  # whether the last chunk() changed anything (else its bytes can be relayed as is)

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        changed = False
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            chunk["choices"] = choices = []
            changed = True
        for ch in choices:
            if not isinstance(ch, dict):
                continue
            delta = ch.get("delta")
            if not isinstance(delta, dict):
                delta = ch["delta"] = {}
                changed = True
            changed = _move_reasoning(delta) or changed
            idx = ch.get("index", 0)
            sp = self._split.get(idx)
            if sp is None:
                sp = self._split[idx] = _ThinkSplitter()
            content = delta.get("content")
            r = c = ""
            touched = False
            if isinstance(content, str) and content and sp.state != "out":
                r, c = sp.feed(content)
                touched = True
            if ch.get("finish_reason") and sp.state != "out":
                r2, c2 = sp.flush()
                r, c, touched = r + r2, c + c2, True
            if touched and (c != content or r):
                delta["content"] = c
                changed = True
            if r:
                delta["reasoning_content"] = (delta.get("reasoning_content") or "") + r
        self.changed = fix_usage(chunk.get("usage")) or changed
        return chunk

    @staticmethod
    def message(doc: dict[str, Any]) -> dict[str, Any]:
        """Normalise a whole non-streaming ``chat.completion`` in place."""
        choices = doc.get("choices")
        if not isinstance(choices, list):
            doc["choices"] = choices = []
        for ch in choices:
            msg = ch.get("message") if isinstance(ch, dict) else None
            if not isinstance(msg, dict):
                continue
            _move_reasoning(msg)
            content = msg.get("content")
            if isinstance(content, str) and content.lstrip().startswith(OPEN):
                sp = _ThinkSplitter()
                r, c = sp.feed(content)
                r2, c2 = sp.flush()
                msg["content"] = c + c2
                msg["reasoning_content"] = (msg.get("reasoning_content") or "") + r + r2
        fix_usage(doc.get("usage"))
        return doc


class Renderer:
    """Applies a reasoning mode to normal-form chunks (live or replayed)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._open: dict[int, bool] = {}  # think-tags: choice index -> inside an open <think>

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk in this mode; a changed chunk is a copy (flight items are shared by every follower)."""
        if self.mode == "field":
            return chunk
        choices = chunk.get("choices")
        if not choices:
            return chunk
        chunk = {**chunk, "choices": [dict(ch) if isinstance(ch, dict) else ch for ch in choices]}
        for ch in chunk["choices"]:
            delta = ch.get("delta") if isinstance(ch, dict) else None
            if not isinstance(delta, dict):
                continue
            delta = ch["delta"] = dict(delta)
            r = delta.pop("reasoning_content", None)
            if self.mode == "drop":
                continue
            idx = ch.get("index", 0)
            text = ""
            if r:
                if idx not in self._open:
                    text, self._open[idx] = OPEN + "\n", True
                text += r
            content = delta.get("content") or ""
            if (content or ch.get("finish_reason")) and self._open.get(idx):
                text += "\n" + CLOSE + "\n\n"
                self._open[idx] = False
            if text:
                delta["content"] = text + content
        return chunk

    def message(self, msg: dict[str, Any]) -> None:
        r = msg.pop("reasoning_content", None)
        if self.mode == "think-tags" and r:
            msg["content"] = f"{OPEN}\n{r}\n{CLOSE}\n\n" + (msg.get("content") or "")
        elif self.mode == "field" and r is not None:
            msg["reasoning_content"] = r


class Assembler:
    """Collects normal-form chunks into one stored ``chat.completion``."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.error: Any = None
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.error = chunk["error"]
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "created", "model", "provider", "system_fingerprint")
                         if k in chunk}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            idx = ch.get("index", 0)
            acc = self.choices.get(idx)
            if acc is None:
                acc = self.choices[idx] = {"content": [], "reasoning": [], "tools": {}, "finish": None,
                                           "native": None, "role": "assistant"}
            delta = ch.get("delta") or {}
            if isinstance(delta.get("content"), str):
                acc["content"].append(delta["content"])
            if isinstance(delta.get("reasoning_content"), str):
                acc["reasoning"].append(delta["reasoning_content"])
            for tc in delta.get("tool_calls") or ():
                if not isinstance(tc, dict):
                    continue
                t = acc["tools"].setdefault(tc.get("index", len(acc["tools"])),
                                            {"id": None, "type": "function", "name": [], "args": []})
                if tc.get("id"):
                    t["id"] = tc["id"]
                if tc.get("type"):
                    t["type"] = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    t["name"].append(fn["name"])
                if fn.get("arguments"):
                    t["args"].append(fn["arguments"])
            if ch.get("finish_reason"):
                acc["finish"] = ch["finish_reason"]
            if ch.get("native_finish_reason"):
                acc["native"] = ch["native_finish_reason"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for idx in sorted(self.choices):
            acc = self.choices[idx]
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(acc["content"])}
            if acc["reasoning"]:
                msg["reasoning_content"] = "".join(acc["reasoning"])
            if acc["tools"]:
                msg["tool_calls"] = [
                    {"id": t["id"], "type": t["type"],
                     "function": {"name": "".join(t["name"]), "arguments": "".join(t["args"])}}
                    for _, t in sorted(acc["tools"].items())]
            c: dict[str, Any] = {"index": idx, "message": msg, "finish_reason": acc["finish"]}
            if acc["native"]:
                c["native_finish_reason"] = acc["native"]
            choices.append(c)
        doc: dict[str, Any] = {"id": self.head.get("id", ""), "object": "chat.completion",
                               "created": self.head.get("created", int(time.time())),
                               "model": self.head.get("model", "")}
        for k in ("provider", "system_fingerprint"):
            if k in self.head:
                doc[k] = self.head[k]
        doc["choices"] = choices
        if self.usage is not None:
            doc["usage"] = self.usage
        return doc


def not_cacheable(doc: dict[str, Any]) -> str | None:
    """Why a normal-form completion must not be stored, or None when it may be."""
    if doc.get("error"):
        return "error"
    choices = doc.get("choices")
    if not choices:
        return "no choices"
    for ch in choices:
        if not isinstance(ch, dict) or ch.get("error"):
            return "choice error"
        if ch.get("finish_reason") not in OK_FINISH:
            return f"finish_reason {ch.get('finish_reason')!r}"
        msg = ch.get("message") or {}
        if not (msg.get("content") or "").strip() and not msg.get("tool_calls"):
            return "no visible content"  # a reasoning-only reply makes Roo retry
    return None


def _replay_usage(usage: Any, cached: bool, hit_usage: str = "real") -> Any:
    """A cache hit's usage: cost 0 and cost_saved; with ``server.hit_usage = "cache-read"`` its prompt
    tokens also count as read from a cache (``cache_read_input_tokens``, which Roo prices at its
    cache-read price, and ``prompt_tokens_details.cached_tokens``)."""
    if not isinstance(usage, dict) or not cached:
        return usage
    u = dict(usage)
    u["cost_saved"] = u.get("cost") or 0
    u["cost"] = 0
    if hit_usage == "cache-read":
        prompt = u.get("prompt_tokens") or 0
        details = u.get("prompt_tokens_details")
        u["prompt_tokens_details"] = {**(details if isinstance(details, dict) else {}), "cached_tokens": prompt}
        u["cache_read_input_tokens"] = prompt
    return u


def render_json(doc: dict[str, Any], mode: str, *, cached: bool = False, hit_usage: str = "real") -> bytes:
    """A ``chat.completion`` body from the normal form."""
    out = dict(doc)
    out["choices"] = []
    r = Renderer(mode)
    for ch in doc.get("choices") or ():
        ch = dict(ch)
        if isinstance(ch.get("message"), dict):
            ch["message"] = dict(ch["message"])
            r.message(ch["message"])
        out["choices"].append(ch)
    if "usage" in doc:
        out["usage"] = _replay_usage(doc["usage"], cached, hit_usage)
    return dumps(out)


def replay_chunks(doc: dict[str, Any], *, cached: bool = True, hit_usage: str = "real") -> list[dict[str, Any]]:
    """The normal-form chunks that replay a stored completion as a stream."""
    base = {"id": doc.get("id", ""), "object": "chat.completion.chunk", "created": doc.get("created", 0),
            "model": doc.get("model", "")}
    if "provider" in doc:
        base["provider"] = doc["provider"]
    out: list[dict[str, Any]] = []
    for ch in doc.get("choices") or ():
        idx = ch.get("index", 0)
        msg = ch.get("message") or {}

        def piece(delta: dict[str, Any], finish: Any = None, _idx: int = idx) -> dict[str, Any]:
            return {**base, "choices": [{"index": _idx, "delta": delta, "finish_reason": finish}]}

        out.append(piece({"role": "assistant", "content": ""}))
        if msg.get("reasoning_content"):
            out.append(piece({"content": "", "reasoning_content": msg["reasoning_content"]}))
        if msg.get("content"):
            out.append(piece({"content": msg["content"]}))
        for i, tc in enumerate(msg.get("tool_calls") or ()):
            out.append(piece({"tool_calls": [{"index": i, "id": tc.get("id"), "type": tc.get("type", "function"),
                                              "function": tc.get("function") or {}}]}))
        last = piece({}, ch.get("finish_reason"))
        if ch.get("native_finish_reason"):
            last["choices"][0]["native_finish_reason"] = ch["native_finish_reason"]
        out.append(last)
    if doc.get("usage") is not None:
        out.append({**base, "choices": [], "usage": _replay_usage(doc["usage"], cached, hit_usage)})
    return out


def render_sse(doc: dict[str, Any], mode: str, *, cached: bool = True, hit_usage: str = "real") -> bytes:
    """A whole SSE body (ending in ``[DONE]``) that replays a stored completion."""
    r = Renderer(mode)
    parts = [b"data: " + dumps(r.chunk(c)) + b"\n\n" for c in replay_chunks(doc, cached=cached, hit_usage=hit_usage)]
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)
