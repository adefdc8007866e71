"""Bad input (#11): a client's mistake is an OpenAI-shaped 4xx before anything is spent, never a 5xx
or a traceback; a property-based fuzz test (hypothesis) keeps it that way."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1proxy.app import create_app
from tests.conftest import LOCAL_KEY

KEYS = [{"name": "roo", "key": LOCAL_KEY}]
JSON = {"Content-Type": "application/json"}


def chat(model: Any = "deepseek-r1", content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": False, "messages": [{"role": "user", "content": content}], **extra}


def nested(depth: int) -> bytes:
    head = b'{"model":"deepseek-r1","messages":[{"role":"user","content":"x","x":'
    return head + b"[" * depth + b"]" * depth + b"}]}"


CASES = [
    ("lone surrogate", b'{"model":"deepseek-r1","messages":[{"role":"user","content":"a\\ud800b"}]}', 400),
    ("lone surrogate key", b'{"model":"deepseek-r1","messages":[{"role":"user","content":"a","\\udfff":1}]}', 400),
    ("nested 100000", nested(100_000), 400),
    ("nested 100", nested(100), 400),
    ("NaN", b'{"model":"deepseek-r1","temperature":NaN,"messages":[{"role":"user","content":"a"}]}', 400),
    ("Infinity", b'{"model":"deepseek-r1","top_p":-Infinity,"messages":[{"role":"user","content":"a"}]}', 400),
    ("1e999", b'{"model":"deepseek-r1","temperature":1e999,"messages":[{"role":"user","content":"a"}]}', 400),
    ("not UTF-8", b'{"model":"deepseek-r1","messages":[{"role":"user","content":"\xff\xfe"}]}', 400),
    ("CRLF in model", json.dumps(chat("deepseek/x\r\nX-Evil: 1")).encode(), 400),
    ("NUL in model", json.dumps(chat("deepseek/x\u0000")).encode(), 400),
    ("long model", json.dumps(chat("m" * 257)).encode(), 400),
    ("too many messages", json.dumps({"model": "deepseek-r1",
                                      "messages": [{"role": "user", "content": "a"}] * 10_001}).encode(), 413),
    ("too many parts", json.dumps(chat(content=[{"type": "text", "text": "a"}] * 1001)).encode(), 413),
]


@pytest.mark.parametrize("name,raw,status", CASES, ids=[c[0] for c in CASES])
async def test_bad_bodies_are_4xx_and_cost_nothing(proxy: Any, fake_server: Any, caplog: pytest.LogCaptureFixture,
                                                   name: str, raw: bytes, status: int) -> None:
    client = await proxy()
    r = await client.post("/chat/completions", data=raw, headers=JSON)
    assert r.status == status, await r.text()
    err = (await r.json())["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    assert fake_server.calls == []
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_a_printable_pass_through_model_still_works(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    r = await client.post("/chat/completions", json=chat("deepseek/deepseek-r1:free"))
    assert r.status == 200
    assert r.headers["X-R1proxy-Route"] == "openrouter/deepseek/deepseek-r1:free"


async def raw_http(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return out


async def test_non_utf8_authorization_is_401(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=KEYS)
    body = json.dumps(chat()).encode()
    head = (b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer \xff\xfe\xc3\r\nX-Other: \xff\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    out = await raw_http(client.host, client.port, head + body)
    assert out.startswith(b"HTTP/1.1 401"), out[:200]
    assert b'"invalid_api_key"' in out


async def test_a_body_that_does_not_match_its_content_encoding_is_400(proxy: Any, fake_server: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    client = await proxy()
    r = await client.post("/chat/completions", data=b"this is not deflate",
                          headers={**JSON, "Content-Encoding": "deflate"})
    assert r.status == 400 and "error" in await r.json()
    good = zlib.compress(json.dumps(chat()).encode())
    r = await client.post("/chat/completions", data=good, headers={**JSON, "Content-Encoding": "deflate"})
    assert r.status == 200
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_malformed_http_and_vanishing_clients_are_one_info_line(
        make_config: Any, fake_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # as `serve` runs it (the test server would cancel the handler instead)
    runner = web.AppRunner(create_app(make_config()), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        out = await raw_http(host, port, b"GARBAGE \x00\x01 HTTP/9\r\n\r\n")
        assert out.split(b" ")[1] == b"400", out[:100]
        for junk in (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",  # aiohttp: ERROR + traceback
                     b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n"
                     b"Content-Length: 2\r\n\r\n{}"):
            out = await raw_http(host, port, junk)
            assert out.split(b" ")[1] == b"400", out[:100]
        # a client that announces a body and leaves halfway
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"model":"deepseek-r1",')
        await writer.drain()
        writer.close()
        for _ in range(500):  # the server notices asynchronously
            if any("went away" in rec.getMessage() for rec in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    shown = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], shown
    assert not [rec for rec in caplog.records if rec.exc_info and rec.levelno >= logging.INFO], shown
    assert [rec for rec in caplog.records if "went away" in rec.getMessage()], shown
    assert len([rec for rec in caplog.records if "malformed request" in rec.getMessage()]) == 2, shown


# -- property-based fuzz -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def mutate(doc: dict[str, Any], data: st.DataObject) -> bytes:
    """A request-ish body: valid JSON with wrong fields, or raw bytes cut or spliced."""
    how = data.draw(st.sampled_from(["fields", "cut", "splice", "raw"]))
    raw = json.dumps(doc).encode()
    if how == "fields":
        key = data.draw(st.sampled_from(["model", "messages", "stream", "cache", "temperature", "tools"]))
        doc = {**doc, key: data.draw(json_values)}
        return json.dumps(doc).encode()
    if how == "cut":
        return raw[:data.draw(st.integers(0, len(raw)))]
    if how == "splice":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.binary(max_size=12)) + raw[at:]
    return data.draw(st.binary(max_size=64))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_fuzzed_requests_never_get_a_5xx(proxy: Any, fake_server: Any, caplog: pytest.LogCaptureFixture,
                                              data: st.DataObject) -> None:
    client = await proxy(cache={"enabled": data.draw(st.booleans())})
    base = chat(content=data.draw(st.text(max_size=30)))
    raw = mutate(base, data)
    headers = {"Content-Type": data.draw(st.sampled_from(["application/json", "text/plain",
                                                            "application/json; charset=utf-8"]))}
    if data.draw(st.booleans()):
        headers["Cache-Control"] = data.draw(st.sampled_from(["no-cache", "max-age=abc", "only-if-cached",
                                                               "max-age=1e999", "no-store, max-age=5"]))
    r = await client.post(data.draw(st.sampled_from(["/chat/completions", "/v1/chat/completions"])), data=raw,
                          headers=headers)
    text = await r.text()
    assert r.status < 500 or r.status in (502, 504), (r.status, text)  # 502/504: the fake's own verdict
    if r.status >= 400:
        assert "error" in json.loads(text)
    await client.close()
    assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records]
