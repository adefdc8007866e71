"""Per-alias request templates: turn the client's body into the body sent upstream.

Applies a model alias's ``defaults`` (when the client omits a field), ``overrides``
(always), ``system_prompt = "merge-into-user"`` (R1 wants no system role; same-role runs are
merged as DeepSeek requires), ``strip_reasoning_from_history`` (reasoning fields and a leading
``<think>`` block in assistant history), ``tools = "strip"`` and ``provider`` (OpenRouter routing
preferences, over the client's own; r1proxy adds no ``provider.order`` of its own: it would switch
OpenRouter's sticky routing off).
The cache key is computed on the result, so a template change never serves old answers.
"""

from __future__ import annotations

import re
from typing import Any

from .config import ModelConfig

LOCAL_ONLY_FIELDS = ("cache",)  # LiteLLM-style per-request cache controls, consumed here
HISTORY_REASONING_FIELDS = ("reasoning", "reasoning_content", "reasoning_details")
TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def prepare(body: dict[str, Any], m: ModelConfig | None, upstream_model: str) -> dict[str, Any]:
    """A new upstream body; the client's dict is not modified."""
    out = {k: v for k, v in body.items() if k not in LOCAL_ONLY_FIELDS}
    out["model"] = upstream_model
    if m is None:
        return out
    for k, v in m.defaults.items():
        out.setdefault(k, v)
    for k, v in m.overrides.items():
        out[k] = v
    messages = out.get("messages")
    if isinstance(messages, list):
        if m.strip_reasoning_from_history:
            messages = [_strip_reasoning(x) for x in messages]
        if m.tools == "strip":
            messages = _tools_to_text(messages)
        if m.system_prompt == "merge-into-user":
            messages = _merge_system(messages)
        out["messages"] = messages
    if m.tools == "strip":
        for k in TOOL_FIELDS:
            out.pop(k, None)
    if m.provider:
        own = out.get("provider")
        out["provider"] = {**own, **m.provider} if isinstance(own, dict) else dict(m.provider)
    return out


# a leading reasoning block in content (reasoning = "think-tags", or a host that sends it so): Roo's
# non-streaming path keeps it as answer text and sends it back on every later turn
_THINK_BLOCK = re.compile(r"\A\s*<think>.*?</think>\s*", re.DOTALL)


def _strip_reasoning(msg: Any) -> Any:
    if not isinstance(msg, dict) or msg.get("role") != "assistant":
        return msg
    if any(k in msg for k in HISTORY_REASONING_FIELDS):
        msg = {k: v for k, v in msg.items() if k not in HISTORY_REASONING_FIELDS}
    content = msg.get("content")
    if isinstance(content, str) and "<think>" in content:
        return {**msg, "content": _THINK_BLOCK.sub("", content, count=1)}
    if isinstance(content, list) and content and isinstance(content[0], dict) and content[0].get("type") == "text":
        first = content[0].get("text")
        if isinstance(first, str) and "<think>" in first:
            return {**msg, "content": [{**content[0], "text": _THINK_BLOCK.sub("", first, count=1)}, *content[1:]]}
    return msg


def _tools_to_text(messages: list[Any]) -> list[Any]:
    """Without tools upstream, earlier tool calls and results must become plain text."""
    out: list[Any] = []
    for msg in messages:
        if not isinstance(msg, dict):
            out.append(msg)
            continue
        if msg.get("role") == "tool":
            out.append({"role": "user", "content": f"[tool result {msg.get('tool_call_id', '')}]\n"
                        + _as_text(msg.get("content"))})
        elif msg.get("role") == "assistant" and msg.get("tool_calls"):
            calls = "\n".join(f"[tool call {c.get('function', {}).get('name', '')}] "
                              f"{c.get('function', {}).get('arguments', '')}"
                              for c in msg["tool_calls"] if isinstance(c, dict))
            text = _as_text(msg.get("content"))
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + calls})
        else:
            out.append(msg)
    return out


def _as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def _merge_system(messages: list[Any]) -> list[Any]:
    """System messages become user messages; consecutive same-role messages are merged."""
    out: list[Any] = []
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") in ("system", "developer"):
            msg = {**msg, "role": "user"}
        prev = out[-1] if out else None
        if (isinstance(msg, dict) and isinstance(prev, dict) and prev.get("role") == msg.get("role")
                and msg.get("role") in ("user", "assistant")
                and not prev.get("tool_calls") and not msg.get("tool_calls")):
            out[-1] = {**prev, "content": _join(prev.get("content"), msg.get("content"))}
        else:
            out.append(msg)
    return out


def _join(a: Any, b: Any) -> Any:
    if isinstance(a, list) or isinstance(b, list):
        def parts(c: Any) -> list[Any]:
            if isinstance(c, list):
                return list(c)
            return [{"type": "text", "text": c}] if c else []
        return parts(a) + parts(b)
    return f"{a or ''}\n{b or ''}"
