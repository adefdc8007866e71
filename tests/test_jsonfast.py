"""jsonfast: orjson on the relay's path, with the standard library's meaning wherever orjson differs."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1proxy import jsonfast

# what upstream chunks are made of: str keys, 64-bit ints, finite floats, any text
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
docs = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20)


def std(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=300)
@given(docs)
def test_dumps_means_what_json_dumps_says(doc: Any) -> None:
    out = jsonfast.dumps(doc)
    assert json.loads(out) == json.loads(std(doc))
    assert jsonfast.loads(out.decode()) == json.loads(std(doc))


def test_dumps_is_the_same_text_for_a_chunk() -> None:
    chunk = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "caf\u00e9 \u2028 \x1f \"q\" \\",
                                                                "reasoning_content": "\U0001f600"},
                                         "finish_reason": None}], "usage": {"cost": 0.00398428, "total": 12}}
    assert jsonfast.dumps(chunk) == std(chunk)


@pytest.mark.parametrize("doc", [{"n": 2**64 + 1}, {1: "int key"}, [-(2**70)]])
def test_what_orjson_refuses_goes_through_json(doc: Any) -> None:
    assert jsonfast.dumps(doc) == std(doc)


def test_a_lone_surrogate_is_refused_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        jsonfast.dumps({"s": "\ud800"})


@pytest.mark.parametrize("text", ['{"a": NaN}', "[Infinity, -Infinity]", '{"n": 123456789012345678901234567890}',
                                  '"\\ud800"', '{"a": 1, "a": 2}', "[1.5e308]"])
def test_loads_accepts_what_json_accepts(text: str) -> None:
    got, want = jsonfast.loads(text), json.loads(text)
    assert repr(got) == repr(want) or (isinstance(got, dict) and math.isnan(got["a"]) and math.isnan(want["a"]))


@pytest.mark.parametrize("text", ["", "{", "data: x", "[1,]", "{'a': 1}"])
def test_loads_rejects_what_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        jsonfast.loads(text)


def test_deep_nesting_raises_like_json() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(RecursionError):
        jsonfast.loads(text)


@settings(max_examples=200)
@given(st.integers(min_value=2**63, max_value=10**40) | st.integers(min_value=-(10**40), max_value=-(2**63) - 1))
def test_integers_beyond_64_bits_keep_every_digit(n: int) -> None:
    text = json.dumps({"usage": {"id": n}, "x": [n, "٣" * 20]})  # non-ASCII digits are not a JSON number
    assert jsonfast.loads(text) == json.loads(text)
    assert jsonfast.loads(text)["usage"]["id"] == n


@pytest.mark.parametrize("text", ['{"a": NaN}', "[Infinity, -Infinity]", '{"n": 123456789012345678901234567890}',
                                  '"\\ud800"', '{"a": 1, "a": 2}', "[1.5e308]", '{"s": "caf\u00e9 \u2028"}'])
def test_loads_reads_utf8_bytes_as_json_does(text: str) -> None:
    """A stored answer is parsed from its decompressed bytes (cache/sqlite.py), without decoding first."""
    raw = text.encode()
    got, want = jsonfast.loads(raw), json.loads(raw)
    assert repr(got) == repr(want) or (isinstance(got, dict) and math.isnan(got["a"]) and math.isnan(want["a"]))


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,]", b'"\xff"', b'{"a": "\xc3"}'])
def test_loads_rejects_bytes_json_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        jsonfast.loads(raw)
