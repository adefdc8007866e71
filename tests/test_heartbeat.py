"""The heartbeat towards systemd: WATCHDOG=1 pings from the event loop and the STATUS= text."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from r1proxy import sdnotify
from r1proxy.heartbeat import Heartbeat
from tests.fake_upstream import unused_port
from tests.test_lifecycle import Proc, body, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_status_text_rates_draining_and_degraded() -> None:
    clock = Clock()
    figures = {"requests": 0, "hits": 0, "in_flight": 0, "errors": 0}
    tiers: list[str] = []
    hb = Heartbeat(lambda: (figures["requests"], figures["hits"]), lambda: figures["in_flight"],
                   lambda: figures["errors"], degraded=lambda: list(tiers), env={}, clock=clock)
    assert hb.text() == "serving — 0 req/min, hit rate 0 %"
    clock.now += 30
    figures.update(requests=6, hits=2)
    assert hb.text() == "serving — 6 req/min, hit rate 33 %"  # what came in the last minute
    clock.now += 90  # the minute window moved past the first samples: only what came since counts
    figures.update(requests=10, hits=4)
    assert hb.text() == "serving — 3 req/min, hit rate 40 %"
    clock.now += 5
    figures["errors"] = 2
    assert hb.text().startswith("degraded: database writes failing — serving — ")
    tiers.append("redis breaker open")
    assert hb.text().startswith("degraded: database writes failing; redis breaker open — serving — ")
    tiers.clear()
    hb.reload_error = "config.toml: cache.ttl expected a duration"
    assert "reload rejected, running the previous config (config.toml: cache.ttl" in hb.text()
    clock.now += 120  # no new write errors for a minute: no longer degraded by them
    hb.reload_error = ""
    assert hb.text().startswith("serving — ")
    hb.draining = True
    figures["in_flight"] = 3
    assert hb.text() == "draining 3 streams"
    figures["in_flight"] = 1
    assert hb.text() == "draining 1 stream"


def test_watchdog_interval_from_the_environment() -> None:
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_pings_come_from_the_event_loop_and_status_tells_what_it_does(tmp_path: Path,
                                                                          fake_server: Any) -> None:
    port = unused_port()
    cfg = write_config(tmp_path, fake_server.base_url, port)
    p = Proc(tmp_path, cfg, port)
    p.env = {**p.env, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    await p.start()
    assert p.proc is not None
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.post(p.url("/chat/completions"), json=body("hello", False)) as r:
                    assert r.status == 200
        p.messages.clear()
        await p.wait_for("hit rate 50 %", 10)
        beats = [m for m in p.messages if m.startswith("WATCHDOG=1\nSTATUS=serving — ")]
        assert beats, p.messages
        # a stopped loop sends nothing (that is what lets systemd's watchdog restart it)
        p.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        drain(p.notify)
        await asyncio.sleep(0.6)
        assert drain(p.notify) == []
        p.proc.send_signal(signal.SIGCONT)
        p.messages.clear()
        await p.wait_for("WATCHDOG=1", 5)
        # a rejected reload shows in the status text until a good one
        cfg.write_text(cfg.read_text() + "\n[cache]\nnonsense = 1\n")
        p.messages.clear()
        p.proc.send_signal(signal.SIGHUP)
        await p.wait_for("degraded: reload rejected", 5)
    finally:
        code, err = await p.stop()
    assert code == 0, err
    assert "WARNING reload failed, keeping the running config" in err
    assert p.messages[-1] == "STATUS=", p.messages[-3:]  # cleared after stop


@pytest.mark.parametrize("gap", [0.2])
async def test_status_while_draining(tmp_path: Path, fake_server: Any, gap: float) -> None:
    port = unused_port()
    p = Proc(tmp_path, write_config(tmp_path, fake_server.base_url, port), port)
    await p.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
                p.url("/chat/completions"), json=body(f"[[fake gap={gap}]] slow", True)) as r:
            assert await r.content.readline()
            p.term()
            await p.wait_for("STATUS=draining 1 stream", 5)
            assert (await r.content.read()).rstrip().endswith(b"data: [DONE]")
    finally:
        code, err = await p.stop()
    assert code == 0, err
