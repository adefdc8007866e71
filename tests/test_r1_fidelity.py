"""R1 reply fidelity through the real proxy and the fake OpenRouter (issue 4).

Reasoning display modes, R1 request templates, keep-alives during long silences, usage
passthrough and upstream error relay — each checked on the live reply and, where an answer
may be cached, on the cached replay too (which must look like the live one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from tests.conftest import sdk
from tests.fake_upstream import NO_TOOLS_MESSAGE, Script
from tests.helpers import AUTH
from tests.roo import roo_body

REASONING = "Okay, the user wants a flag. I should read cli.py first, then add an argparse option."
ANSWER = "I'll add the --verbose flag to the parser in cli.py."
NO_CACHE = {"enabled": False}


@dataclass
class Reply:
    """What the openai SDK reassembled from one reply."""

    content: str = ""
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    deltas: list[dict[str, Any]] = field(default_factory=list)
    first_content: str | None = None  # the first non-empty content delta (TagMatcher looks at char 0)


async def sdk_stream(client: Any, body: dict[str, Any]) -> Reply:
    api = sdk(client)
    try:
        raw = await api.chat.completions.with_raw_response.create(**body)
        out = Reply(headers=dict(raw.headers))
        stream = raw.parse()
        content, reasoning = [], []
        async for chunk in stream:
            d = chunk.model_dump(exclude_unset=True)
            if d.get("usage"):
                out.usage = d["usage"]
            for ch in d.get("choices") or ():
                delta = ch.get("delta") or {}
                out.deltas.append(delta)
                c = delta.get("content") or ""
                if c and out.first_content is None:
                    out.first_content = c
                content.append(c)
                reasoning.append(delta.get("reasoning_content") or "")
        out.content, out.reasoning = "".join(content), "".join(reasoning)
        return out
    finally:
        await api.close()


async def sdk_json(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the chat.completion as a dict, response headers) for a non-streaming request."""
    api = sdk(client)
    try:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        raw = await api.chat.completions.with_raw_response.create(**body)
        return raw.parse().model_dump(exclude_unset=True), dict(raw.headers)
    finally:
        await api.close()


def no_reasoning_anywhere(obj: Any) -> None:
    text = json.dumps(obj)
    for needle in ("reasoning_content", '"reasoning"', "reasoning_details", "<think>", "</think>"):
        assert needle not in text, needle


def split_think(content: str) -> tuple[str, str]:
    """(reasoning, answer) of a think-tags content; the tag must be at char 0 for Roo's TagMatcher."""
    assert content.startswith("<think>"), content[:40]
    inner, sep, answer = content[len("<think>"):].partition("</think>")
    assert sep, "no </think>"
    assert "<think>" not in inner and "</think>" not in answer
    return inner.strip(), answer.strip()


def think_models(mode: str) -> list[dict[str, Any]]:
    return [{"name": "deepseek-r1", "model": "deepseek/deepseek-r1", "reasoning": mode}]


# ---------------------------------------------------------------------------------------------
# 1. reasoning shown


@pytest.mark.parametrize("details", [True, False])
async def test_stream_reasoning_becomes_reasoning_content_live_and_cached(proxy: Any, fake_server: Any,
                                                                           details: bool) -> None:
    client = await proxy()
    script = Script(reasoning=REASONING, answer=ANSWER, reasoning_details=details, chunk_chars=7)
    fake_server.script(script)
    live = await sdk_stream(client, roo_body())
    assert live.headers["x-cache"] == "MISS"
    # reasoning_details carries the same text: it must not be counted twice
    assert live.reasoning == REASONING
    assert live.content == ANSWER
    assert not any("reasoning" in d or "reasoning_details" in d for d in live.deltas)
    cached = await sdk_stream(client, roo_body())
    assert cached.headers["x-cache"] == "HIT"
    assert (cached.reasoning, cached.content) == (REASONING, ANSWER)
    assert len(fake_server.calls) == 1


async def test_reasoning_details_only_is_shown_once(proxy: Any, fake_server: Any) -> None:
    """A provider that sends only reasoning_details (no `reasoning` string) still shows its text once."""
    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek/deepseek-r1",
                "choices": choices, **extra}

    det = [{"type": "reasoning.text", "text": "Think A. ", "format": "unknown", "index": 0}]
    det2 = [{"type": "reasoning.text", "text": "Think B.", "format": "unknown", "index": 0}]
    chunks = [chunk({"role": "assistant", "content": "", "reasoning_details": det}),
              chunk({"role": "assistant", "content": "", "reasoning": None, "reasoning_details": det2}),
              chunk({"content": "Done."}, "stop"),
              chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}),
              "data: [DONE]"]
    fake_server.script(Script(chunks=chunks))
    client = await proxy(cache=NO_CACHE)
    live = await sdk_stream(client, roo_body())
    assert live.reasoning == "Think A. Think B."
    assert live.content == "Done."


async def test_json_message_reasoning_becomes_reasoning_content(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(reasoning=REASONING, answer=ANSWER))
    for want_cache in ("MISS", "HIT"):
        doc, headers = await sdk_json(client, roo_body())
        assert headers["x-cache"] == want_cache
        msg = doc["choices"][0]["message"]
        assert msg["reasoning_content"] == REASONING
        assert msg["content"] == ANSWER
        assert "reasoning" not in msg and "reasoning_details" not in msg
    assert len(fake_server.calls) == 1


@pytest.mark.parametrize("chunk_chars", [24, 3, 1])
async def test_think_tags_in_content_are_split_live_and_cached(proxy: Any, fake_server: Any,
                                                               chunk_chars: int) -> None:
    """A Fireworks-style provider puts <think>…</think> in content; with chunk_chars=3 the tags are split
    across chunks ("<th" "ink" ">\\n…"), and the answer must still come out clean."""
    client = await proxy()
    fake_server.script(Script(think_tags=True, reasoning=REASONING, answer=ANSWER, chunk_chars=chunk_chars))
    for want_cache in ("MISS", "HIT"):
        r = await sdk_stream(client, roo_body())
        assert r.headers["x-cache"] == want_cache
        assert r.content == ANSWER
        assert r.reasoning.strip() == REASONING
        assert "<think" not in r.content and "think>" not in r.content
        assert "<think" not in r.reasoning and "think>" not in r.reasoning
    assert len(fake_server.calls) == 1


async def test_think_tags_in_json_content_are_split(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE)
    fake_server.script(Script(think_tags=True, reasoning=REASONING, answer=ANSWER))
    doc, _ = await sdk_json(client, roo_body())
    msg = doc["choices"][0]["message"]
    assert msg["content"] == ANSWER
    assert msg["reasoning_content"].strip() == REASONING


async def test_content_mentioning_think_later_is_left_alone(proxy: Any, fake_server: Any) -> None:
    """Only a *leading* <think> block is reasoning; an answer that talks about the tag is plain text."""
    client = await proxy(cache=NO_CACHE)
    answer = "Use the <think> tag like this: <think>x</think> in prompts."
    fake_server.script(Script(answer=answer, reasoning=REASONING, chunk_chars=5))
    r = await sdk_stream(client, roo_body())
    assert r.content == answer
    assert r.reasoning == REASONING


@pytest.mark.parametrize("upstream_think_tags", [False, True])
async def test_mode_think_tags_stream_live_and_cached(proxy: Any, fake_server: Any,
                                                      upstream_think_tags: bool) -> None:
    client = await proxy(models=think_models("think-tags"))
    fake_server.script(Script(reasoning=REASONING, answer=ANSWER, think_tags=upstream_think_tags, chunk_chars=4))
    for want_cache in ("MISS", "HIT"):
        r = await sdk_stream(client, roo_body())
        assert r.headers["x-cache"] == want_cache
        # Roo's TagMatcher only sees a <think> at the very first character of the content stream
        assert r.first_content is not None and r.first_content.startswith("<think>")
        reasoning, answer = split_think(r.content)
        assert reasoning == REASONING
        assert answer == ANSWER
        assert r.reasoning == ""
        assert not any("reasoning_content" in d or "reasoning" in d for d in r.deltas)
    assert len(fake_server.calls) == 1


async def test_mode_think_tags_json_live_and_cached(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=think_models("think-tags"))
    fake_server.script(Script(reasoning=REASONING, answer=ANSWER))
    for want_cache in ("MISS", "HIT"):
        doc, headers = await sdk_json(client, roo_body())
        assert headers["x-cache"] == want_cache
        msg = doc["choices"][0]["message"]
        assert split_think(msg["content"]) == (REASONING, ANSWER)
        assert "reasoning_content" not in msg and "reasoning" not in msg


async def test_stream_miss_replayed_as_json_hit_in_think_tags(proxy: Any, fake_server: Any) -> None:
    """A streamed answer, cached, then asked for as JSON (and the other way round) keeps the mode."""
    client = await proxy(models=think_models("think-tags"))
    fake_server.script(Script(reasoning=REASONING, answer=ANSWER), Script(reasoning=REASONING, answer=ANSWER))
    await sdk_stream(client, roo_body("first"))
    doc, headers = await sdk_json(client, roo_body("first"))
    assert headers["x-cache"] == "HIT"
    assert split_think(doc["choices"][0]["message"]["content"]) == (REASONING, ANSWER)
    await sdk_json(client, roo_body("second"))
    r = await sdk_stream(client, roo_body("second"))
    assert r.headers["x-cache"] == "HIT"
    assert split_think(r.content) == (REASONING, ANSWER)
    assert len(fake_server.calls) == 2


@pytest.mark.parametrize("upstream_think_tags", [False, True])
async def test_mode_drop_has_no_reasoning_anywhere(proxy: Any, fake_server: Any, upstream_think_tags: bool) -> None:
    client = await proxy(models=think_models("drop"))
    script = Script(reasoning=REASONING, answer=ANSWER, think_tags=upstream_think_tags, chunk_chars=5)
    fake_server.script(script, script)
    for want_cache in ("MISS", "HIT"):
        r = await client.post("/chat/completions", json=roo_body("s"), headers=AUTH)
        assert r.headers["X-Cache"] == want_cache
        text = await r.text()
        no_reasoning_anywhere(text)
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        content = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
        assert content == ANSWER
        r = await client.post("/chat/completions", json=roo_body("j", stream=False), headers=AUTH)
        assert r.headers["X-Cache"] == want_cache
        doc = await r.json()
        no_reasoning_anywhere(doc)
        assert doc["choices"][0]["message"]["content"] == ANSWER


async def test_coalesced_followers_of_aliases_with_different_modes_each_get_their_own(proxy: Any,
                                                                                    fake_server: Any) -> None:
    """Two aliases over the same upstream model share the cache key (it is computed on the upstream body),
    so their concurrent requests join one flight; each must still see its own reasoning mode."""
    models = [{"name": "r1-field", "model": "deepseek/deepseek-r1", "reasoning": "field"},
              {"name": "r1-tags", "model": "deepseek/deepseek-r1", "reasoning": "think-tags"},
              {"name": "r1-drop", "model": "deepseek/deepseek-r1", "reasoning": "drop"}]
    client = await proxy(models=models)
    fake_server.script(Script(reasoning=REASONING, answer=ANSWER, delay_first_byte=0.3, gap=0.02, chunk_chars=8))
    field_r, tags_r, drop_r = await asyncio.gather(
        sdk_stream(client, roo_body(model="r1-field")),
        sdk_stream(client, roo_body(model="r1-tags")),
        sdk_stream(client, roo_body(model="r1-drop")))
    assert len(fake_server.calls) == 1
    assert sorted(r.headers["x-cache"] for r in (field_r, tags_r, drop_r)) == ["COALESCED", "COALESCED", "MISS"]
    assert (field_r.reasoning, field_r.content) == (REASONING, ANSWER)
    assert split_think(tags_r.content) == (REASONING, ANSWER) and tags_r.reasoning == ""
    assert (drop_r.reasoning, drop_r.content) == ("", ANSWER)


# ---------------------------------------------------------------------------------------------
# 2. R1 templates


async def test_default_config_overrides_roo_temperature(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE)
    await sdk_stream(client, roo_body(temperature=0))
    sent = fake_server.calls[-1].json
    assert sent["temperature"] == 0.6 and sent["top_p"] == 0.95
    assert sent["model"] == "deepseek/deepseek-r1"


async def test_merge_into_user_with_array_content(proxy: Any, fake_server: Any) -> None:
    """protocol.md A.2 R1 format: the system prompt becomes the first user message and consecutive
    user messages merge; with an array on either side, the parts are concatenated."""
    client = await proxy(cache=NO_CACHE)
    await sdk_json(client, roo_body())
    sent = fake_server.calls[-1].json["messages"]
    assert sent == [{"role": "user", "content": [
        {"type": "text", "text": "You are Roo, a highly skilled software engineer."},
        {"type": "text", "text": "<task>\nAdd a --verbose flag to cli.py\n</task>"},
        {"type": "text", "text": "<environment_details>\n# Current Time\n2026-04-20T10:12:03+02:00\n"
                                 "</environment_details>"}]}]


async def test_merge_into_user_strings_and_tool_turns(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE)
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "U1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "file a"},
        {"role": "user", "content": [{"type": "text", "text": "U3"}]},
        {"role": "assistant", "content": "A1"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "U4"},
    ]
    body = roo_body(messages=messages, stream=False)
    r = await client.post("/chat/completions", json=body, headers=AUTH)
    assert r.status == 200
    sent = fake_server.calls[-1].json["messages"]
    assert sent == [
        {"role": "user", "content": "SYS\nU1\nU2"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "file a"},
        {"role": "user", "content": [{"type": "text", "text": "U3"}]},
        {"role": "assistant", "content": "A1\nA2"},
        {"role": "user", "content": "U4"},
    ]
    assert not any(m["role"] == "system" for m in sent)


async def test_strip_reasoning_from_history(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE)
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1", "reasoning": "R1",
         "reasoning_details": [{"type": "reasoning.text", "text": "R1"}]},
        {"role": "user", "content": "Q2"},
    ]
    r = await client.post("/chat/completions", json=roo_body(messages=messages), headers=AUTH)
    assert r.status == 200
    await r.read()
    sent = fake_server.calls[-1].json["messages"]
    assert sent[1] == {"role": "assistant", "content": "A1"}
    assert "R1" not in json.dumps(sent)


async def test_strip_reasoning_off_keeps_history(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE, models=[{"name": "deepseek-r1", "model": "deepseek/deepseek-r1",
                                                  "strip_reasoning_from_history": False}])
    messages = [{"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                {"role": "user", "content": "Q2"}]
    r = await client.post("/chat/completions", json=roo_body(messages=messages), headers=AUTH)
    await r.read()
    assert fake_server.calls[-1].json["messages"][1]["reasoning_content"] == "R1"


async def test_tools_strip(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE, models=[{"name": "deepseek-r1", "model": "deepseek/deepseek-r1",
                                                  "tools": "strip"}])
    tool = {"type": "function", "function": {"name": "read_file", "description": "Read", "strict": True,
                                             "parameters": {"type": "object", "properties": {"path": {
                                                 "type": "string"}}, "required": ["path"]}}}
    call = {"id": "call_0_1a2b", "type": "function",
            "function": {"name": "read_file", "arguments": "{\"path\":\"cli.py\"}"}}
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": [{"type": "text", "text": "<task>go</task>"}]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0_1a2b", "content": "1 | import argparse"},
        {"role": "user", "content": [{"type": "text", "text": "USE_TOOL now"}]},
    ]
    fake_server.script(Script(no_tool_support=True))  # would be a 404 if any tool field got through
    r = await sdk_stream(client, roo_body(messages=messages, tools=[tool], tool_choice="auto",
                                          parallel_tool_calls=True))
    assert r.content
    sent = fake_server.calls[-1].json
    for k in ("tools", "tool_choice", "parallel_tool_calls"):
        assert k not in sent
    assert not any(m.get("role") == "tool" or m.get("tool_calls") for m in sent["messages"])
    text = json.dumps(sent["messages"])
    assert "read_file" in text and "cli.py" in text  # the call is kept as text
    assert "1 | import argparse" in text  # and so is its result


async def test_defaults_apply_only_when_absent(proxy: Any, fake_server: Any) -> None:
    models = [{"name": "deepseek-r1", "model": "deepseek/deepseek-r1",
               "defaults": {"max_tokens": 1000, "top_p": 0.9}, "overrides": {"temperature": 0.6}}]
    client = await proxy(cache=NO_CACHE, models=models)
    r = await client.post("/chat/completions", json=roo_body("a", stream=False), headers=AUTH)
    assert r.status == 200
    sent = fake_server.calls[-1].json
    assert (sent["max_tokens"], sent["top_p"], sent["temperature"]) == (1000, 0.9, 0.6)
    r = await client.post("/chat/completions", json=roo_body("b", stream=False, max_tokens=50, top_p=0.5),
                          headers=AUTH)
    assert r.status == 200
    sent = fake_server.calls[-1].json
    assert (sent["max_tokens"], sent["top_p"], sent["temperature"]) == (50, 0.5, 0.6)


@pytest.mark.parametrize("stream", [True, False])
async def test_tools_pass_without_tool_support_says_set_strip(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(Script(no_tool_support=True))
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}
    api = sdk(client)
    body = roo_body(tools=[tool], tool_choice="auto", stream=stream)
    with pytest.raises(openai.NotFoundError) as info:
        await api.chat.completions.create(**body)
    await api.close()
    assert info.value.status_code == 404
    msg = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)
    assert NO_TOOLS_MESSAGE in msg
    assert 'tools = "strip"' in msg and "deepseek-r1" in msg
    assert len(fake_server.calls) == 1


async def test_cache_key_is_the_upstream_body(proxy: Any, fake_server: Any) -> None:
    """Roo's temperature 0 and R1-box 0.3 become the same upstream body (override 0.6): one entry."""
    client = await proxy()
    first = await sdk_stream(client, roo_body(temperature=0))
    second = await sdk_stream(client, roo_body(temperature=0.3))
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["x-cache-key"] == first.headers["x-cache-key"]
    assert len(fake_server.calls) == 1
    assert (second.content, second.reasoning) == (first.content, first.reasoning)


# ---------------------------------------------------------------------------------------------
# 3. keep-alives


async def _timed_read(resp: Any) -> list[tuple[float, bytes]]:
    """(arrival time, bytes) of every read of a response body, client side."""
    out = []
    async for data in resp.content.iter_any():
        out.append((time.monotonic(), data))
    return out


async def test_early_headers_and_keepalives_before_first_byte(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE, stream={"early_headers_s": 0.1, "keepalive_s": 0.1})
    fake_server.script(Script(delay_first_byte=0.8, reasoning=REASONING, answer=ANSWER))
    t0 = time.monotonic()
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    headers_after = time.monotonic() - t0
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert headers_after < 0.6  # well before the upstream's first byte (0.8 s)
    reads = await _timed_read(r)
    text = b"".join(d for _, d in reads).decode()
    before_data = text.split("data:", 1)[0]
    assert before_data.count(": keep-alive") >= 2
    lines = [line for line in text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith((":", "data: ")) for line in lines)
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    assert (content, reasoning) == (ANSWER, REASONING)


async def test_sdk_reads_answer_after_keepalives(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE, stream={"early_headers_s": 0.1, "keepalive_s": 0.1})
    fake_server.script(Script(delay_first_byte=0.6, reasoning=REASONING, answer=ANSWER))
    r = await sdk_stream(client, roo_body())
    assert (r.content, r.reasoning) == (ANSWER, REASONING)
    assert r.usage is not None and r.usage["completion_tokens"] > 0


async def test_silent_upstream_mid_stream_gets_keepalives(proxy: Any, fake_server: Any) -> None:
    """'Survives a 2-minute silent upstream', scaled down: 1.5 s of silence after two chunks, keep-alive
    every 0.1 s; no gap in what the client receives comes near the silence."""
    client = await proxy(cache=NO_CACHE, stream={"early_headers_s": 0.1, "keepalive_s": 0.1})
    fake_server.script(Script(silence=1.5, silence_after=2, reasoning=REASONING, answer=ANSWER, chunk_chars=10))
    t0 = time.monotonic()
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.status == 200
    reads = await _timed_read(r)
    assert time.monotonic() - t0 >= 1.4  # the silence really happened
    times = [t0] + [t for t, _ in reads]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.6, gaps  # ~3x keepalive, generously; the silence itself was 1.5 s
    text = b"".join(d for _, d in reads).decode()
    data_part = text.split("data:", 1)[1]
    assert data_part.count(": keep-alive") >= 5  # in the middle of the data, not just before it
    assert text.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER


async def test_sdk_survives_silence(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE, stream={"early_headers_s": 0.1, "keepalive_s": 0.1})
    fake_server.script(Script(silence=0.6, silence_after=1, reasoning=REASONING, answer=ANSWER))
    r = await sdk_stream(client, roo_body())
    assert (r.content, r.reasoning) == (ANSWER, REASONING)


async def test_failure_after_early_headers_is_a_final_error_event(proxy: Any, fake_server: Any) -> None:
    client = await proxy(stream={"early_headers_s": 0.1, "keepalive_s": 0.1}, retry={"max_attempts": 1})
    fake_server.script(Script(delay_first_byte=0.5, status=503, message="No instances available"))
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.status == 200  # headers had to go out early
    text = await r.text()
    lines = [line for line in text.splitlines() if line]
    assert lines[0] == ": keep-alive"
    assert "data: [DONE]" not in lines  # never a clean-looking end
    last = json.loads(lines[-1][len("data: "):])
    assert last["error"]["message"] == "503 No instances available"  # the status in the one field Roo shows
    assert last["error"]["code"] == 503
    # the openai SDK raises on it
    fake_server.script(Script(delay_first_byte=0.5, status=503, message="No instances available"))
    api = sdk(client)
    stream = await api.chat.completions.create(**roo_body())
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    await api.close()
    assert "No instances available" in str(info.value)
    # and nothing was cached
    fake_server.script(Script(answer=ANSWER))
    ok = await sdk_stream(client, roo_body())
    assert ok.headers["x-cache"] == "MISS" and ok.content == ANSWER


# ---------------------------------------------------------------------------------------------
# 4. usage

USAGE = {"prompt_tokens": 18342, "completion_tokens": 611, "total_tokens": 18953,
         "prompt_tokens_details": {"cached_tokens": 1234}, "completion_tokens_details": {"reasoning_tokens": 540},
         "cost": 0.0123, "is_byok": False}


async def test_usage_chunk_gets_cache_read_input_tokens(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(usage=dict(USAGE)))
    live = await sdk_stream(client, roo_body())
    assert live.usage is not None
    assert live.usage["cache_read_input_tokens"] == 1234
    for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost"):
        assert live.usage[k] == USAGE[k]
    assert live.usage["prompt_tokens_details"]["cached_tokens"] == 1234
    cached = await sdk_stream(client, roo_body())
    assert cached.headers["x-cache"] == "HIT"
    assert cached.usage is not None
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert cached.usage[k] == USAGE[k]
    assert cached.usage["completion_tokens_details"]["reasoning_tokens"] == 540
    assert cached.usage["cache_read_input_tokens"] == 1234
    assert cached.usage["cost"] == 0
    assert cached.usage["cost_saved"] == pytest.approx(0.0123)


async def test_usage_json_live_and_cached(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(usage=dict(USAGE)))
    live, _ = await sdk_json(client, roo_body())
    assert live["usage"]["cache_read_input_tokens"] == 1234
    assert live["usage"]["cost"] == pytest.approx(0.0123)
    assert "cost_saved" not in live["usage"]
    cached, headers = await sdk_json(client, roo_body())
    assert headers["x-cache"] == "HIT"
    assert cached["usage"]["prompt_tokens"] == 18342 and cached["usage"]["completion_tokens"] == 611
    assert cached["usage"]["cost"] == 0
    assert cached["usage"]["cost_saved"] == pytest.approx(0.0123)


# ---------------------------------------------------------------------------------------------
# 5. upstream errors


@pytest.mark.parametrize("stream", [True, False])
async def test_429_relayed_with_retry_after(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(Script(status=429, retry_after="7"))
    r = await client.post("/chat/completions", json=roo_body(stream=stream), headers=AUTH)
    assert r.status == 429
    assert r.headers["Retry-After"] == "7"
    err = (await r.json())["error"]
    assert err["message"] == "Rate limit exceeded: free-models-per-min."
    assert err["metadata"]["raw"] == "deepseek/deepseek-r1 is temporarily rate-limited upstream"
    assert len(fake_server.calls) == 1


async def test_429_metadata_raw_reaches_the_sdk(proxy: Any, fake_server: Any) -> None:
    """Roo shows ``err.error.metadata.raw`` when present (protocol.md A.5)."""
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(Script(status=429, retry_after="7"))
    api = sdk(client)
    with pytest.raises(openai.RateLimitError) as info:
        await api.chat.completions.create(**roo_body())
    await api.close()
    assert info.value.status_code == 429
    assert isinstance(info.value.body, dict)
    assert info.value.body["metadata"]["raw"].endswith("temporarily rate-limited upstream")
    assert info.value.response.headers["retry-after"] == "7"


async def test_daily_quota_is_not_retried_by_the_sdk(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "deepseek-r1-free", "model": "deepseek/deepseek-r1:free"}])
    fake_server.script(Script(daily_quota=True))
    r = await client.post("/chat/completions", json=roo_body(model="deepseek-r1-free"), headers=AUTH)
    assert r.status == 429
    assert r.headers["x-should-retry"] == "false"
    err = (await r.json())["error"]
    assert "free-models-per-day" in err["message"]
    assert err["message"].startswith("Rate limit exceeded: free-models-per-day")
    assert len(fake_server.calls) == 1  # the proxy did not retry it either


@pytest.mark.parametrize("stream", [True, False])
async def test_200_json_with_error_is_an_error_and_not_cached(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(Script(json_error=True, message="Provider returned error"))
    r = await client.post("/chat/completions", json=roo_body(stream=stream), headers=AUTH)
    assert r.status == 502  # not a 200 that looks like an answer
    err = (await r.json())["error"]
    assert err["message"] == "Provider returned error"
    r = await client.post("/chat/completions", json=roo_body(stream=stream), headers=AUTH)
    assert r.status == 200
    assert r.headers["X-Cache"] == "MISS"
    await r.read()
    assert len(fake_server.calls) == 2


@pytest.mark.parametrize("done_after_error", [False, True])
async def test_mid_stream_error_relayed_sdk_raises_not_cached(proxy: Any, fake_server: Any,
                                                              done_after_error: bool) -> None:
    client = await proxy(retry={"max_attempts": 3})
    fake_server.script(Script(mid_stream_error=3, done_after_error=done_after_error, chunk_chars=8,
                              message="Provider disconnected unexpectedly"))
    api = sdk(client)
    stream = await api.chat.completions.create(**roo_body())
    seen = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen.append(chunk)
    await api.close()
    assert "Provider disconnected unexpectedly" in str(info.value)
    assert len(seen) == 3  # the data before the error got through
    assert len(fake_server.calls) == 1  # bytes went out: never retried
    # raw: the error event is the last data event, and no [DONE] follows it
    fake_server.script(Script(mid_stream_error=3, done_after_error=done_after_error))
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.headers["X-Cache"] == "MISS"  # the failed stream was not cached
    lines = [line for line in (await r.text()).splitlines() if line.startswith("data: ")]
    assert "error" in json.loads(lines[-1][6:])
    assert "data: [DONE]" not in lines
    ok = await sdk_stream(client, roo_body())
    assert ok.headers["x-cache"] == "MISS" and ok.content
    assert len(fake_server.calls) == 3
