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
