"""Upstream edges (#11): think blocks out of history, retry storms, errors that keep their meaning,
limits that name themselves, oversized or broken upstream replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import LOCAL_KEY
from tests.fake_upstream import Script
from tests.helpers import AUTH, chat, until
from tests.roo import roo_body

NO_CACHE = {"enabled": False}


@pytest.mark.parametrize("strip", [True, False])
async def test_think_block_in_assistant_history_is_stripped(proxy: Any, fake_server: Any, strip: bool) -> None:
    client = await proxy(cache=NO_CACHE, models=[{"name": "deepseek-r1", "model": "deepseek/deepseek-r1",
                                                  "strip_reasoning_from_history": strip}])
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": [{"type": "text", "text": " <think>more plans</think>A2"}]},
        {"role": "user", "content": "Q3"},
        {"role": "assistant", "content": "A3 mentions <think>tags</think> in passing"},
        {"role": "user", "content": "Q4"},
    ]
    r = await client.post("/chat/completions", json=roo_body(messages=messages, stream=False), headers=AUTH)
    assert r.status == 200
    sent = [m for m in fake_server.calls[-1].json["messages"] if m["role"] == "assistant"]
    if strip:
        assert sent[0]["content"] == "A1"
        assert sent[1]["content"] == [{"type": "text", "text": "A2"}]
        assert "plan" not in json.dumps(sent)
    else:
        assert "secret plan" in sent[0]["content"]
    assert sent[2]["content"] == "A3 mentions <think>tags</think> in passing"


def last_event(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("data: ")]
    return dict(json.loads(lines[-1][len("data: "):]))


# -- retry storms --------------------------------------------------------------------------

async def test_an_error_r1proxy_retried_tells_the_sdk_not_to_retry(proxy: Any, fake_server: Any) -> None:
    import openai

    client = await proxy(retry={"max_attempts": 3})
    fake_server.script(*[Script(status=429, retry_after="0")] * 3)
    api = openai.AsyncOpenAI(base_url=str(client.make_url("")), api_key=LOCAL_KEY, max_retries=2)
    with pytest.raises(openai.RateLimitError) as info:
        await api.chat.completions.create(**chat())
    await api.close()
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.headers["Retry-After"] == "0"  # kept
    assert fake_server.fake.count() == 3  # one Roo request, three upstream calls (not nine)


@pytest.mark.parametrize("script,attempts,final", [
    (Script(status=503), 3, True),     # retried by r1proxy
    (Script(status=400), 3, True),     # retrying cannot help
    (Script(status=503), 1, False),    # not retried here: the client may
    (Script(json_error=True), 3, True),  # a 200 carrying an error, retried
])
async def test_x_should_retry_on_final_errors(proxy: Any, fake_server: Any, script: Script, attempts: int,
                                              final: bool) -> None:
    client = await proxy(retry={"max_attempts": attempts})
    fake_server.script(*[script] * attempts)
    r = await client.post("/chat/completions", json=chat(), headers=AUTH)
    assert r.status >= 400
    assert (r.headers.get("x-should-retry") == "false") is final


# -- errors that keep their meaning --------------------------------------------------------

async def test_error_after_early_headers_carries_status_and_metadata_raw(proxy: Any, fake_server: Any) -> None:
    client = await proxy(stream={"early_headers_s": 0.05, "keepalive_s": 0.05}, retry={"max_attempts": 1})
    fake_server.script(Script(delay_first_byte=0.4, status=429))
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    assert r.status == 200
    err = last_event(await r.text())["error"]
    assert err["message"].startswith("429 Rate limit exceeded")
    assert "deepseek/deepseek-r1 is temporarily rate-limited upstream" in err["message"]


async def test_upstream_mid_stream_error_message_carries_its_status(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache=NO_CACHE)
    fake_server.script(Script(mid_stream_error=2, message="Provider returned error"))
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    assert last_event(await r.text())["error"]["message"] == "502 Provider returned error"


async def test_a_daily_quota_r1proxy_answers_itself_keeps_openrouters_advice(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "free", "model": "deepseek/deepseek-r1:free"}])
    fake_server.script(Script(daily_quota=True))
    r = await client.post("/chat/completions", json=chat("one", model="free"), headers=AUTH)
    assert r.status == 429
    r = await client.post("/chat/completions", json=chat("two", model="free"), headers=AUTH)
    msg = (await r.json())["error"]["message"]
    assert r.status == 429 and fake_server.fake.count() == 1
    assert "resets in" in msg and "Add 10 credits to unlock 1000 free model requests per day" in msg


@pytest.mark.parametrize("drop_after", [0, 2])
async def test_a_dropped_connection_reads_as_a_sentence(proxy: Any, fake_server: Any, drop_after: int) -> None:
    client = await proxy(retry={"max_attempts": 1})
    fake_server.script(Script(drop_after=drop_after))
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    text = await r.text()
    msg = last_event(text)["error"]["message"] if r.status == 200 else json.loads(text)["error"]["message"]
    assert "closed the connection" in msg or "dropped the connection" in msg
    assert "Error" not in msg and "<" not in msg, msg  # no exception names, no reprs


async def test_total_timeout_names_the_limit(proxy: Any, fake_server: Any) -> None:
    client = await proxy(upstreams={"openrouter": {"total_timeout": 1}}, retry={"max_attempts": 1})
    fake_server.script(Script(gap=0.3, answer_size=400, chunk_chars=10))
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    msg = last_event(await r.text())["error"]["message"]
    assert "total_timeout" in msg and "silent" not in msg


# -- oversized, nested or broken upstream replies -------------------------------------------

def deep(n: int) -> Any:
    doc: Any = "x"
    for _ in range(n):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("depth", [100, 5000])
async def test_deeply_nested_upstream_json_is_a_502(proxy: Any, fake_server: Any, stream: bool,
                                                    depth: int) -> None:
    client = await proxy(retry={"max_attempts": 1})
    nested = '{"x":' * depth + "1" + "}" * depth
    if stream:
        fake_server.script(Script(raw_stream=f"data: {nested}\n\ndata: [DONE]\n\n".encode()))
    else:
        fake_server.script(Script(raw_body=nested.encode()))
    r = await client.post("/chat/completions", json=chat(stream=stream), headers=AUTH)
    text = await r.text()
    err = last_event(text)["error"] if r.status == 200 else json.loads(text)["error"]
    assert r.status in (200, 502) and "nested too deeply" in err["message"]


async def test_an_event_over_max_event_mb_is_a_502(proxy: Any, fake_server: Any) -> None:
    client = await proxy(stream={"max_event_mb": 0.01}, retry={"max_attempts": 1})
    fake_server.script(Script(answer_size=50_000, chunk_chars=50_000))
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    text = await r.text()
    err = last_event(text)["error"] if r.status == 200 else json.loads(text)["error"]
    assert "max_event_mb" in err["message"]
    assert err["code"] == "event_too_large"


CHUNK = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "caf\ufffd!"}, "finish_reason": None}]}
END = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.mark.parametrize("stream", [True, False])
async def test_invalid_utf8_from_upstream_is_relayed_alike_and_not_cached(proxy: Any, fake_server: Any,
                                                                          stream: bool) -> None:
    client = await proxy()
    if stream:
        body = ("data: " + json.dumps(CHUNK, ensure_ascii=False) + "\r\rdata: " + json.dumps(END) +
                "\r\rdata: [DONE]\r\r").encode().replace("\ufffd".encode(), b"\xe9")  # bare CR line ends too
        script = Script(raw_stream=body)
    else:
        doc = {"id": "gen-1", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "caf\ufffd!"},
                            "finish_reason": "stop"}], "usage": END["usage"]}
        script = Script(raw_body=json.dumps(doc, ensure_ascii=False).encode().replace("\ufffd".encode(), b"\xe9"))
    fake_server.script(script, script)
    for expected in ("MISS", "MISS"):  # never stored: the second request goes upstream again
        r = await client.post("/chat/completions", json=chat(stream=stream), headers=AUTH)
        text = await r.text()
        assert r.status == 200 and r.headers["X-Cache"] == expected
        assert "caf\ufffd!" in (text if stream else json.loads(text)["choices"][0]["message"]["content"])
    assert fake_server.fake.count() == 2


# -- a client that left ----------------------------------------------------------------------

async def test_finish_on_disconnect_is_capped(proxy: Any, fake_server: Any) -> None:

    from r1proxy.appkeys import GATEWAY_KEY

    client = await proxy(cache={"finish_on_disconnect_max": "200ms"})
    fake_server.script(Script(gap=0.5, answer_size=400, chunk_chars=10))  # about 20 s to finish
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    await r.content.readline()
    r.close()  # the client leaves
    gw = client.app[GATEWAY_KEY]
    await until(lambda: not gw.flights and fake_server.fake.in_flight == 0, "the flight stopped", timeout=5)
    assert not gw.flights  # stopped long before the answer would have ended


async def test_an_only_if_cached_miss_is_final(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    r = await client.post("/chat/completions", json=chat("never asked"), headers={**AUTH,
                                                                                 "Cache-Control": "only-if-cached"})
    assert r.status == 504 and r.headers["x-should-retry"] == "false"
