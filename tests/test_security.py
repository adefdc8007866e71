"""Security edges (#11): secrets never relayed or logged, browser-origin guard, cache partitions."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from r1proxy import redact
from r1proxy.appkeys import CONFIG_KEY, GATEWAY_KEY
from r1proxy.logsetup import setup_logging
from tests.conftest import LOCAL_KEY, UPSTREAM_KEY
from tests.fake_upstream import Script
from tests.roo import roo_body

METRICS_KEY = "metrics-key-0123456789-secret"
PLAIN_LOCAL = "plain-local-key-0123456789"


@pytest.fixture
def stderr_log() -> Iterator[io.StringIO]:
    """The proxy's log as it reaches stderr (the real handler and formatter)."""
    saved = {n: (list(lg.handlers), lg.level, lg.propagate)
             for n in ("r1proxy", "aiohttp") for lg in [logging.getLogger(n)]}
    buf = io.StringIO()
    setup_logging("plain", logging.DEBUG, stream=buf)
    yield buf
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.parametrize("script,stream", [
    (Script(status=400, echo_headers=True), False),
    (Script(status=400, echo_headers=True), True),
    (Script(status=429, echo_headers=True), True),
    (Script(json_error=True, echo_headers=True), False),
    (Script(mid_stream_error=2, echo_headers=True), True),
    (Script(echo_headers=True), True),
])
async def test_an_upstream_that_echoes_its_request_headers_leaks_nothing(
        proxy: Any, fake_server: Any, stderr_log: io.StringIO, script: Script, stream: bool) -> None:
    client = await proxy(retry={"max_attempts": 2}, server={"metrics_key": METRICS_KEY},
                         keys=[{"name": "roo", "key": PLAIN_LOCAL}])
    fake_server.script(script, script)
    r = await client.post("/chat/completions", json=roo_body(stream=stream),
                          headers={"Authorization": f"Bearer {PLAIN_LOCAL}"})
    body = await r.text()
    assert UPSTREAM_KEY in fake_server.fake.echo  # the fake really quoted the key
    relayed = body + json.dumps(dict(r.headers))
    assert UPSTREAM_KEY not in relayed and PLAIN_LOCAL not in relayed
    assert redact.MASK in relayed  # the rest of the upstream's words are kept
    db = client.app[CONFIG_KEY].db_path
    client.app[GATEWAY_KEY].flush_accounting()
    await client.close()
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert UPSTREAM_KEY not in dump
    log = stderr_log.getvalue()
    assert log and UPSTREAM_KEY not in log and PLAIN_LOCAL not in log


def test_every_log_line_is_redacted_tracebacks_included(stderr_log: io.StringIO, make_config: Any) -> None:
    config = make_config(server={"metrics_key": METRICS_KEY}, keys=[{"name": "roo", "key": PLAIN_LOCAL}])
    redact.register(config.secrets())
    log = logging.getLogger("r1proxy.test")
    log.warning("upstream said %s and %s", UPSTREAM_KEY, METRICS_KEY)
    try:
        raise RuntimeError(f"boom {PLAIN_LOCAL}")
    except RuntimeError:
        log.exception("failed")
    out = stderr_log.getvalue()
    assert "upstream said" in out and "RuntimeError: boom" in out
    for secret in (UPSTREAM_KEY, METRICS_KEY, PLAIN_LOCAL):
        assert secret not in out


def test_check_config_never_prints_a_plain_local_key(make_config: Any) -> None:
    config = make_config(keys=[{"name": "roo", "key": PLAIN_LOCAL}])
    assert PLAIN_LOCAL not in json.dumps(config.redacted(), default=str)
    assert PLAIN_LOCAL not in repr(config)
    assert LOCAL_KEY != PLAIN_LOCAL


# -- the browser guard ---------------------------------------------------------------------

CHAT = {"model": "deepseek-r1", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_foreign_page_cannot_spend_credit(proxy: Any, fake_server: Any) -> None:
    client = await proxy()  # the README quick start: no [[keys]]
    body = json.dumps(CHAT).encode()
    # a "simple" cross-origin POST a browser sends without preflight
    r = await client.post("/chat/completions", data=body,
                          headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert r.status == 403 and (await r.json())["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.post("/chat/completions", data=body, headers={"Content-Type": "text/plain"})
    assert r.status == 415 and "application/json" in (await r.json())["error"]["message"]
    # DNS rebinding: the page's own name, resolved to 127.0.0.1
    for path in ("/chat/completions", "/stats", "/health"):
        r = await client.request("POST" if path.startswith("/chat") else "GET", path, json=CHAT,
                                 headers={"Host": "evil.example:4000"})
        assert r.status == 403 and (await r.json())["error"]["code"] == "host_not_allowed"
    assert fake_server.calls == []


async def test_roo_code_without_origin_is_unaffected(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    for host in (None, "localhost:4000", "127.0.0.1:4000", "[::1]:4000", "LOCALHOST"):
        headers = {"Host": host} if host else {}
        r = await client.post("/chat/completions", json=CHAT, headers=headers)
        assert r.status == 200, host
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_allowed_hosts_and_cors_origins(proxy: Any, fake_server: Any) -> None:
    page = "http://localhost:5173"
    client = await proxy(server={"allowed_hosts": ["r1proxy.lan"], "cors_origins": [page]})
    r = await client.post("/chat/completions", json=CHAT, headers={"Host": "r1proxy.lan:4000"})
    assert r.status == 200
    r = await client.options("/chat/completions", headers={
        "Origin": page, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == page
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = await client.options("/chat/completions", headers={"Origin": "http://other.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert r.status == 403
    r = await client.post("/chat/completions", json={**CHAT, "stream": True}, headers={"Origin": page})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == page  # streamed replies too
    assert "X-Cache" in r.headers["Access-Control-Expose-Headers"] and "Origin" in r.headers["Vary"]
    await r.read()
    # the proxy's own pages: same origin
    host = f"127.0.0.1:{client.port}"
    r = await client.get("/health", headers={"Origin": f"http://{host}", "Host": host})
    assert r.status == 200


# -- cache partitions ----------------------------------------------------------------------

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
TWO_KEYS = [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]


async def ask(client: Any, key: str, cache_control: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if cache_control:
        headers["Cache-Control"] = cache_control
    r = await client.post("/chat/completions", json=CHAT, headers=headers)
    await r.read()
    return r.status, r.headers.get("X-Cache", "")


async def test_share_key_keeps_each_key_in_its_own_cache(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=TWO_KEYS, cache={"share": "key"})
    assert await ask(client, KEY_B, "only-if-cached") == (504, "")
    assert await ask(client, KEY_A) == (200, "MISS")
    assert await ask(client, KEY_A) == (200, "HIT")
    # B cannot probe whether A asked it, and does not get A's answer
    assert await ask(client, KEY_B, "only-if-cached") == (504, "")
    assert await ask(client, KEY_B) == (200, "MISS")
    assert await ask(client, KEY_B) == (200, "HIT")
    assert fake_server.fake.count() == 2


async def test_share_all_is_one_cache(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=TWO_KEYS)
    assert client.app[CONFIG_KEY].cache.share == "all"
    assert await ask(client, KEY_A) == (200, "MISS")
    assert await ask(client, KEY_B, "only-if-cached") == (200, "HIT")
    assert fake_server.fake.count() == 1


def test_share_must_be_all_or_key(make_config: Any) -> None:
    from r1proxy.config import ConfigError

    with pytest.raises(ConfigError, match=r"cache\.share"):
        make_config(cache={"share": "everyone"})


async def test_a_same_origin_echo_is_bounded(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    host = "localhost:" + "9" * 2000  # passes the Host check (localhost), but must not be echoed back
    r = await client.get("/health", headers={"Host": host, "Origin": f"http://{host}"})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
