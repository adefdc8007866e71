"""The strict request-body parser: orjson first, and the same verdict as the standard library's
strict path (``jsonbody.strict``) for every body, accepted or refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from r1proxy import jsonbody
from r1proxy.errors import ProxyError
from tests.roo import roo_body


def verdict(fn: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(raw)
    except ProxyError as e:
        return "error", (e.status, e.message)


BODIES = [
    b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
    b'{"a":1,"a":2,"b":3}',  # duplicate keys: the last one wins, at the first one's place
    b'{"t":0.6,"p":1e-05,"q":-0.0,"r":1E5,"s":123456789.123456789e-5,"z":-0}',
    b'{"big":18446744073709551616,"neg":-9223372036854775809}',  # beyond 64 bits: every digit kept
    b'{"id":"1234567890123456789012 in a string"}',
    b'{"x":"\\ud83d\\ude00 a pair","y":"\\u2028\\u0000"}',
    b'{"x":"\\ud800 alone"}',
    b'{"x":"\\udc00"}',
    b'{"n":NaN}', b'{"n":Infinity}', b'{"n":-Infinity}', b'{"n":1e400}', b'{"n":-1e999}',
    b'\xef\xbb\xbf{}', b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\x01"}', b'{"a":"\x7f"}',
    b'[1,2', b'{"a":1,}', b'{"a":01}', b'{"a":+1}', b'{"a":.5}', b'{"a":1.}', b'\x0c{}', b'{} x', b'  {}\n',
    b'"just a string"', b'[]', b'null',
    b'[' * 65 + b']' * 65, b'[' * 64 + b']' * 64, b'{"a":' * 70 + b'1' + b'}' * 70, b'[' * 3000 + b']' * 3000,
]


@pytest.mark.parametrize("raw", BODIES)
def test_loads_gives_the_strict_parsers_verdict(raw: bytes) -> None:
    got, want = verdict(jsonbody.loads, raw), verdict(jsonbody.strict, raw)
    assert got == want
    if got[0] == "ok":  # the same values, and the same order of keys (the upstream body keeps it)
        assert json.dumps(got[1]) == json.dumps(want[1])


def test_a_roo_body_is_parsed_without_the_standard_librarys_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse is on a miss's way to the upstream call: orjson takes ~20 us where json took ~95 us
    for a 20 KB body (bench/ANALYSIS.md)."""
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}}}}
    raw = json.dumps(roo_body(tools=[tool])).encode()
    want = jsonbody.strict(raw)

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("json.loads was used")

    monkeypatch.setattr(jsonbody.json, "loads", refuse)
    assert jsonbody.loads(raw) == want
