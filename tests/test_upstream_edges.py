"""Upstream edges (#11): think blocks out of history, retry storms, errors that keep their meaning,
limits that name themselves, oversized or broken upstream replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import LOCAL_KEY
from tests.roo import roo_body

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
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
