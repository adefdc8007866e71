"""A client that leaves mid-answer: with finish_on_disconnect the answer is still read and cached;
without it the upstream call is closed; one follower leaving never stops the others.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fake_upstream import Script
from tests.helpers import (
    AUTH,
    answer,
    gateway,
    leave_after,
    settle,
    start,
    until,
    upstream_calls,
)
from tests.roo import roo_body


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
    await leave_after(client, roo_body(), 2)
    fake = fake_server.fake
    # the whole answer would take ~8 s: closed within 3 s means closed because the client left
    await until(lambda: not fake.in_flight and not gateway(client).flights, "the upstream stream closed", timeout=3)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS"
    assert upstream_calls(fake_server) == 2


async def test_one_leaving_follower_does_not_stop_the_others(aiohttp_client: Any, make_config: Any,
                                                             fake_server: Any) -> None:
    client = await start(aiohttp_client, make_config, False, cache={"finish_on_disconnect": False})
    fake_server.script(Script(gap=0.02, chunk_chars=8))
    stay = asyncio.ensure_future(answer(client, roo_body()))
    await until(lambda: upstream_calls(fake_server) == 1, "the first request's flight open upstream")
    r = await client.post("/chat/completions", json=roo_body(), headers=AUTH)
    assert r.headers["X-Cache"] == "COALESCED"
    await r.content.readline()
    r.close()
    _, a = await stay
    assert a["content"] and a["finish"] == "stop"
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "HIT"
    assert upstream_calls(fake_server) == 1
