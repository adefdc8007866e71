"""Which requests may be served a near-duplicate, and what of them is compared.

``split(keys, upstream, body, namespace, share)`` returns ``(partition key, free text)`` or a
``Refusal`` naming why not. A request is eligible only when its final message is a user
message of free text: not a turn that answers a tool call, no images, no code block, diff or
attached file content. The free text is the ``<task>`` of Roo's first turn (or the whole text
of a plain user message, e.g. enhance-prompt, minus Roo's fixed instruction line). Everything
else -- model, parameters, system prompt, tools, history, ``<environment_details>`` -- is the
partition: its canonical form with the text replaced by ``keys.SLOT``, hashed by ``KeyMaker``
(with the request's namespace and ``cache.share`` partition, as its cache key is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from r1proxy.cache.keys import SLOT, KeyMaker

MAX_CHARS = 2000  # longer texts are not "reworded requests"; the model also truncates at 256 tokens

_TASK = re.compile(r"\A(\s*<(task|feedback|user_message|answer)>\n?)(.*?)(\n?</\2>\s*)\Z", re.S)
# Roo's enhance-prompt call: one instruction line, a blank line, then the user's draft
_ENHANCE = re.compile(r"\A(Generate an enhanced version of this prompt[^\n]*\n\n)(.*)\Z", re.S)
_CODE = re.compile(r"```|~~~|^(?:\+\+\+ |--- a/|@@ |<<<<<<< |>>>>>>> |diff --git )|<file_content|<environment_details"
                   r"|^\s*(?:def|class|function|import|from \S+ import|#include|public static) ", re.M)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request has no semantic partition (for the request log and tests)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Split:
    partition: str
    text: str


def _free_text(text: str) -> tuple[str, str, str] | None:
    """(before, free text, after) of one text part, or None when it holds no free text."""
    if text.lstrip().startswith("<environment_details>"):
        return None
    m = _TASK.match(text)
    if m:
        return m.group(1), m.group(3), m.group(4)
    m = _ENHANCE.match(text)
    if m:
        return m.group(1), m.group(2), ""
    if text.lstrip().startswith("<"):
        return None  # some other tagged block Roo generated, not typed by a person
    return "", text, ""


def split(keys: KeyMaker, upstream: str, body: dict[str, Any], namespace: str = "",
          share: str = "") -> Split | Refusal:
    """The semantic partition and free text of ``body`` (as sent upstream), or why there is none."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Refusal("no messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return Refusal("final message is not a user message")
    if len(messages) > 1 and isinstance(messages[-2], dict) and messages[-2].get("role") == "tool":
        return Refusal("turn answers a tool call")
    content = last.get("content")
    found: list[tuple[int, tuple[str, str, str]]] = []
    if isinstance(content, str):
        parts: list[Any] = [content]
        ft = _free_text(content)
        if ft:
            found.append((0, ft))
    elif isinstance(content, list):
        parts = content
        for i, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                return Refusal("non-text content (image or other part)")
            ft = _free_text(p["text"])
            if ft:
                found.append((i, ft))
    else:
        return Refusal("no text content")
    if len(found) != 1:
        return Refusal("no free text" if not found else "several free-text parts")
    i, (before, text, after) = found[0]
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return Refusal("empty text")
    if len(text) > MAX_CHARS:
        return Refusal(f"text longer than {MAX_CHARS} characters")
    if _CODE.search(text):
        return Refusal("text holds code, a diff or a file")
    slotted_text = before + SLOT + after
    if isinstance(content, str):
        new_content: Any = slotted_text
    else:
        new_content = list(parts)
        new_content[i] = dict(parts[i], text=slotted_text)
    slotted = dict(body, messages=[*messages[:-1], dict(last, content=new_content)])
    return Split(keys.semantic_key(upstream, slotted, namespace, share), text)
