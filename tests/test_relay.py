"""The core relay: Roo Code-shaped requests through the proxy to the fake OpenRouter."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY
from r1proxy.logsetup import PlainFormatter
from tests.conftest import LOCAL_KEY, UPSTREAM_KEY, sdk
from tests.fake_upstream import Script
from tests.helpers import AUTH
from tests.roo import roo_body


async def direct(fake_server: Any) -> tuple[str, str]:
    """(content, reasoning) the SDK reassembles when the last upstream call is sent straight to the fake."""
    import openai

    body = dict(fake_server.calls[-1].json)
    extra = {k: body.pop(k) for k in ("session_id", "provider") if k in body}  # OpenRouter's, not the SDK's
    api = openai.AsyncOpenAI(base_url=fake_server.base_url, api_key="x", max_retries=0)
    stream = await api.chat.completions.create(**{**body, "stream": True}, extra_body=extra or None)
    content, reasoning = [], []
    async for chunk in stream:
        for ch in chunk.choices:
            content.append(ch.delta.content or "")
            reasoning.append((ch.delta.model_extra or {}).get("reasoning") or "")
    await api.close()
    return "".join(content), "".join(reasoning)


def sse_events(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


async def test_health_and_models(proxy: Any) -> None:
    client = await proxy()
    r = await client.get("/health")
    assert r.status == 200
    assert (await r.json())["status"] == "ok"
    for path in ("/models", "/v1/models"):
        r = await client.get(path, headers=AUTH)
        doc = await r.json()
        assert doc["object"] == "list"
        assert {m["id"] for m in doc["data"]} == {"deepseek-r1", "deepseek-r1-free"}


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
async def test_stream_relay_keeps_comments_and_renames_reasoning(proxy: Any, fake_server: Any, path: str) -> None:
    client = await proxy(cache={"enabled": False})
    r = await client.post(path, json=roo_body(), headers={**AUTH, "X-Stainless-Lang": "js",
                                                            "HTTP-Referer": "https://github.com/RooVetGit/Roo-Cline"})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in r.headers
    text = await r.text()
    lines = sse_events(text)
    assert ": OPENROUTER PROCESSING" in lines
    assert not any(line.startswith("data: :") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert all(isinstance(c["choices"], list) for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(d.get("reasoning_content") for d in deltas)
    assert not any("reasoning" in d or "reasoning_details" in d for d in deltas)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0
    call = fake_server.calls[-1]
    assert call.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(h.lower().startswith("x-stainless") for h in call.headers)
    assert call.json["model"] == "deepseek/deepseek-r1"


async def test_sdk_stream_reassembles_upstream_content(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"enabled": False})
    api = sdk(client)
    body = roo_body()
    stream = await api.chat.completions.create(model=body["model"], messages=body["messages"], stream=True,
                                               stream_options={"include_usage": True})
    content, reasoning, usage = [], [], None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            content.append(ch.delta.content or "")
            reasoning.append((ch.delta.model_extra or {}).get("reasoning_content") or "")
    await api.close()
    want_content, want_reasoning = await direct(fake_server)
    assert "".join(content) == want_content and want_content
    assert "".join(reasoning) == want_reasoning and want_reasoning
    assert usage is not None and usage.completion_tokens > 0


async def test_sdk_json(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"enabled": False})
    api = sdk(client)
    body = roo_body()
    out = await api.chat.completions.create(model=body["model"], messages=body["messages"])
    await api.close()
    msg = out.choices[0].message
    assert fake_server.calls[-1].json.get("stream") in (None, False)
    want_content, want_reasoning = await direct(fake_server)
    assert msg.content == want_content
    assert msg.model_extra["reasoning_content"] == want_reasoning


@pytest.mark.parametrize("raw,param", [
    (b"not json", None),
    (b"[1,2]", None),
    (b"", None),
    (json.dumps({"model": "deepseek-r1"}).encode(), "messages"),
    (json.dumps({"model": "deepseek-r1", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "deepseek-r1", "messages": "hi"}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    (json.dumps({"model": 7, "messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
])
async def test_bad_input_gets_openai_error(proxy: Any, fake_server: Any, raw: bytes, param: str | None) -> None:
    client = await proxy()
    r = await client.post("/chat/completions", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert err["param"] == param
    assert fake_server.calls == []
    r = await client.get("/health")
    assert r.status == 200


async def test_too_large_wrong_method_unknown_path(proxy: Any) -> None:
    client = await proxy(server={"max_request_mb": 0.01})
    r = await client.post("/chat/completions", data=b"x" * 20000, headers=AUTH)
    assert r.status == 413
    assert (await r.json())["error"]["message"]
    r = await client.get("/chat/completions", headers=AUTH)
    assert r.status == 405
    assert "error" in await r.json()
    r = await client.get("/nope")
    assert r.status == 404
    assert "error" in await r.json()


async def test_local_keys(proxy: Any) -> None:
    client = await proxy(keys=[{"name": "roo", "key": LOCAL_KEY}])
    r = await client.post("/chat/completions", json=roo_body())
    assert r.status == 401
    r = await client.post("/chat/completions", json=roo_body(), headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    err = (await r.json())["error"]
    assert "roo" not in err["message"]
    r = await client.post("/chat/completions", json=roo_body(stream=False), headers={"x-api-key": LOCAL_KEY})
    assert r.status == 200


async def test_upstream_error_before_first_byte_kept(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"enabled": False}, retry={"max_attempts": 1})
    fake_server.script(Script(status=402, message="Insufficient credits"))
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.status == 402
    err = (await r.json())["error"]
    assert err["message"] == "Insufficient credits"


async def test_connection_refused_is_502_and_names_upstream(proxy: Any) -> None:
    from tests.fake_upstream import unused_port

    client = await proxy(upstreams={"openrouter": {"base_url": f"http://127.0.0.1:{unused_port()}/api/v1"}},
                         retry={"max_attempts": 1})
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.status == 502
    text = await r.text()
    assert "openrouter" in text and UPSTREAM_KEY not in text


async def test_timeout_is_504(proxy: Any, fake_server: Any) -> None:
    client = await proxy(upstreams={"openrouter": {"first_byte_timeout": 0.2}}, retry={"max_attempts": 1})
    fake_server.script(Script(delay_first_byte=1.0))
    r = await client.post("/chat/completions", json=roo_body(stream=False), headers=AUTH)
    assert r.status == 504
    assert "openrouter" in (await r.json())["error"]["message"]


async def test_upstream_key_never_leaks(proxy: Any, fake_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = await proxy(retry={"max_attempts": 1})
    seen = []
    for script in (Script(), Script(status=401, message="bad key"), Script(mid_stream_error=2),
                   Script(drop_after=2)):
        fake_server.script(script)
        r = await client.post("/chat/completions", json=roo_body(text=f"leak {len(seen)}"), headers=AUTH)
        seen.append(await r.text())
        seen.append(str(dict(r.headers)))
    r = await client.get("/models", headers=AUTH)
    seen.append(await r.text())
    client.app[GATEWAY_KEY].flush_accounting()  # the access lines are written in batches
    assert not any(UPSTREAM_KEY in s for s in seen)
    rendered = "\n".join(PlainFormatter().format(r) for r in caplog.records)  # as they reach stderr
    assert rendered.count("request_id=") >= 4  # the access lines were really captured
    assert UPSTREAM_KEY not in rendered and UPSTREAM_KEY not in caplog.text


async def test_missing_upstream_key_is_a_clear_error_not_an_upstream_401(
        aiohttp_client: Any, fake_server: Any, tmp_path: Any) -> None:
    from r1proxy.app import create_app
    from r1proxy.config import build_config

    cfg = build_config({"upstreams": {"openrouter": {"base_url": fake_server.base_url}},
                        "server": {"state_dir": str(tmp_path / "s")}}, env={})
    client = await aiohttp_client(create_app(cfg))
    r = await client.post("/chat/completions", json=roo_body(stream=False), headers=AUTH)
    assert r.status == 500 and r.headers["x-should-retry"] == "false"
    err = (await r.json())["error"]
    assert "OPENROUTER_API_KEY" in err["message"] and err["code"] == "upstream_key_missing"
    assert fake_server.calls == []  # nothing went upstream without a key
