"""Strict JSON for request bodies: what r1proxy accepts before anything is spent.

``loads`` returns the parsed body or raises a 400 ``ProxyError`` that says what is wrong:
not UTF-8, not JSON, ``NaN``/``Infinity``/overflowing numbers (they would be forwarded as
invalid JSON), lone UTF-16 surrogates (they cannot be encoded again), nesting deeper than
``MAX_DEPTH``. ``check_limits`` bounds the model id and the counts of messages and parts.

A body is parsed by orjson first (on a miss this parse is on the way to the upstream call: ~20 us
instead of ~95 us for a 20 KB Roo body): orjson refuses everything above except depth (checked
after) and reads everything it accepts as ``json`` would, except integers beyond 64 bits, which
it turns into floats; a body with a run of 19 digits, or one orjson refuses, goes through
``json`` with the checks below, which also word the 400.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from .errors import ProxyError, bad_request
from .jsonfast import long_digit_run

MAX_DEPTH = 64
MAX_MODEL_CHARS = 256
MAX_MESSAGES = 10_000
MAX_PARTS = 1_000  # content parts in one message


class _Reject(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def _constant(name: str) -> Any:
    raise _Reject(f"{name} is not valid JSON (numbers must be finite)")


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Reject(f"the number {text[:40]} is out of range")
    return v


def loads(raw: bytes) -> Any:
    # orjson reads an integer beyond 64 bits as a float: a body with a run of 19 digits (a long
    # number, or text that looks like one) is parsed by json (jsonfast.long_digit_run).
    if not long_digit_run(raw):
        try:
            doc = orjson.loads(raw)  # strict UTF-8; no NaN/Infinity, overflowing numbers or lone surrogates
        except orjson.JSONDecodeError:
            pass  # json below says what is wrong (or reads what orjson cannot, e.g. nesting past 1024)
        else:
            check_tree(doc, False)  # depth; a string orjson accepted is valid Unicode
            return doc
    return strict(raw)


def strict(raw: bytes) -> Any:
    """``loads`` through the standard library alone (the reference the orjson path must agree with)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"Request body is not valid UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_constant, parse_float=_float)
    except _Reject as e:
        raise bad_request(f"Request body is not valid JSON: {e.message}") from None
    except RecursionError:
        raise bad_request(f"Request body is nested too deeply (limit {MAX_DEPTH})") from None
    except ValueError as e:
        raise bad_request(f"Request body is not valid JSON: {e}") from None
    check_tree(doc, "\\ud" in text or "\\uD" in text)
    return doc


def check_tree(doc: Any, surrogates: bool) -> None:
    """Depth (always) and lone surrogates (when the text had \\uD... escapes), without recursion."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise bad_request(f"Request body is nested too deeply (limit {MAX_DEPTH})")
            for k, v in node.items():
                if surrogates:
                    _encodable(k)
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif surrogates and isinstance(v, str):
                    _encodable(v)
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise bad_request(f"Request body is nested too deeply (limit {MAX_DEPTH})")
            for v in node:
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif surrogates and isinstance(v, str):
                    _encodable(v)
        elif surrogates and isinstance(node, str):
            _encodable(node)


def _encodable(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("Request body contains a lone UTF-16 surrogate (\\ud800-\\udfff) that is not text") from None


def check_model(model: str) -> None:
    if len(model) > MAX_MODEL_CHARS:
        raise bad_request(f"`model` is longer than {MAX_MODEL_CHARS} characters", "model")
    if not (model.isascii() and model.isprintable()):
        raise bad_request("`model` must be printable ASCII (no control characters)", "model")


def check_limits(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if isinstance(messages, list):
        if len(messages) > MAX_MESSAGES:
            raise ProxyError(413, f"Too many messages ({len(messages)}; limit {MAX_MESSAGES})", param="messages",
                             code="too_many_messages")
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and len(content) > MAX_PARTS:
                raise ProxyError(413, f"messages[{i}] has too many content parts ({len(content)}; limit "
                                      f"{MAX_PARTS})", param=f"messages[{i}].content", code="too_many_parts")
