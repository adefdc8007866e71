"""Who may read /metrics and /stats: loopback clients only, unless server.metrics_key is set; then
every client (loopback too) must send it as a bearer token. In-process, through the real app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from r1proxy.app import create_app

METRICS_KEY = "metrics-key-for-the-access-test"
PEER = "X-Test-Peer"  # read only by the test middleware below, never by r1proxy


@web.middleware
async def peer_from_header(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """The test client always connects from 127.0.0.1; this lets a request claim another peer address
    (what ``request.remote`` would be for a client on the LAN, or on a unix socket: "")."""
    if PEER in request.headers:
        request = request.clone(remote=request.headers[PEER])
    return await handler(request)


@pytest.fixture
def client_for(aiohttp_client: Callable[..., Awaitable[Any]], make_config: Callable[..., Any]
               ) -> Callable[..., Awaitable[Any]]:
    async def start(**server: Any) -> Any:
        app = create_app(make_config(server=server))
        app.middlewares.insert(0, peer_from_header)
        return await aiohttp_client(app)

    return start


async def status(client: Any, path: str, peer: str | None = None, bearer: str | None = None) -> tuple[int, Any]:
    headers = {}
    if peer is not None:
        headers[PEER] = peer
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    r = await client.get(path, headers=headers)
    body = await (r.json() if r.content_type == "application/json" else r.text())
    return r.status, body


@pytest.mark.parametrize("path", ["/metrics", "/stats"])
@pytest.mark.parametrize(("peer", "expected"), [
    (None, 200),  # the real connection: 127.0.0.1
    ("127.0.0.5", 200),
    ("::1", 200),
    ("192.168.1.20", 403),
    ("203.0.113.7", 403),
    ("fe80::1", 403),
    ("", 403),  # no peer address at all
    ("not-an-address", 403),
])
async def test_without_a_metrics_key_only_loopback_reads(client_for: Any, path: str, peer: str | None,
                                                         expected: int) -> None:
    client = await client_for()
    code, body = await status(client, path, peer)
    assert code == expected, body
    if expected == 403:
        assert body["error"]["message"].startswith("Metrics are served to loopback clients only")
        assert body["error"]["type"]
    elif path == "/stats":
        assert isinstance(body, dict) and "upstreams" in body
    else:
        assert "# TYPE" in body


@pytest.mark.parametrize("path", ["/metrics", "/stats"])
@pytest.mark.parametrize(("peer", "bearer", "expected"), [
    (None, METRICS_KEY, 200),
    ("203.0.113.7", METRICS_KEY, 200),  # with the key, the address no longer matters
    (None, None, 401),  # ...and loopback alone is not enough
    ("203.0.113.7", None, 401),
    (None, "wrong-key", 401),
    (None, METRICS_KEY[:-1], 401),
    (None, METRICS_KEY + "x", 401),
    (None, "", 401),
])
async def test_with_a_metrics_key_every_client_needs_it(client_for: Any, path: str, peer: str | None,
                                                        bearer: str | None, expected: int) -> None:
    client = await client_for(metrics_key=METRICS_KEY)
    code, body = await status(client, path, peer, bearer)
    assert code == expected, body
    if expected == 401:
        assert "metrics_key" in body["error"]["message"] and METRICS_KEY not in str(body)


async def test_the_rest_of_the_api_is_not_behind_the_metrics_rule(client_for: Any) -> None:
    client = await client_for(metrics_key=METRICS_KEY)
    code, body = await status(client, "/health", peer="203.0.113.7")
    assert code == 200 and body["status"] in ("ok", "degraded")
