"""Single flight end to end: concurrent identical requests (stream or JSON, any alias or reasoning
mode of one model) share one upstream call; late joiners get the whole answer; no-cache never joins.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.fake_upstream import Script
from tests.helpers import (
    AUTH,
    answer,
    assemble,
    chunks_of,
    gateway,
    until,
    upstream_calls,
)
from tests.roo import roo_body


async def test_ten_concurrent_streams_make_one_upstream_call(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(delay_first_byte=0.3, gap=0.01))
    results = await asyncio.gather(*(answer(client, roo_body()) for _ in range(10)))
    assert upstream_calls(fake_server) == 1
    labels = sorted(r.headers["X-Cache"] for r, _ in results)
    assert labels == ["COALESCED"] * 9 + ["MISS"]
    first = results[0][1]
    assert first["content"] and first["reasoning"] and first["usage"]
    for _, a in results:
        assert a == first
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 1


async def test_a_joiner_that_may_store_keeps_a_no_store_starters_answer(proxy: Any, fake_server: Any) -> None:
    """no-store is the asking client's wish for its own reply; a joiner without it still gets the cache."""
    client = await proxy()
    fake_server.script(Script(delay_first_byte=0.3))
    starter = asyncio.create_task(answer(client, roo_body(), {"Cache-Control": "no-store"}))
    await until(lambda: upstream_calls(fake_server) == 1, "the starter's flight open upstream")
    joiner = await answer(client, roo_body())
    await starter
    assert joiner[0].headers["X-Cache"] == "COALESCED"
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT" and upstream_calls(fake_server) == 1


async def test_no_store_starter_alone_is_not_stored(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    await answer(client, roo_body(), {"Cache-Control": "no-store"})
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2


@pytest.mark.parametrize("starter", ["stream", "json"])
async def test_stream_and_json_joiners_share_one_call(proxy: Any, fake_server: Any, starter: str) -> None:
    client = await proxy()
    fake_server.script(Script(delay_first_byte=0.3, gap=0.01, tool_call=False))
    first = asyncio.ensure_future(answer(client, roo_body(stream=starter == "stream")))
    await until(lambda: upstream_calls(fake_server) == 1, "the starter's flight open upstream")
    others = [asyncio.ensure_future(answer(client, roo_body(stream=i % 2 == 0))) for i in range(6)]
    results = [await first] + [await o for o in others]
    assert upstream_calls(fake_server) == 1
    assert bool(fake_server.calls[0].json.get("stream")) == (starter == "stream")
    assert [r.headers["X-Cache"] for r, _ in results] == ["MISS"] + ["COALESCED"] * 6
    want = results[0][1]
    for _, a in results:
        assert (a["content"], a["reasoning"], a["finish"]) == (want["content"], want["reasoning"], "stop")
        assert a["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    for r, _ in results[1:]:
        ctype = r.headers["Content-Type"]
        assert ctype.startswith("text/event-stream") or ctype.startswith("application/json")


async def test_late_joiner_gets_the_whole_stream(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(gap=0.02, chunk_chars=6))
    r1 = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r1.headers["X-Cache"] == "MISS"
    seen: list[bytes] = []
    while True:  # read until the answer has begun (reasoning is already out)
        line = await r1.content.readline()
        assert line, "stream ended before the answer began"
        seen.append(line)
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"] and \
                json.loads(line[6:])["choices"][0]["delta"].get("content"):
            break
    assert not gateway(client).flights[r1.headers["X-Cache-Key"]].finished
    r2, late = await answer(client, roo_body())
    assert r2.headers["X-Cache"] == "COALESCED"
    rest = await r1.read()
    early = assemble(chunks_of(b"".join(seen).decode() + rest.decode()))
    assert late == early
    assert late["content"] and late["reasoning"] and late["usage"]
    assert upstream_calls(fake_server) == 1


async def test_slow_first_byte_early_headers_then_cached(proxy: Any, fake_server: Any) -> None:
    """Headers and keep-alives go out before upstream answers (Node's 300 s limit); the answer still caches."""
    client = await proxy(stream={"early_headers_s": 0.05, "keepalive_s": 0.05})
    fake_server.script(Script(delay_first_byte=0.3))
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)  # returns at the early headers
    keepalive = await r.content.readline() + await r.content.readline()
    assert keepalive == b": keep-alive\n\n" and upstream_calls(fake_server) == 1  # headers, no data yet
    joiners = await asyncio.gather(answer(client, roo_body()), answer(client, roo_body(stream=False)))
    text = (keepalive + await r.read()).decode()
    assert r.headers["X-Cache"] == "MISS" and text.startswith(": keep-alive\n\n")
    live = assemble(chunks_of(text))
    for jr, a in joiners:
        assert jr.headers["X-Cache"] == "COALESCED"
        assert (a["content"], a["reasoning"]) == (live["content"], live["reasoning"])
    r, hit = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT" and "Warning" not in r.headers
    assert (hit["content"], hit["reasoning"]) == (live["content"], live["reasoning"])
    assert upstream_calls(fake_server) == 1


async def test_no_cache_does_not_join_a_flight(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(delay_first_byte=0.2), Script(delay_first_byte=0.2))
    a = asyncio.ensure_future(answer(client, roo_body()))
    await until(lambda: upstream_calls(fake_server) == 1, "the first request's flight open upstream")
    r, _ = await answer(client, roo_body(), {"Cache-Control": "no-cache"})
    ra, _ = await a
    assert ra.headers["X-Cache"] == "MISS" and r.headers["X-Cache"] == "BYPASS"
    assert upstream_calls(fake_server) == 2


async def test_concurrent_different_requests_do_not_share(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    texts = [f"q{i} [[fake delay_first_byte=0.1 answer=answer-{i}]]" for i in range(3)]
    results = await asyncio.gather(*(answer(client, roo_body(text=t)) for t in texts))
    assert upstream_calls(fake_server) == 3
    assert [a["content"] for _, a in results] == ["answer-0", "answer-1", "answer-2"]
    assert all(r.headers["X-Cache"] == "MISS" for r, _ in results)


async def test_think_tags_late_joiner_and_field_alias_share_a_flight(proxy: Any, fake_server: Any) -> None:
    """Followers render the shared flight items each in its own mode: none may see another's rendering."""
    models = [{"name": "r1-think", "model": "deepseek/deepseek-r1", "reasoning": "think-tags"},
              {"name": "r1-think-2", "model": "deepseek/deepseek-r1", "reasoning": "think-tags"},
              {"name": "r1-field", "model": "deepseek/deepseek-r1", "reasoning": "field"},
              {"name": "r1-drop", "model": "deepseek/deepseek-r1", "reasoning": "drop"}]
    client = await proxy(models=models)
    fake_server.script(Script(gap=0.02, chunk_chars=5))
    first = await client.post("/chat/completions", json=roo_body(model="r1-think"), headers=AUTH)
    head = [await first.content.readline() for _ in range(8)]  # some reasoning is out
    joiners = await asyncio.gather(*(answer(client, roo_body(model=m))
                                     for m in ("r1-think-2", "r1-field", "r1-drop", "r1-think")))
    lead = assemble(chunks_of(b"".join(head).decode() + (await first.read()).decode()))
    assert upstream_calls(fake_server) == 1
    assert all(r.headers["X-Cache"] == "COALESCED" for r, _ in joiners)
    (_, think2), (_, field), (_, drop), (_, think) = joiners
    assert field["reasoning"] and field["content"] and "<think>" not in field["content"]
    want_think = f"<think>\n{field['reasoning']}\n</think>\n\n{field['content']}"
    assert lead["content"] == want_think and not lead["reasoning"]
    assert think["content"] == want_think and think2["content"] == want_think
    assert drop["content"] == field["content"] and not drop["reasoning"]
    # and the cached replay of each mode matches what was live
    for model, want in (("r1-think", lead), ("r1-field", field), ("r1-drop", drop)):
        r, hit = await answer(client, roo_body(model=model))
        assert r.headers["X-Cache"] == "HIT"
        assert (hit["content"], hit["reasoning"]) == (want["content"], want["reasoning"])
    assert upstream_calls(fake_server) == 1


async def test_load_balanced_alias_has_one_cache_identity(proxy: Any, fake_server: Any) -> None:
    """Two deployments of one alias (round-robin over two upstreams): a repeat must still be a hit."""
    client = await proxy(upstreams={"openrouter": {}, "mirror": {"api_key_env": "OPENROUTER_API_KEY"}},
                         models=[{"name": "r1", "model": "deepseek/deepseek-r1", "upstream": "openrouter"},
                                 {"name": "r1", "model": "deepseek/deepseek-r1", "upstream": "mirror"}])
    r1, _ = await answer(client, roo_body(model="r1", stream=False))
    r2, _ = await answer(client, roo_body(model="r1", stream=False))
    r3, _ = await answer(client, roo_body(model="r1"))
    assert r1.headers["X-Cache"] == "MISS"
    assert (r2.headers["X-Cache"], r3.headers["X-Cache"]) == ("HIT", "HIT")
    assert r1.headers["X-Cache-Key"] == r2.headers["X-Cache-Key"] == r3.headers["X-Cache-Key"]
    assert upstream_calls(fake_server) == 1
