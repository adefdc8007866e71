"""The real process: `r1proxy serve` as a subprocess — readiness, SIGTERM drain, SIGHUP reload,
a corrupt database at start, and `stats --json` / the sqlite views after a known sequence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import UPSTREAM_KEY
from tests.fake_upstream import Script, unused_port


def write_config(tmp_path: Path, base_url: str, port: int, extra: str = "") -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[server]
port = {port}
state_dir = "{tmp_path / 'state'}"
shutdown_timeout = "10s"
[upstreams.openrouter]
base_url = "{base_url}"
[retry]
max_attempts = 1
{extra}
""")
    return cfg


class Proc:
    def __init__(self, tmp_path: Path, cfg: Path, port: int) -> None:
        self.port = port
        self.sock_path = str(tmp_path / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.sock_path)
        self.notify.setblocking(False)
        env = {**os.environ, "OPENROUTER_API_KEY": UPSTREAM_KEY, "NOTIFY_SOCKET": self.sock_path,
               "PYTHONUNBUFFERED": "1"}
        env.pop("R1PROXY_STATE_DIR", None)
        self.cfg = cfg
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.messages: list[str] = []
        self.terminated = False

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "r1proxy", "--config", str(self.cfg), "serve",
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await self.wait_for("READY=1", 10)

    async def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                await asyncio.sleep(0.02)
            if any(text in m for m in self.messages):
                return
            if self.proc is not None and self.proc.returncode is not None:
                break
        err = (await self.proc.stderr.read()).decode() if self.proc and self.proc.stderr else ""
        raise AssertionError(f"no {text!r} from the proxy within {timeout}s; stderr:\n{err}")

    def term(self) -> None:
        assert self.proc is not None
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.returncode is None and not self.terminated:
            self.term()
        _, err = await asyncio.wait_for(self.proc.communicate(), 20)
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                break
        self.notify.close()
        return self.proc.returncode or 0, err.decode()


def body(text: str, stream: bool = True) -> dict[str, Any]:
    return {"model": "deepseek-r1", "stream": stream, "messages": [{"role": "user", "content": text}]}


async def test_sigterm_lets_a_stream_finish_and_exits_zero(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    p = Proc(tmp_path, write_config(tmp_path, fake_server.base_url, port), port)
    await p.start()
    fake_server.script(Script(gap=0.15))  # ~20 chunks: a few seconds of streaming
    try:
        async with aiohttp.ClientSession() as s, s.post(p.url("/chat/completions"), json=body("slow one")) as r:
            assert r.status == 200
            first = await r.content.readline()
            assert first
            t0 = time.monotonic()
            p.term()
            rest = (first + await r.content.read()).decode()
        assert rest.rstrip().endswith("data: [DONE]")
        assert "error" not in rest
        code, err = await p.stop()
        assert code == 0, err
        assert time.monotonic() - t0 < 10
        assert any("STOPPING=1" in m for m in p.messages)
        # the answer that streamed during shutdown was flushed to disk
        db = sqlite3.connect(tmp_path / "state" / "r1proxy.db")
        assert db.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0] == 1
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        if p.proc and p.proc.returncode is None:
            p.proc.kill()


async def test_stats_json_and_views_after_known_sequence(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    cfg = write_config(tmp_path, fake_server.base_url, port)
    p = Proc(tmp_path, cfg, port)
    await p.start()
    try:
        async with aiohttp.ClientSession() as s:
            for text, stream in (("a", True), ("a", True), ("a", False), ("b", False), ("[[fake status=503]]", True)):
                async with s.post(p.url("/chat/completions"), json=body(text, stream)) as r:
                    await r.read()
            async with s.get(p.url("/stats")) as r:
                live = await r.json()
            async with s.get(p.url("/metrics")) as r:
                metrics_text = await r.text()
        assert live["total_requests"] == 5
        assert live["hits"] == 2 and live["misses"] == 3
        assert "r1proxy_requests_total" in metrics_text
    finally:
        code, _ = await p.stop()
    assert code == 0
    out = await asyncio.create_subprocess_exec(sys.executable, "-m", "r1proxy", "--config", str(cfg), "stats", "--json",
                                               env=p.env, stdout=asyncio.subprocess.PIPE,
                                               stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await out.communicate()
    assert out.returncode == 0, stderr.decode()
    stats = json.loads(stdout)
    assert stats["server"] == "down"
    assert stats["today"]["requests"] == 5 and stats["today"]["hits"] == 2
    assert stats["today"]["upstream_errors"] == 1
    assert stats["disk"]["entries"] == 2
    db = sqlite3.connect(tmp_path / "state" / "r1proxy.db")
    rows = db.execute("SELECT cache, status, stream FROM v_requests ORDER BY ts").fetchall()
    assert [r[0] for r in rows] == ["MISS", "HIT", "HIT", "MISS", "MISS"]
    assert [r[1] for r in rows] == [200, 200, 200, 200, 503]
    day = db.execute("SELECT requests, hits, tokens_saved, usd_saved FROM v_daily").fetchone()
    assert day[0] == 5 and day[1] == 2 and day[2] > 0 and day[3] > 0
    entries = db.execute("SELECT model, hits, preview_answer FROM v_cache_entries ORDER BY preview_answer").fetchall()
    assert [e[0] for e in entries] == ["deepseek/deepseek-r1"] * 2
    assert entries[0][1] == 2 and entries[0][2].startswith("Answer to: a")


async def test_corrupt_database_is_moved_aside(tmp_path: Path, fake_server: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "r1proxy.db").write_bytes(b"this is not a sqlite database" * 100)
    port = unused_port()
    p = Proc(tmp_path, write_config(tmp_path, fake_server.base_url, port), port)
    await p.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(p.url("/chat/completions"), json=body("x", False)) as r:
            assert r.status == 200
    finally:
        code, err = await p.stop()
    assert code == 0
    assert "moved aside" in err
    assert any(f.name.startswith("r1proxy.db.corrupt-") for f in state.iterdir())


async def test_sighup_reloads_keys_and_a_bad_file_keeps_the_old(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    cfg = write_config(tmp_path, fake_server.base_url, port, '[[keys]]\nname = "a"\nkey = "key-a"\n')
    p = Proc(tmp_path, cfg, port)
    await p.start()
    assert p.proc is not None
    try:
        async with aiohttp.ClientSession() as s:
            async def status(key: str) -> int:
                async with s.get(p.url("/models"), headers={"Authorization": f"Bearer {key}"}) as r:
                    return r.status

            assert await status("key-a") == 200 and await status("key-b") == 401
            cfg.write_text(cfg.read_text().replace('name = "a"\nkey = "key-a"', 'name = "b"\nkey = "key-b"'))
            p.messages.clear()
            p.proc.send_signal(signal.SIGHUP)
            await p.wait_for("READY=1", 5)
            assert await status("key-b") == 200 and await status("key-a") == 401
            cfg.write_text(cfg.read_text() + "\n[cache]\nnonsense = 1\n")
            p.messages.clear()
            p.proc.send_signal(signal.SIGHUP)
            await p.wait_for("READY=1", 5)
            assert await status("key-b") == 200
    finally:
        code, err = await p.stop()
    assert code == 0
    assert "reload failed" in err and "nonsense" in err
