"""What the cache never keeps (failed answers), TTL expiry (also across a restart) and stale-if-error:
when an expired answer may stand in for a failing upstream, and when it must not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from r1proxy.app import create_app
from tests.fake_upstream import Script
from tests.helpers import (
    T0,
    answer,
    chunks_of,
    frozen_clock,
    post_text,
    settle,
    upstream_calls,
)
from tests.roo import roo_body


@pytest.mark.parametrize("script,stream", [
    (Script(mid_stream_error=2), True),
    (Script(mid_stream_error=2, done_after_error=True), True),
    (Script(drop_after=2), True),
    (Script(drop_after=0), True),
    (Script(reasoning_only=True), True),
    (Script(reasoning_only=True), False),
    (Script(status=503), True),
    (Script(status=503), False),
    (Script(status=400, message="bad request"), False),
    (Script(json_error=True), False),
    (Script(finish_reason="error"), True),
    (Script(finish_reason="error"), False),
    (Script(finish_reason="content_filter"), True),
    (Script(finish_reason=None, chunks=[
        {"id": "g", "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": "half an answer"}, "finish_reason": None}]},
        "data: [DONE]"]), True),
], ids=["mid-stream-error", "mid-stream-error+done", "drop", "drop-before-headers", "reasoning-only",
        "reasoning-only-json", "503", "503-json", "400-json", "200-json-error", "finish-error",
        "finish-error-json", "content-filter", "no-finish-reason"])
async def test_failed_answers_are_not_cached(proxy: Any, fake_server: Any, script: Script, stream: bool) -> None:
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(script)
    await post_text(client, roo_body(stream=stream))
    assert upstream_calls(fake_server) == 1
    await settle(client)
    r, _ = await answer(client, roo_body(stream=stream))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2
    r, _ = await answer(client, roo_body(stream=stream))  # the good answer is cached
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 2


async def test_ttl_expiry_is_a_miss(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"ttl": 60})
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 59)
    r, _ = await answer(client, roo_body())
    assert (r.headers["X-Cache"], r.headers["Age"]) == ("HIT", "59")
    move(T0 + 61)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2
    move(T0 + 62)  # the fresh answer replaced the expired one
    r, _ = await answer(client, roo_body())
    assert (r.headers["X-Cache"], r.headers["Age"]) == ("HIT", "1")


async def test_ttl_expiry_after_restart(aiohttp_client: Any, make_config: Any, fake_server: Any) -> None:
    config = make_config(cache={"ttl": 60})
    first = await aiohttp_client(create_app(config))
    frozen_clock(first)
    await answer(first, roo_body(stream=False))
    await first.close()
    second = await aiohttp_client(create_app(config))
    move = frozen_clock(second, T0 + 30)
    r, _ = await answer(second, roo_body(stream=False))
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"], r.headers["Age"]) == ("HIT", "sqlite", "30")
    move(T0 + 61)
    r, _ = await answer(second, roo_body(stream=False))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_stale_if_error(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy(cache={"ttl": 60, "stale_if_error": 3600}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    _, fresh = await answer(client, roo_body(stream=stream))
    move(T0 + 100)
    fake_server.script(Script(status=503))
    r, stale = await answer(client, roo_body(stream=stream))
    assert r.headers["X-Cache"] == "STALE"
    assert r.headers["Warning"].startswith("110 ")
    assert r.headers["Age"] == "100"
    assert stale["content"] == fresh["content"] and stale["reasoning"] == fresh["reasoning"]
    assert upstream_calls(fake_server) == 2
    # no-cache: the client wants a fresh answer or the error
    fake_server.script(Script(status=503))
    r, text = await post_text(client, roo_body(stream=stream), {"Cache-Control": "no-cache"})
    assert r.status == 503
    assert json.loads(text)["error"]["message"]
    fake_server.script(Script(status=503))
    r, text = await post_text(client, roo_body(stream=stream, cache={"no-cache": True}))
    assert r.status == 503
    # past the stale window: the error
    move(T0 + 60 + 3600 + 1)
    fake_server.script(Script(status=503))
    r, text = await post_text(client, roo_body(stream=stream))
    assert r.status == 503 and "error" in json.loads(text)
    assert upstream_calls(fake_server) == 5


async def test_stale_if_error_after_early_keepalive_headers(proxy: Any, fake_server: Any) -> None:
    """R1 often fails after the proxy already sent 200 + keep-alives: the stale answer is still the reply."""
    client = await proxy(cache={"ttl": 60, "stale_if_error": 3600}, retry={"max_attempts": 1},
                         stream={"early_headers_s": 0.05, "keepalive_s": 0.05})
    move = frozen_clock(client)
    _, fresh = await answer(client, roo_body())
    move(T0 + 100)
    fake_server.script(Script(status=503, delay_first_byte=0.3))
    r, stale = await answer(client, roo_body())  # ends in [DONE], no error event
    assert r.headers["X-Cache"] == "MISS"  # went out with the early headers
    assert stale["content"] == fresh["content"] and stale["reasoning"] == fresh["reasoning"]
    fake_server.script(Script(status=503, delay_first_byte=0.3))
    r, text = await post_text(client, roo_body(cache={"no-cache": True}))  # no stale for no-cache: the error
    assert r.status == 200 and "error" in chunks_of(text)[-1] and "data: [DONE]" not in text
    assert upstream_calls(fake_server) == 3


async def test_stale_if_error_off(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"ttl": 60, "stale_if_error": 0}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 61)
    fake_server.script(Script(status=503))
    r, _ = await post_text(client, roo_body())
    assert r.status == 503


@pytest.mark.parametrize("status", [400, 401, 402])
async def test_stale_is_not_served_for_the_clients_own_errors(proxy: Any, fake_server: Any, status: int) -> None:
    """A bad key or no credit needs fixing, not hiding behind yesterday's answer (RFC 5861: 5xx only)."""
    client = await proxy(cache={"ttl": 60, "stale_if_error": 3600}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body(stream=False))
    move(T0 + 100)
    fake_server.script(Script(status=status))
    r, text = await post_text(client, roo_body(stream=False))
    assert r.status == status and r.headers.get("X-Cache") != "STALE"
    assert json.loads(text)["error"]["message"]


async def test_mid_stream_error_after_expiry_is_not_masked_by_stale(proxy: Any, fake_server: Any) -> None:
    """Bytes already reached the client: the error must show, not a stale answer spliced in."""
    client = await proxy(cache={"ttl": 60}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 61)
    fake_server.script(Script(mid_stream_error=2))
    r, text = await post_text(client, roo_body())
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    assert "error" in chunks_of(text)[-1]
