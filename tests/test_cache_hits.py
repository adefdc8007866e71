"""Cache hits end to end (the real proxy, the fake OpenRouter, the openai SDK): memory and disk hits,
restarts, eviction to disk, and an answer cached from a stream served as JSON and back, shaped like live.

Every test counts upstream calls on the fake, so "served from cache" is proved, not assumed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from r1proxy.app import create_app
from r1proxy.appkeys import STORE_KEY
from tests.conftest import sdk
from tests.fake_upstream import Script
from tests.helpers import (
    T0,
    answer,
    assemble,
    chunks_of,
    data_lines,
    frozen_clock,
    post_text,
    settle,
    upstream_calls,
)
from tests.roo import roo_body

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
    r, text = await post_text(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
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
