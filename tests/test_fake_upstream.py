"""Self-test of tests/fake_upstream.py: the fake must speak protocol.md section B exactly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.fake_fixtures import FakeServer
from tests.fake_upstream import DAILY_MESSAGE, NO_TOOLS_MESSAGE, FakeOpenRouter, Script, unused_port

URL = "/api/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": "read_file", "strict": True, "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]


def body(text: str = "Add a --verbose flag to cli.py", stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "deepseek/deepseek-r1", "stream": stream,
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}], **extra}


async def read_events(resp: aiohttp.ClientResponse) -> list[str]:
    """The SSE events (comment or data lines) in order, blank separators dropped."""
    raw = (await resp.read()).decode()
    assert raw.endswith("\n\n")
    return [e for e in raw.split("\n\n") if e]


def datas(events: list[str]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if e.startswith("data: "):
            payload = e[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@pytest.fixture
async def client(aiohttp_client: Any, fake_openrouter: FakeOpenRouter) -> TestClient:
    return await aiohttp_client(fake_openrouter.app)


async def test_stream_framing(client: TestClient, fake_openrouter: FakeOpenRouter) -> None:
    resp = await client.post(URL, json=body())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    gen = resp.headers["X-Generation-Id"]
    events = await read_events(resp)
    assert events[0] == ": OPENROUTER PROCESSING"
    assert all(e.startswith((": ", "data: ")) and "\n" not in e for e in events)
    chunks = datas(events)
    assert chunks[-1] == "[DONE]"
    usage = chunks[-2]
    assert usage["choices"] == [] and usage["id"] == gen
    assert set(usage["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens", "cost", "is_byok",
                                   "prompt_tokens_details", "completion_tokens_details"}
    deltas = [c["choices"][0] for c in chunks[:-2]]
    reasoning = "".join(d["delta"].get("reasoning") or "" for d in deltas)
    details = "".join(d["delta"]["reasoning_details"][0]["text"] for d in deltas
                      if "reasoning_details" in d["delta"])
    content = "".join(d["delta"].get("content") or "" for d in deltas)
    assert reasoning and details == reasoning
    assert content == "Answer to: Add a --verbose flag to cli.py"
    assert deltas[-1]["finish_reason"] == "stop" and deltas[-1]["native_finish_reason"] == "stop"
    assert all(d["finish_reason"] is None for d in deltas[:-1])
    assert fake_openrouter.count() == 1 and fake_openrouter.last.json["stream"] is True


async def test_non_stream_shape(client: TestClient) -> None:
    resp = await client.post("/chat/completions", json=body("hello", stream=False, tools=TOOLS))
    data = await resp.json()
    msg = data["choices"][0]["message"]
    assert data["object"] == "chat.completion" and msg["content"] == "Answer to: hello"
    assert msg["reasoning"] and msg["reasoning_details"][0]["text"] == msg["reasoning"]
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_tool_call_stream(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json=body("please USE_TOOL now", tools=TOOLS))
    chunks = datas(await read_events(resp))
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"] and calls[0]["function"]["name"] == "read_file" and len(calls) >= 3
    args = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(args) == {"path": "value of path"}
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"


async def test_rate_limit_and_errors(client: TestClient, fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.script(Script(status=429, retry_after="3"), Script(daily_quota=True), Script(status=503),
                           Script(no_tool_support=True), Script(json_error=True))
    r = await client.post(URL, json=body())
    assert r.status == 429 and r.headers["Retry-After"] == "3"
    assert (await r.json())["error"]["code"] == 429
    r = await client.post(URL, json=body())
    err = (await r.json())["error"]
    assert r.status == 429 and err["message"] == DAILY_MESSAGE
    assert r.headers["X-RateLimit-Remaining"] == "0" and int(r.headers["X-RateLimit-Reset"]) > 1.7e12
    assert err["metadata"]["headers"]["X-RateLimit-Limit"] == "50" and "Retry-After" not in r.headers
    r = await client.post(URL, json=body())
    assert r.status == 503 and "Retry-After" not in r.headers
    r = await client.post(URL, json=body(tools=TOOLS))
    assert r.status == 404 and (await r.json())["error"]["message"] == NO_TOOLS_MESSAGE
    r = await client.post(URL, json=body())
    assert r.status == 200 and r.content_type == "application/json" and "error" in await r.json()
    r = await client.post(URL, json=body())  # queue empty: default behaviour again
    assert r.status == 200 and r.content_type == "text/event-stream"
    assert fake_openrouter.count() == 6


async def test_mid_stream_error(client: TestClient) -> None:
    resp = await client.post(URL, json=body("x [[fake mid_stream_error=2]]"))
    chunks = datas(await read_events(resp))
    assert len(chunks) == 3 and "[DONE]" not in chunks
    err = chunks[-1]
    assert err["error"]["code"] == 502 and err["error"]["metadata"]["error_type"] == "provider_unavailable"
    assert err["choices"][0]["finish_reason"] == "error"
    resp = await client.post(URL, json=body("x [[fake mid_stream_error=1 done_after_error]]"))
    assert datas(await read_events(resp))[-1] == "[DONE]"


async def test_drop_closes_without_done(client: TestClient) -> None:
    resp = await client.post(URL, json=body("x [[fake drop_after=2]]"))
    assert resp.status == 200
    seen: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            seen.append(line)
    assert sum(1 for x in seen if x.startswith(b"data: ")) == 2
    assert not any(b"[DONE]" in x for x in seen)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(URL, json=body("x [[fake drop_after=0]]"))


async def test_marker_variants(client: TestClient) -> None:
    resp = await client.post(URL, json=body("q [[fake think_tags processing_comments=0]]"))
    events = await read_events(resp)
    assert events[0].startswith("data: ")
    chunks = datas(events)[:-2]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content.startswith("<think>\n") and "</think>" in content and content.endswith("Answer to: q")
    assert not any(c["choices"][0]["delta"].get("reasoning") for c in chunks)
    resp = await client.post(URL, json=body("q [[fake reasoning_only finish_reason=length]]"))
    chunks = datas(await read_events(resp))[:-2]
    assert not "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    resp = await client.post(URL, json=body("q [[fake answer_size=2600]]", stream=False))
    assert len((await resp.json())["choices"][0]["message"]["content"]) == 2600


async def test_custom_chunks_and_silence(client: TestClient, fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.script(Script(chunks=[{"choices": [], "x": 1}, "data: [DONE]"], processing_comments=0,
                                  silence=0.25, keepalive=0.1))
    resp = await client.post(URL, json=body())
    events = await read_events(resp)
    assert events == [": OPENROUTER PROCESSING", ": OPENROUTER PROCESSING", 'data: {"choices":[],"x":1}',
                      "data: [DONE]"]


async def test_delay_first_byte(client: TestClient) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await client.post(URL, json=body("q [[fake delay_first_byte=0.2 gap=0.01]]"))
    assert loop.time() - t0 >= 0.2
    assert datas(await read_events(resp))[-1] == "[DONE]"


async def test_models_and_auth() -> None:
    fake = FakeOpenRouter(api_key="sk-or-test")
    from aiohttp.test_utils import TestServer
    async with TestClient(TestServer(fake.app)) as client:
        r = await client.get("/api/v1/models")
        assert [m["id"] for m in (await r.json())["data"]] == list(fake.models)
        r = await client.post(URL, json=body(), headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
        r = await client.post(URL, json=body(), headers={"Authorization": "Bearer sk-or-test"})
        assert r.status == 200
        await r.read()
        assert fake.last.headers["Authorization"] == "Bearer sk-or-test"


async def test_fake_server_fixture(fake_server: FakeServer) -> None:
    assert fake_server.base_url.endswith("/api/v1")
    async with aiohttp.ClientSession() as s:
        async with s.post(fake_server.base_url + "/chat/completions", json=body(stream=False)) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(f"http://127.0.0.1:{unused_port()}/api/v1/models")
    assert fake_server.fake.count() == 1
