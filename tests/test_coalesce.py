"""Coalescing across processes through a real redis-server: two real `r1proxy serve` processes, ten
identical streaming requests each, one upstream call, and every client gets the whole answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fake_upstream import FakeOpenRouter, Script, unused_port
from tests.helpers import assemble, chunks_of, data_lines
from tests.test_lifecycle import Proc, body, write_config


class Gate:
    """Holds every upstream call until opened, counting arrivals: the test decides when the leader
    may answer, so "concurrent" never depends on how fast the machine is."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.path.endswith("/chat/completions"):
            self.arrived += 1
            await self.open.wait()
        return await handler(request)


async def _poll(cond: Callable[[], Awaitable[bool]], what: str, rounds: int = 1500) -> None:
    for _ in range(rounds):  # bounded: up to ~30 s on a loaded machine
        if await cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_two_processes_make_one_upstream_call(tmp_path: Path, aiohttp_server: Any, redis_server: Any,
                                                    redis_prefix: str) -> None:
    fake = FakeOpenRouter()
    gate = Gate()
    app = fake.make_app()
    app.middlewares.append(gate.middleware)
    server = await aiohttp_server(app)
    fake.script(*[Script(gap=0.005, tool_call=False)] * 4)
    base = str(server.make_url("/api/v1"))
    extra = (f'[cache.redis]\nurl = "{redis_server.url}"\nprefix = "{redis_prefix}"\ntimeout = "2s"\n'
             'lock_ttl = "30s"\n')
    procs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        port = unused_port()
        procs.append(Proc(d, write_config(d, base, port, extra), port))
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with aiohttp.ClientSession() as s:

            async def ask(p: Proc) -> tuple[dict[str, str], str]:
                async with s.post(p.url("/chat/completions"), json=body("Explain the coalescing")) as r:
                    assert r.status == 200
                    return dict(r.headers), await r.text()

            async def in_flight(p: Proc) -> int:
                async with s.get(p.url("/stats")) as r:
                    return int((await r.json())["in_flight"])

            clients = [asyncio.ensure_future(ask(p)) for p in procs for _ in range(10)]

            async def all_waiting() -> bool:
                return gate.arrived >= 1 and all([await in_flight(p) == 10 for p in procs])

            await _poll(all_waiting, "20 clients in flight")
            gate.open.set()
            results = await asyncio.gather(*clients)
        assert fake.count("/chat/completions") == 1 and gate.arrived == 1
        answers = [assemble(chunks_of(text)) for _, text in results]
        assert answers[0]["content"] and answers[0]["reasoning"]
        for (_headers, text), a in zip(results, answers, strict=True):
            assert data_lines(text)[-1] == "data: [DONE]"
            assert (a["content"], a["reasoning"], a["finish"]) == (answers[0]["content"], answers[0]["reasoning"],
                                                                   "stop")
        labels = sorted(h["X-Cache"] for h, _ in results)
        assert labels == ["COALESCED"] * 19 + ["MISS"]
    finally:
        for p in procs:
            if p.proc is not None and p.proc.returncode is None:
                await p.stop()


@pytest.fixture
def coalescing(redis_server: Any, redis_prefix: str) -> Any:
    from r1proxy.cache.breaker import Breaker
    from r1proxy.cache.redistier import connect
    from r1proxy.coalesce import Coalescer
    from r1proxy.config import RedisConfig

    made: list[Coalescer] = []

    def make(**kw: Any) -> Coalescer:
        cfg = RedisConfig(url=redis_server.url, prefix=redis_prefix, timeout=2.0, **kw)
        c = Coalescer(connect(cfg), connect(cfg, socket_timeout=5.0), cfg, Breaker("redis", 5, 30), block_s=0.2)
        made.append(c)
        return c

    yield make


async def test_a_dead_leader_lets_a_follower_go_upstream(coalescing: Any) -> None:
    from r1proxy.flight import Flight

    leader, follower = coalescing(lock_ttl=1.0), coalescing(lock_ttl=1.0)
    try:
        # a leader that claims the key and then dies (never publishes, never releases)
        assert await leader._claim(keys=[leader.lock_key("r1:k"), leader.stream_key("r1:k"), leader.want_key("r1:k")],
                                   args=["dead", 1000])
        f = Flight("r1:k", True)
        assert await follower.follow(f) is False  # lock expired, nothing sent: we lead now
        assert not f.remote and follower.counters.leader_lost == 1 and follower.counters.led == 1
        ttl = await follower.client.pttl(follower.lock_key("r1:k"))
        assert 0 < ttl <= 1000
    finally:
        for c in (leader, follower):
            for t in c._tasks:
                t.cancel()
            await c.close()
            await c.client.aclose()
            await c.blocking.aclose()


async def test_frames_replay_from_the_start_and_an_error_is_shared(coalescing: Any) -> None:
    from r1proxy.errors import ProxyError
    from r1proxy.flight import Flight

    leader, follower = coalescing(), coalescing()
    try:
        lf = Flight("r1:e", True)
        assert await leader.follow(lf) is False  # leads
        lf.headers, lf.started = {"X-Generation-Id": "gen-1"}, True
        lf.items += [{"choices": [{"delta": {"content": "Hel"}}]}, b": OPENROUTER PROCESSING\n\n"]
        lf.data_count = 1
        lf.changed()
        ff = Flight("r1:e", True)
        reading = asyncio.ensure_future(follower.follow(ff))
        await _poll(lambda: _true(len(ff.items) == 2), "the frames already sent")
        lf.fail(ProxyError(502, "upstream broke", type="upstream_error"))
        lf.finished = True
        lf.changed()
        assert await reading is True
        assert ff.remote and ff.items[:2] == lf.items[:2] and ff.headers == lf.headers
        assert ff.error is not None and ff.error.status == 502 and ff.error_in_stream
        assert json.dumps(ff.items[-1]) == json.dumps(lf.items[-1])  # the in-stream error event
        assert ff.data_count == 1
    finally:
        for c in (leader, follower):
            await c.close()
            await c.client.aclose()
            await c.blocking.aclose()


async def _true(v: bool) -> bool:
    return v


async def test_no_cache_never_follows_another_process(aiohttp_server: Any, aiohttp_client: Any, make_config: Any,
                                                      tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    from r1proxy.app import create_app
    from tests.conftest import LOCAL_KEY
    from tests.roo import roo_body

    fake = FakeOpenRouter()
    gate = Gate()
    app = fake.make_app()
    app.middlewares.append(gate.middleware)
    server = await aiohttp_server(app)
    redis = {"url": redis_server.url, "prefix": redis_prefix, "timeout": "2s"}
    clients = []
    for name in ("a", "b"):
        cfg = make_config(server={"state_dir": str(tmp_path / name)}, cache={"redis": redis},
                          upstreams={"openrouter": {"base_url": str(server.make_url("/api/v1"))}})
        clients.append(await aiohttp_client(create_app(cfg)))
    a, b = clients
    auth = {"Authorization": f"Bearer {LOCAL_KEY}"}
    first = asyncio.ensure_future(a.post("/chat/completions", json=roo_body(stream=False), headers=auth))
    await _poll(lambda: _true(gate.arrived == 1), "a's upstream call")
    fresh = asyncio.ensure_future(b.post("/chat/completions", json=roo_body(stream=False),
                                         headers={**auth, "Cache-Control": "no-cache"}))
    await _poll(lambda: _true(gate.arrived == 2), "b's own upstream call (no-cache must not follow a's)")
    gate.open.set()
    ra, rb = await first, await fresh
    assert (ra.status, rb.status) == (200, 200)
    assert (ra.headers["X-Cache"], rb.headers["X-Cache"]) == ("MISS", "BYPASS")


async def test_a_leader_nobody_follows_publishes_nothing(coalescing: Any) -> None:
    from r1proxy.flight import Flight

    leader = coalescing()
    try:
        f = Flight("r1:alone", True)
        assert await leader.follow(f) is False
        f.started, f.data_count = True, 1
        f.items.append({"choices": [{"delta": {"content": "hi"}}]})
        f.changed()
        f.result, f.finished = {"choices": []}, True
        f.changed()
        await _poll(lambda: _true(not leader._tasks), "the leader to let go")
        lock, stream = leader.lock_key("r1:alone"), leader.stream_key("r1:alone")
        assert await leader.client.exists(lock, stream) == 0  # released, and no stream was ever written
    finally:
        await leader.close()
        await leader.client.aclose()
        await leader.blocking.aclose()
