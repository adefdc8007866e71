"""The two-tier cache end to end: the real proxy, the fake OpenRouter and the openai SDK.

Every test counts upstream calls on the fake, so "served from cache" is proved, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.conftest import LOCAL_KEY, sdk
from tests.fake_upstream import Script
from tests.roo import roo_body

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
T0 = 1_800_000_000.0

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file", "strict": True,
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                       "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "attempt_completion", "description": "Finish", "strict": True,
        "parameters": {"type": "object", "properties": {"result": {"type": "string"}}, "required": ["result"],
                       "additionalProperties": False}}},
]


def data_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith("data: ")]


def chunks_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in data_lines(text) if line != "data: [DONE]"]


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client reassembles from a stream: content, reasoning, tool calls, finish, usage."""
    content, reasoning, tools, finish, usage = [], [], {}, None, None
    for c in chunks:
        assert "error" not in c, c
        assert isinstance(c["choices"], list)
        if c.get("usage"):
            usage = c["usage"]
        for ch in c["choices"]:
            d = ch.get("delta") or {}
            content.append(d.get("content") or "")
            reasoning.append(d.get("reasoning_content") or "")
            for tc in d.get("tool_calls") or ():
                t = tools.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                t["id"] = tc.get("id") or t["id"]
                fn = tc.get("function") or {}
                t["name"] += fn.get("name") or ""
                t["arguments"] += fn.get("arguments") or ""
            finish = ch.get("finish_reason") or finish
    return {"content": "".join(content), "reasoning": "".join(reasoning),
            "tools": [tools[i] for i in sorted(tools)], "finish": finish, "usage": usage}


def message_of(doc: dict[str, Any]) -> dict[str, Any]:
    msg = doc["choices"][0]["message"]
    return {"content": msg.get("content") or "", "reasoning": msg.get("reasoning_content") or "",
            "tools": [{"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
                      for t in msg.get("tool_calls") or ()],
            "finish": doc["choices"][0]["finish_reason"], "usage": doc.get("usage")}


async def post(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Any, str]:
    r = await client.post("/chat/completions", json=body, headers={**AUTH, **(headers or {})})
    return r, await r.text()


async def answer(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """(response, assembled answer) for a stream or a JSON request that must succeed."""
    r, text = await post(client, body, headers)
    assert r.status == 200, text
    if body.get("stream"):
        assert data_lines(text)[-1] == "data: [DONE]"
        return r, assemble(chunks_of(text))
    return r, message_of(json.loads(text))


def upstream_calls(fake_server: Any) -> int:
    return fake_server.fake.count("/chat/completions")


def gateway(client: Any) -> Any:
    return client.app[GATEWAY_KEY]


def frozen_clock(client: Any, t: float = T0) -> Callable[[float], None]:
    """Freeze the gateway clock at t; returns set(t) to move it."""
    now = [t]
    gateway(client).clock.wall = lambda: now[0]

    def set_to(v: float) -> None:
        now[0] = v

    return set_to


async def settle(client: Any) -> None:
    """Let flights finishing for the cache end, and queued disk writes land."""
    await gateway(client).stop(5)
    await client.app[STORE_KEY].db.flush()


# -- hits ----------------------------------------------------------------------------------


async def test_repeat_is_a_memory_hit_without_upstream_call(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    move = frozen_clock(client)
    r1, a1 = await answer(client, roo_body())
    assert r1.headers["X-Cache"] == "MISS"
    key = r1.headers["X-Cache-Key"]
    assert key.startswith("r1:")
    assert "Age" not in r1.headers
    assert upstream_calls(fake_server) == 1
    move(T0 + 7)
    r2, a2 = await answer(client, roo_body(when="2026-04-20T10:12:10+02:00"))  # only the time moved on
    assert r2.headers["X-Cache"] == "HIT"
    assert r2.headers["X-Cache-Tier"] == "memory"
    assert r2.headers["X-Cache-Key"] == key
    assert r2.headers["Age"] == "7"
    assert r2.headers["Content-Type"].startswith("text/event-stream")
    assert upstream_calls(fake_server) == 1
    assert a2["content"] == a1["content"] and a1["content"]
    assert a2["reasoning"] == a1["reasoning"] and a1["reasoning"]
    # a different question is not a hit
    r3, _ = await answer(client, roo_body(text="Add a --quiet flag to cli.py"))
    assert r3.headers["X-Cache"] == "MISS"
    assert r3.headers["X-Cache-Key"] != key
    assert upstream_calls(fake_server) == 2


async def test_hit_is_free_and_reports_saved_cost(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    _, miss = await answer(client, roo_body(stream=False))
    assert miss["usage"]["cost"] > 0
    r, hit = await answer(client, roo_body(stream=False))
    assert r.headers["X-Cache"] == "HIT"
    assert hit["usage"]["cost"] == 0
    assert hit["usage"]["cost_saved"] == miss["usage"]["cost"]
    assert hit["usage"]["prompt_tokens"] == miss["usage"]["prompt_tokens"]


async def test_disk_hit_after_restart(aiohttp_client: Any, make_config: Any, fake_server: Any) -> None:
    config = make_config()
    first = await aiohttp_client(create_app(config))
    body = roo_body(text="USE_TOOL read cli.py", tools=TOOLS, tool_choice="auto")
    r, live = await answer(first, body)
    assert r.headers["X-Cache"] == "MISS"
    assert live["tools"] and live["reasoning"]
    await first.close()  # cleanup flushes the SQLite writer

    second = await aiohttp_client(create_app(config))
    r, disk = await answer(second, {**body, "stream": False})
    assert r.headers["X-Cache"] == "HIT"
    assert r.headers["X-Cache-Tier"] == "sqlite"
    assert disk["content"] == live["content"]
    assert disk["reasoning"] == live["reasoning"]
    assert disk["tools"] == live["tools"]
    assert disk["finish"] == "tool_calls"
    # promoted into memory by the disk hit
    r, again = await answer(second, body)
    assert r.headers["X-Cache"] == "HIT"
    assert r.headers["X-Cache-Tier"] == "memory"
    assert again["tools"] == live["tools"]
    assert upstream_calls(fake_server) == 1


async def test_entry_too_big_for_memory_is_served_from_disk(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"memory_mb": 0.001})  # ~1 KB: a 4 KB answer never fits
    fake_server.script(Script(answer_size=4000))
    _, live = await answer(client, roo_body())
    r, hit = await answer(client, roo_body())  # at once: the disk write may still be queued
    assert r.headers["X-Cache"] == "HIT"
    assert r.headers["X-Cache-Tier"] == "sqlite"
    assert hit["content"] == live["content"] and len(live["content"]) == 4000
    assert upstream_calls(fake_server) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_disk_only_cache_hits_an_immediate_repeat(proxy: Any, fake_server: Any, stream: bool) -> None:
    """memory_mb = 0: no memory tier to cover the SQLite writer's lag; a repeat must not pay twice."""
    client = await proxy(cache={"memory_mb": 0})
    assert client.app[STORE_KEY].cache.memory is None
    _, live = await answer(client, roo_body(stream=stream))
    for i in range(4):
        r, hit = await answer(client, roo_body(stream=i % 2 == 0))
        assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "sqlite")
        assert (hit["content"], hit["reasoning"]) == (live["content"], live["reasoning"])
    assert upstream_calls(fake_server) == 1
    await settle(client)
    r, _ = await answer(client, roo_body())
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "sqlite")
    assert upstream_calls(fake_server) == 1


async def test_memory_lru_evicts_to_disk(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"memory_mb": 0.01})  # ~10 KB: room for two 3 KB answers, not three
    texts = [f"question {i}" for i in range(3)]
    for t in texts:
        fake_server.script(Script(answer_size=3000))
        await answer(client, roo_body(text=t, stream=False))
    await settle(client)
    mem = client.app[STORE_KEY].cache.memory
    assert mem is not None and mem.bytes <= mem.max_bytes and mem.evictions >= 1
    r, _ = await answer(client, roo_body(text=texts[0], stream=False))  # the oldest: evicted from memory
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "sqlite")
    r, _ = await answer(client, roo_body(text=texts[2], stream=False))
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 3


# -- cross-serving stream <-> JSON through the openai SDK -----------------------------------


async def sdk_stream(api: Any, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    raw = await api.chat.completions.with_raw_response.create(
        model=body["model"], messages=body["messages"], tools=body.get("tools"), stream=True,
        stream_options={"include_usage": True})
    stream = raw.parse()
    content, reasoning, tools, finish, usage = [], [], {}, None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == []
        for ch in chunk.choices:
            content.append(ch.delta.content or "")
            reasoning.append((ch.delta.model_extra or {}).get("reasoning_content") or "")
            for tc in ch.delta.tool_calls or ():
                t = tools.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                t["id"] = tc.id or t["id"]
                if tc.function:
                    t["name"] += tc.function.name or ""
                    t["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert usage is not None and usage.completion_tokens > 0
    return dict(raw.headers), {"content": "".join(content), "reasoning": "".join(reasoning),
                               "tools": [tools[i] for i in sorted(tools)], "finish": finish}


async def sdk_json(api: Any, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    raw = await api.chat.completions.with_raw_response.create(
        model=body["model"], messages=body["messages"], tools=body.get("tools"))
    out = raw.parse()
    msg = out.choices[0].message
    tools = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
             for t in msg.tool_calls or ()]
    assert out.usage is not None and out.usage.completion_tokens > 0
    return dict(raw.headers), {"content": msg.content or "",
                               "reasoning": (msg.model_extra or {}).get("reasoning_content") or "",
                               "tools": tools, "finish": out.choices[0].finish_reason}


@pytest.mark.parametrize("first", ["stream", "json"])
@pytest.mark.parametrize("use_tool", [False, True], ids=["text", "tool"])
async def test_cross_serving_through_sdk(proxy: Any, fake_server: Any, first: str, use_tool: bool) -> None:
    client = await proxy()
    api = sdk(client)
    body = roo_body(text="USE_TOOL read cli.py" if use_tool else "Explain cli.py", stream=False,
                    **({"tools": TOOLS} if use_tool else {}))
    miss_call, hit_call = (sdk_stream, sdk_json) if first == "stream" else (sdk_json, sdk_stream)
    h1, miss = await miss_call(api, body)
    h2, hit = await hit_call(api, body)
    await api.close()
    assert h1["x-cache"] == "MISS" and h2["x-cache"] == "HIT"
    assert upstream_calls(fake_server) == 1
    assert bool(fake_server.calls[0].json.get("stream")) == (first == "stream")
    assert hit == miss
    assert miss["reasoning"]
    if use_tool:
        assert miss["finish"] == "tool_calls" and miss["content"] == ""
        assert len(miss["tools"]) == 1 and miss["tools"][0]["name"] == "read_file"
        assert json.loads(miss["tools"][0]["arguments"]) == {"path": "value of path"}
        assert miss["tools"][0]["id"]
    else:
        assert miss["finish"] == "stop" and miss["content"] and not miss["tools"]


@pytest.mark.parametrize("use_tool", [False, True], ids=["text", "tool"])
async def test_streamed_replay_shape(proxy: Any, fake_server: Any, use_tool: bool) -> None:
    client = await proxy()
    body = roo_body(text="USE_TOOL go" if use_tool else "Explain", stream=False,
                    **({"tools": TOOLS} if use_tool else {}))
    _, miss = await answer(client, body)  # a JSON miss...
    r, text = await post(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status == 200 and r.headers["X-Cache"] == "HIT"  # ...replayed as SSE
    assert r.headers["Content-Type"].startswith("text/event-stream")
    lines = data_lines(text)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    assert not any(line.startswith("data: :") for line in lines)
    chunks = chunks_of(text)
    assert all(c["object"] == "chat.completion.chunk" and isinstance(c["choices"], list) for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(d.get("reasoning_content") for d in deltas)
    assert not any("reasoning" in d or "reasoning_details" in d for d in deltas)
    usage = [c for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == []
    assert usage[0]["usage"]["completion_tokens"] == miss["usage"]["completion_tokens"]
    if use_tool:
        tc = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
        assert tc and tc[0][0]["index"] == 0 and tc[0][0]["id"] and tc[0][0]["function"]["name"] == "read_file"
    got = assemble(chunks)
    assert (got["content"], got["reasoning"], got["tools"], got["finish"]) == (
        miss["content"], miss["reasoning"], miss["tools"], miss["finish"])
    assert upstream_calls(fake_server) == 1


async def test_think_tags_mode_replays_like_live(proxy: Any, fake_server: Any) -> None:
    models = [{"name": "r1-think", "model": "deepseek/deepseek-r1", "reasoning": "think-tags"}]
    client = await proxy(models=models)
    body = roo_body(model="r1-think")
    _, live = await answer(client, body)
    assert live["content"].startswith("<think>\n") and "</think>" in live["content"] and not live["reasoning"]
    r, hit = await answer(client, body)
    assert r.headers["X-Cache"] == "HIT"
    assert hit["content"] == live["content"]
    r, js = await answer(client, {**body, "stream": False})
    assert r.headers["X-Cache"] == "HIT"
    assert js["content"] == live["content"]
    assert upstream_calls(fake_server) == 1


# -- what is never cached ------------------------------------------------------------------


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
    await post(client, roo_body(stream=stream))
    assert upstream_calls(fake_server) == 1
    await settle(client)
    r, _ = await answer(client, roo_body(stream=stream))
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2
    r, _ = await answer(client, roo_body(stream=stream))  # the good answer is cached
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 2


# -- single flight -------------------------------------------------------------------------


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
    await asyncio.sleep(0.1)
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
    await asyncio.sleep(0.1)  # the starter's flight is open upstream
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
    first = asyncio.ensure_future(post(client, roo_body()))
    await asyncio.sleep(0.15)  # the starter already has headers and a keep-alive, no data yet
    joiners = await asyncio.gather(answer(client, roo_body()), answer(client, roo_body(stream=False)))
    r, text = await first
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
    await asyncio.sleep(0.05)
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


# -- a client that leaves ------------------------------------------------------------------


class NoCancelServer(TestServer):
    """Like production (``web.AppRunner`` default): handlers are not cancelled when a client leaves."""

    async def _make_runner(self, **kwargs: Any) -> Any:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def start(aiohttp_client: Any, make_config: Any, cancel: bool, **sections: Any) -> Any:
    app = create_app(make_config(**sections))
    return await aiohttp_client(app if cancel else NoCancelServer(app))


async def leave_after(client: Any, body: dict[str, Any], n: int) -> str:
    """Read n data events of a stream, then hang up; returns the cache key."""
    r = await client.post("/chat/completions", json=body, headers=AUTH)
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    got = 0
    while got < n:
        line = await r.content.readline()
        assert line
        got += line.startswith(b"data: {")
    r.close()
    return r.headers["X-Cache-Key"]


@pytest.mark.parametrize("cancel", [True, False], ids=["handler-cancelled", "handler-kept"])
async def test_finish_on_disconnect_still_caches(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                                 cancel: bool) -> None:
    client = await start(aiohttp_client, make_config, cancel)
    fake_server.script(Script(gap=0.02, chunk_chars=8))
    await leave_after(client, roo_body(), 2)
    await settle(client)
    assert gateway(client).flights == {}
    r, a = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    assert a["content"] and a["reasoning"]
    assert upstream_calls(fake_server) == 1


@pytest.mark.parametrize("cancel", [True, False], ids=["handler-cancelled", "handler-kept"])
async def test_no_finish_on_disconnect_closes_upstream(aiohttp_client: Any, make_config: Any, fake_server: Any,
                                                       cancel: bool) -> None:
    client = await start(aiohttp_client, make_config, cancel, cache={"finish_on_disconnect": False})
    fake_server.script(Script(gap=0.1, chunk_chars=4, answer_size=200))  # would run for ~8 s
    t0 = time.monotonic()
    await leave_after(client, roo_body(), 2)
    fake = fake_server.fake
    while (fake.in_flight or gateway(client).flights) and time.monotonic() - t0 < 3:
        await asyncio.sleep(0.02)
    assert fake.in_flight == 0, "the upstream stream is still being read"
    assert gateway(client).flights == {}
    assert time.monotonic() - t0 < 3
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_one_leaving_follower_does_not_stop_the_others(aiohttp_client: Any, make_config: Any,
                                                             fake_server: Any) -> None:
    client = await start(aiohttp_client, make_config, False, cache={"finish_on_disconnect": False})
    fake_server.script(Script(gap=0.02, chunk_chars=8))
    stay = asyncio.ensure_future(answer(client, roo_body()))
    await asyncio.sleep(0.05)
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.headers["X-Cache"] == "COALESCED"
    await r.content.readline()
    r.close()
    _, a = await stay
    assert a["content"] and a["finish"] == "stop"
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 1


# -- freshness -----------------------------------------------------------------------------


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
    r, text = await post(client, roo_body(stream=stream), {"Cache-Control": "no-cache"})
    assert r.status == 503
    assert json.loads(text)["error"]["message"]
    fake_server.script(Script(status=503))
    r, text = await post(client, roo_body(stream=stream, cache={"no-cache": True}))
    assert r.status == 503
    # past the stale window: the error
    move(T0 + 60 + 3600 + 1)
    fake_server.script(Script(status=503))
    r, text = await post(client, roo_body(stream=stream))
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
    r, text = await post(client, roo_body(cache={"no-cache": True}))  # no stale for no-cache: the error
    assert r.status == 200 and "error" in chunks_of(text)[-1] and "data: [DONE]" not in text
    assert upstream_calls(fake_server) == 3


async def test_stale_if_error_off(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"ttl": 60, "stale_if_error": 0}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 61)
    fake_server.script(Script(status=503))
    r, _ = await post(client, roo_body())
    assert r.status == 503


@pytest.mark.parametrize("status", [400, 401, 402])
async def test_stale_is_not_served_for_the_clients_own_errors(proxy: Any, fake_server: Any, status: int) -> None:
    """A bad key or no credit needs fixing, not hiding behind yesterday's answer (RFC 5861: 5xx only)."""
    client = await proxy(cache={"ttl": 60, "stale_if_error": 3600}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body(stream=False))
    move(T0 + 100)
    fake_server.script(Script(status=status))
    r, text = await post(client, roo_body(stream=False))
    assert r.status == status and r.headers.get("X-Cache") != "STALE"
    assert json.loads(text)["error"]["message"]


async def test_mid_stream_error_after_expiry_is_not_masked_by_stale(proxy: Any, fake_server: Any) -> None:
    """Bytes already reached the client: the error must show, not a stale answer spliced in."""
    client = await proxy(cache={"ttl": 60}, retry={"max_attempts": 1})
    move = frozen_clock(client)
    await answer(client, roo_body())
    move(T0 + 61)
    fake_server.script(Script(mid_stream_error=2))
    r, text = await post(client, roo_body())
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    assert "error" in chunks_of(text)[-1]


# -- request controls ----------------------------------------------------------------------


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
        r, text = await post(client, roo_body(stream=stream), {"Cache-Control": "only-if-cached"})
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
    r, text = await post(client, roo_body(), {"Cache-Control": "only-if-cached"})
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
    r, text = await post(client, body, headers)
    assert r.status == 400
    err = json.loads(text)["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert fake_server.calls == []


# -- aliases, reasoning modes and deployments sharing one flight ----------------------------


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


# -- the SQLite tier's queued writes -------------------------------------------------------


async def test_sqlite_put_is_readable_before_the_writer_commits(tmp_path: Any) -> None:
    from r1proxy.cache import CacheEntry
    from r1proxy.cache.sqlite import SqliteTier
    from r1proxy.db import Database

    def entry(key: str, model: str = "m", created_at: float = 1000.0) -> CacheEntry:
        doc = {"id": key, "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": key}}]}
        return CacheEntry(key=key, completion=doc, created_at=created_at, expires_at=created_at + 60, model=model)

    path = tmp_path / "db" / "r1proxy.db"
    db = await Database.open(path)
    tier = SqliteTier(db)
    await tier.put(entry("v1:a"))
    got = await tier.get("v1:a")  # no flush: still queued
    assert got is not None and got.completion["id"] == "v1:a"
    await tier.put(entry("v1:b"))
    assert await tier.delete("v1:b") is True  # the queued INSERT ran first
    assert await tier.get("v1:b") is None
    await tier.put(entry("v1:c", model="other"))
    await tier.put(entry("v1:d", created_at=10.0))
    assert await tier.purge(model="other") == 1
    assert await tier.get("v1:c") is None
    assert await tier.purge(older_than_s=100, now=1000.0) == 1
    assert await tier.get("v1:d") is None
    await db.flush()
    for _ in range(50):
        if not tier._pending:
            break
        await asyncio.sleep(0.01)
    assert tier._pending == {}  # settled: reads come from the rows again
    got = await tier.get("v1:a")
    assert got is not None and got.completion["id"] == "v1:a"
    await tier.put(entry("v1:e"))
    await tier.close()
    await db.close()  # close drains the queue: the put survives a restart
    db = await Database.open(path)
    tier = SqliteTier(db)
    try:
        assert {k for k in ("v1:a", "v1:b", "v1:c", "v1:d", "v1:e") if await tier.get(k)} == {"v1:a", "v1:e"}
    finally:
        await tier.close()
        await db.close()


async def test_sqlite_pending_puts_do_not_pile_up_under_steady_writes(tmp_path: Any) -> None:
    """Under a steady stream of writes the writer's queue never drains; entries whose row has landed
    must still be forgotten (each holds ~25 KB: 10,000 misses once cost 500 MB of RSS)."""
    import time as _time

    from r1proxy.cache import CacheEntry
    from r1proxy.cache.sqlite import SqliteTier
    from r1proxy.db import Database

    db = await Database.open(tmp_path / "r1proxy.db")
    tier = SqliteTier(db)
    stop = asyncio.Event()

    async def keep_writing() -> None:  # like the request log under load
        while not stop.is_set():
            db.submit("UPDATE cache_entries SET hits = hits WHERE key = ?", ("v1:none",))
            await asyncio.sleep(0.0002)

    busy = asyncio.create_task(keep_writing())
    try:
        for i in range(200):
            doc = {"id": str(i), "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "x" * 2000}}]}
            await tier.put(CacheEntry(key=f"v1:{i}", completion=doc, created_at=1.0, expires_at=9e9,
                                      request=b"r" * 20000))
            await asyncio.sleep(0)
        deadline = _time.monotonic() + 5
        while tier._pending and _time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert tier._pending == {}  # settled while writes kept coming
        assert await tier.get("v1:0") is not None  # served from its row
    finally:
        stop.set()
        await busy
        await tier.close()
        await db.close()
