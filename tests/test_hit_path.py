"""The request path around a cache hit (#17): the one middleware, the memoised Host verdicts, the
hit reply and the batched hit counts. Fast paths must decide exactly what the slow ones decided:
a hit is no way around the browser guard, and a memoised verdict is one per Host value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry
from r1proxy.cache.sqlite import SqliteTier, fold_hits
from r1proxy.config import ServerConfig
from r1proxy.db import Database
from r1proxy.guard import HOST_MEMO, Guard, host_allowed
from r1proxy.usage import Usage

CHAT = {"model": "deepseek-r1", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_memory_hit_is_no_way_around_the_guard(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    body = json.dumps(CHAT).encode()
    for _ in range(2):
        r = await client.post("/chat/completions", data=body, headers={"Content-Type": "application/json"})
        assert r.status == 200
    assert r.headers["X-Cache"] == "HIT" and r.headers["X-Cache-Tier"] == "memory"
    assert r.headers["Content-Type"] == "application/json"
    assert "Access-Control-Allow-Origin" not in r.headers
    refused = [
        ({"Content-Type": "application/json", "Host": "evil.example:4000"}, 403, "host_not_allowed"),
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Host": "127.0.0.1.evil.example"}, 403, "host_not_allowed"),
    ]
    for _ in range(2):  # the second time each Host verdict comes from the memo
        for headers, status, code in refused:
            r = await client.post("/chat/completions", data=body, headers=headers)
            assert r.status == status, headers
            assert (await r.json())["error"]["code"] == code
            assert "Access-Control-Allow-Origin" not in r.headers and "X-Cache" not in r.headers
        r = await client.post("/chat/completions", data=body, headers={"Content-Type": "application/json"})
        assert r.status == 200 and r.headers["X-Cache"] == "HIT"
    assert len(fake_server.calls) == 1


async def test_unknown_paths_and_methods_answer_as_before(proxy: Any, fake_server: Any) -> None:
    """No middleware: a catch-all route answers what aiohttp's own 404/405 did, through the guard."""
    client = await proxy()
    r = await client.get("/nowhere")
    assert r.status == 404 and (await r.json())["error"]["message"] == "Unknown path GET /nowhere"
    r = await client.post("/v1/nowhere/deeper", json=CHAT)
    assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"
    r = await client.get("/chat/completions")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert (await r.json())["error"]["message"] == "Method GET is not allowed on /chat/completions"
    r = await client.post("/health", json=CHAT)
    assert r.status == 405 and r.headers["Allow"] == "GET"
    r = await client.request("HEAD", "/health")
    assert r.status == 405
    r = await client.delete("/ui/requests/12")  # a dynamic route's path
    assert r.status == 405 and r.headers["Allow"] == "GET"
    r = await client.post("/", json=CHAT)
    assert r.status == 405 and r.headers["Allow"] == "GET"
    r = await client.options("/chat/completions")  # no Origin: not a preflight
    assert r.status == 405 and (await r.json())["error"]["type"] == "invalid_request_error"
    for path in ("/nowhere", "/chat/completions"):  # the guard runs first, for unknown paths too
        r = await client.get(path, headers={"Host": "evil.example"})
        assert r.status == 403 and (await r.json())["error"]["code"] == "host_not_allowed"


def test_every_route_is_behind_the_guard(make_config: Any) -> None:
    from aiohttp import web

    from r1proxy import edge
    from r1proxy.app import create_app

    app = create_app(make_config())
    routes = list(app.router.routes())
    assert len(routes) > 10 and all(getattr(r.handler, "__r1proxy_guarded__", False) for r in routes)
    assert not app.middlewares  # see edge.py: one wrapper per handler instead

    bare = web.Application()
    edge.setup(bare, Guard(ServerConfig()))

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response()
    bare.router.add_get("/health", health)  # not through edge.routes(app)
    with pytest.raises(RuntimeError, match=r"without the browser guard: .*GET /health"):
        edge.finish(bare)


def test_host_verdicts_are_memoised_per_value_and_bounded() -> None:
    guard = Guard(ServerConfig(allowed_hosts=("r1proxy.lan",)))
    hosts = ["127.0.0.1:4000", "localhost", "evil.example", "r1proxy.lan:80", "R1PROXY.LAN", "[::1]:9",
             "a.localhost", "localhost.evil.example", "10.0.0.1", "r1proxy.lan.evil.example"]
    for _ in range(3):
        for host in hosts:
            assert guard.host_ok(host) == host_allowed(host, ("r1proxy.lan",)), host
    assert guard.host_ok(None)  # HTTP/1.0 without Host, as before
    for i in range(HOST_MEMO * 3):  # many distinct values: the memo stays bounded, verdicts stay right
        assert not guard.host_ok(f"evil{i}.example")
        assert guard.host_ok(f"127.0.0.{i % 250}")
    assert len(guard._hosts) <= HOST_MEMO
    assert not guard.host_ok("evil.example") and guard.host_ok("localhost")


def test_a_batch_of_hits_is_one_row_update_per_key() -> None:
    hits = [("v1:a", 1.0), ("v1:b", 2.0), ("v1:a", 3.0), ("v1:a", 2.5)]
    assert fold_hits(hits) == {"v1:a": (3, 2.5), "v1:b": (1, 2.0)}  # the count, and the last time in order
    assert fold_hits([("v1:b", 4.0)], fold_hits(hits)) == {"v1:a": (3, 2.5), "v1:b": (2, 4.0)}


async def test_hit_counts_are_one_row_update_per_key_a_second(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "c.db")
    try:
        tier = SqliteTier(db)
        await tier.put(CacheEntry(key="v1:a", completion={"choices": []}, created_at=1.0, expires_at=9e9))
        await db.flush()
        sent: list[list[Any]] = []
        submit_many = db.submit_many

        def spy(sql: str, rows: Any) -> int:
            sent.append(list(rows))
            return submit_many(sql, sent[-1])
        db.submit_many = spy  # type: ignore[method-assign]
        for i in range(4):  # four accounting batches of 8 hits
            await tier.touch_many([("v1:a", float(i * 8 + j)) for j in range(8)])
        await db.flush()
        assert sent == []  # counted in memory, not yet written
        await tier.settle()
        assert [len(rows) for rows in sent] == [1]
        got = await tier.get("v1:a")
        assert got is not None and (got.hits, got.last_hit_at) == (32, 31.0)
        await tier.touch_many([("v1:a", 40.0)])
        await tier.put(CacheEntry(key="v1:a", completion={"choices": []}, created_at=41.0, expires_at=9e9))
        await tier.settle()  # a replaced row starts again from the new entry's count
        got = await tier.get("v1:a")
        assert got is not None and got.hits == 0
        await tier.touch_many([("v1:a", 50.0)])
        await tier.close()  # counted hits are written before the tier lets go
        await db.flush()
        row = await db.fetchone("SELECT hits, last_hit_at FROM cache_entries WHERE key = 'v1:a'")
        assert row == (1, 50.0)
    finally:
        await db.close()


def test_an_entry_parses_its_usage_once() -> None:
    doc = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "cost": 0.25,
                                    "completion_tokens_details": {"reasoning_tokens": 2}}}
    entry = CacheEntry(key="v1:u", completion=doc, created_at=1.0, expires_at=2.0)
    assert entry.usage() == Usage.of_completion(doc)
    assert entry.usage() is entry.usage()
    assert CacheEntry(key="v1:n", completion={}, created_at=1.0, expires_at=2.0).usage() == Usage()


PAGE = "http://localhost:5173"


async def test_cors_headers_reach_every_reply_to_an_allowed_origin(proxy: Any, fake_server: Any) -> None:
    client = await proxy(server={"cors_origins": [PAGE]})
    for _ in range(2):  # a miss, then a memory hit
        r = await client.post("/chat/completions", json=CHAT, headers={"Origin": PAGE})
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == PAGE
        assert r.headers["Vary"] == "Origin" and "X-Cache" in r.headers["Access-Control-Expose-Headers"]
    assert r.headers["X-Cache"] == "HIT"
    body = json.dumps(CHAT).encode()
    r = await client.post("/chat/completions", data=body, headers={"Origin": PAGE, "Content-Type": "text/plain"})
    assert r.status == 415 and r.headers["Access-Control-Allow-Origin"] == PAGE  # the page may read why
    r = await client.get("/nowhere", headers={"Origin": PAGE})
    assert r.status == 404 and r.headers["Access-Control-Allow-Origin"] == PAGE
    r = await client.post("/chat/completions", json=CHAT)
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers and "Vary" not in r.headers
    r = await client.post("/chat/completions", json=CHAT, headers={"Origin": "http://other.example"})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_a_raised_redirect_keeps_its_cors_headers(aiohttp_client: Any) -> None:
    from aiohttp import web

    from r1proxy import edge

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    edge.setup(app, Guard(ServerConfig(cors_origins=(PAGE,))))
    edge.routes(app).add_get("/moved", moved)
    edge.finish(app)
    client = await aiohttp_client(app)
    r = await client.get("/moved", headers={"Origin": PAGE}, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/elsewhere"
    assert r.headers["Access-Control-Allow-Origin"] == PAGE
    r = await client.get("/moved", allow_redirects=False)
    assert r.status == 302 and "Access-Control-Allow-Origin" not in r.headers
