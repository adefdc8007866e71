"""Helpers shared by the in-process tests: the local key's header, a minimal chat body, posting it,
reading a stream or JSON answer back into one comparable shape, the fake's call count, polling.

(Fixtures live in conftest.py; this module holds plain functions a test imports by name.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestServer

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.conftest import LOCAL_KEY

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
T0 = 1_800_000_000.0


def chat(text: str = "hi", stream: bool = False, model: str = "deepseek-r1", **extra: Any) -> dict[str, Any]:
    """The smallest chat request: one user message."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}], **extra}


async def post(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None, *,
               auth: dict[str, str] = AUTH) -> Any:
    """POST /chat/completions as the local key (``headers`` add to ``auth``; ``auth={}`` sends no
    Authorization); the body is read."""
    r = await client.post("/chat/completions", json=body, headers={**auth, **(headers or {})})
    await r.read()
    return r


async def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``cond`` until it is true; fail naming ``what`` after ``timeout`` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


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


async def post_text(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Any, str]:
    """(response, body text) of POST /chat/completions as the local key."""
    r = await post(client, body, headers)
    return r, await r.text()


async def answer(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """(response, assembled answer) for a stream or a JSON request that must succeed."""
    r, text = await post_text(client, body, headers)
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


class NoCancelServer(TestServer):
    """Like production (``web.AppRunner`` default): handlers are not cancelled when a client leaves."""

    async def _make_runner(self, **kwargs: Any) -> Any:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def start(aiohttp_client: Any, make_config: Any, cancel: bool, **sections: Any) -> Any:
    """A proxy client whose handlers are cancelled when a client leaves (``cancel``) or not (production)."""
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
