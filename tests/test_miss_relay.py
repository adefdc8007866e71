"""The miss relay: upstream frames reach the client before the answer is assembled for the cache,
and what happens after the upstream's ``[DONE]`` never changes what the client got."""

from __future__ import annotations

import json
from typing import Any

import pytest

from r1proxy.completion import Assembler
from tests.fake_upstream import Script
from tests.helpers import AUTH, assemble, chat, chunks_of, data_lines

CHUNK = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]}
END = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


async def test_a_stream_that_ended_reaches_the_client_whole_even_if_assembling_it_fails(
        proxy: Any, fake_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Assembler) -> dict[str, Any]:
        raise RuntimeError("assembly bug")

    monkeypatch.setattr(Assembler, "completion", broken)
    client = await proxy()
    for expected in ("MISS", "MISS"):  # nothing was stored: the second request goes upstream again
        r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
        text = await r.text()
        assert r.status == 200 and r.headers["X-Cache"] == expected
        assert data_lines(text)[-1] == "data: [DONE]"
        got = assemble(chunks_of(text))  # no error event: the client's answer was complete
        assert got["content"] and got["reasoning"] and got["finish"] == "stop"
    assert fake_server.fake.count() == 2


async def test_nothing_after_the_upstreams_done_is_relayed_or_stored(proxy: Any, fake_server: Any) -> None:
    late = {**CHUNK, "choices": [{"index": 0, "delta": {"content": " and more"}, "finish_reason": None}]}
    fake_server.script(Script(raw_stream=sse(CHUNK, END, b"[DONE]", late)))
    client = await proxy()
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    text = await r.text()
    assert data_lines(text)[-1] == "data: [DONE]"
    assert assemble(chunks_of(text))["content"] == "Hello"
    r = await client.post("/chat/completions", json=chat(stream=False), headers=AUTH)  # the stored answer
    doc = await r.json()
    assert r.headers["X-Cache"] == "HIT" and doc["choices"][0]["message"]["content"] == "Hello"


async def test_an_error_event_then_done_ends_with_the_error(proxy: Any, fake_server: Any) -> None:
    err = {**CHUNK, "error": {"code": 502, "message": "Provider disconnected"},
           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    fake_server.script(Script(raw_stream=sse(CHUNK, err, b"[DONE]")))
    client = await proxy()
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    text = await r.text()
    assert "data: [DONE]" not in data_lines(text)
    assert "Provider disconnected" in chunks_of(text)[-1]["error"]["message"]


async def test_the_headers_go_out_with_the_first_frame_when_it_is_ready(
        proxy: Any, fake_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream headers and data in one read (a burst): the client's status line, headers and first
    frame leave in one send, not two (one wake-up of the client fewer before its first token)."""
    from aiohttp.http_writer import StreamWriter

    sends: list[bytes] = []
    write, writelines = StreamWriter._write, StreamWriter._writelines

    def record(self: StreamWriter, chunk: Any) -> None:
        sends.append(bytes(chunk))
        write(self, chunk)

    def record_lines(self: StreamWriter, chunks: Any) -> None:
        chunks = list(chunks)
        sends.append(b"".join(bytes(c) for c in chunks))
        writelines(self, chunks)

    monkeypatch.setattr(StreamWriter, "_write", record)
    monkeypatch.setattr(StreamWriter, "_writelines", record_lines)
    fake_server.script(Script(raw_stream=sse(CHUNK, END, b"[DONE]")))
    client = await proxy()
    r = await client.post("/chat/completions", json=chat(stream=True), headers=AUTH)
    assert assemble(chunks_of(await r.text()))["content"] == "Hello"
    ours = [s for s in sends if b"X-Cache: MISS" in s]
    assert len(ours) == 1 and b"data: {" in ours[0]
