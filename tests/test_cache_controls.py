"""Request cache controls end to end: Cache-Control headers and the body's ``cache`` object (no-cache,
no-store, max-age, only-if-cached, ttl, s-maxage, namespace), ignore_patterns, which request fields
change the cache identity, and 400s for malformed controls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fake_upstream import Script
from tests.helpers import (
    T0,
    answer,
    frozen_clock,
    post_text,
    settle,
    upstream_calls,
)
from tests.roo import roo_body


async def test_no_cache_header_skips_lookup_but_stores(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body())
    fake_server.script(Script(answer="a newer answer"))
    r, a = await answer(client, roo_body(), {"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "BYPASS" and a["content"] == "a newer answer"
    assert upstream_calls(fake_server) == 2
    r, a = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT" and a["content"] == "a newer answer"
    assert upstream_calls(fake_server) == 2


async def test_no_store_header(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    r, _ = await answer(client, roo_body(), {"Cache-Control": "no-store"})
    assert r.headers["X-Cache"] == "MISS"
    await settle(client)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    r, _ = await answer(client, roo_body(), {"Cache-Control": "no-store"})  # a hit may still be served
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 2


async def test_max_age_header(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 100)
    r, _ = await answer(client, roo_body(), {"Cache-Control": "max-age=500"})
    assert r.headers["X-Cache"] == "HIT"
    r, _ = await answer(client, roo_body(), {"Cache-Control": 'max-age="150"'})
    assert r.headers["X-Cache"] == "HIT"
    r, _ = await answer(client, roo_body(), {"Cache-Control": "no-transform, max-age=50"})
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_only_if_cached(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    for stream in (True, False):
        r, text = await post_text(client, roo_body(stream=stream), {"Cache-Control": "only-if-cached"})
        assert r.status == 504
        assert r.headers["Content-Type"].startswith("application/json")
        err = json.loads(text)["error"]
        assert err["message"] and err["type"] and err["code"] == "cache_miss"
    assert upstream_calls(fake_server) == 0
    await answer(client, roo_body())
    r, _ = await answer(client, roo_body(stream=False), {"Cache-Control": "only-if-cached"})
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 1


async def test_only_if_cached_with_cache_off(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"enabled": False})
    r, text = await post_text(client, roo_body(), {"Cache-Control": "only-if-cached"})
    assert r.status == 504 and json.loads(text)["error"]["message"]
    assert upstream_calls(fake_server) == 0


async def test_body_cache_object_is_stripped_before_forwarding(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body(cache={"no-store": True, "ttl": 5, "namespace": "x"}))
    await answer(client, roo_body(stream=False, cache={"no-cache": True}))
    assert upstream_calls(fake_server) == 2
    for call in fake_server.calls:
        assert "cache" not in call.json


async def test_body_no_cache(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body())
    r, _ = await answer(client, roo_body(cache={"no-cache": True}))
    assert r.headers["X-Cache"] == "BYPASS"
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 2


async def test_body_no_store(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body(cache={"no-store": True}))
    await settle(client)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_body_ttl(proxy: Any, fake_server: Any) -> None:
    client = await proxy()  # default ttl is days
    move = frozen_clock(client)
    await answer(client, roo_body(cache={"ttl": 10}))
    move(T0 + 9)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    move(T0 + 11)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_body_s_maxage(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 100)
    r, _ = await answer(client, roo_body(cache={"s-maxage": 500}))
    assert r.headers["X-Cache"] == "HIT"
    r, _ = await answer(client, roo_body(cache={"s-maxage": 50}))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_body_namespace(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    r0, _ = await answer(client, roo_body())
    r1, _ = await answer(client, roo_body(cache={"namespace": "x"}))
    assert r1.headers["X-Cache"] == "MISS"
    assert r1.headers["X-Cache-Key"] != r0.headers["X-Cache-Key"]
    r2, _ = await answer(client, roo_body(cache={"namespace": "x"}))
    assert r2.headers["X-Cache"] == "HIT" and r2.headers["X-Cache-Key"] == r1.headers["X-Cache-Key"]
    r3, _ = await answer(client, roo_body(cache={"namespace": "y"}))
    assert r3.headers["X-Cache"] == "MISS"
    r4, _ = await answer(client, roo_body())
    assert r4.headers["X-Cache"] == "HIT" and r4.headers["X-Cache-Key"] == r0.headers["X-Cache-Key"]
    assert upstream_calls(fake_server) == 3


async def test_configured_namespace(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"namespace": "team-a"})
    r1, _ = await answer(client, roo_body())
    r2, _ = await answer(client, roo_body(cache={"namespace": "team-b"}))
    r3, _ = await answer(client, roo_body())
    assert [r.headers["X-Cache"] for r in (r1, r2, r3)] == ["MISS", "MISS", "HIT"]


async def test_ignore_patterns_off_through_the_proxy(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"ignore_patterns": []})
    await answer(client, roo_body(when="2026-04-20T10:12:03+02:00"))
    r, _ = await answer(client, roo_body(when="2026-04-20T10:12:09+02:00"))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_request_fields_that_do_and_do_not_change_the_answer(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body(stream=False))
    r, _ = await answer(client, roo_body(user="someone", metadata={"a": "b"},
                                         stream_options={"include_usage": False}))
    assert r.headers["X-Cache"] == "HIT"
    r, _ = await answer(client, roo_body(max_tokens=100))
    assert r.headers["X-Cache"] == "MISS"
    r, _ = await answer(client, roo_body(model="deepseek-r1-free"))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 3


@pytest.mark.parametrize("headers,cache", [
    ({"Cache-Control": "max-age=abc"}, None),
    ({"Cache-Control": "max-age="}, None),
    ({"Cache-Control": "s-maxage=1h"}, None),
    ({}, "yes"),
    ({}, ["no-cache"]),
    ({}, True),
    ({}, {"ttl": "5"}),
    ({}, {"ttl": -1}),
    ({}, {"ttl": True}),
    ({}, {"s-maxage": "x"}),
    ({}, {"namespace": 5}),
])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_bad_cache_controls_are_400(proxy: Any, fake_server: Any, headers: dict[str, str], cache: Any,
                                          stream: bool) -> None:
    client = await proxy()
    body = roo_body(stream=stream) if cache is None else roo_body(stream=stream, cache=cache)
    r, text = await post_text(client, body, headers)
    assert r.status == 400
    err = json.loads(text)["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert fake_server.calls == []
