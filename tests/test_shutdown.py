"""`r1proxy serve` as a subprocess at stop and start: one shutdown deadline, what is logged for a request
the deadline cut, and the exit status of a config error (which the systemd units never restart)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from r1proxy.cli import EXIT_CONFIG
from tests.fake_upstream import unused_port
from tests.test_lifecycle import Proc, body, write_config


async def wait_until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_shutdown_timeout_is_one_total_deadline(tmp_path: Path, fake_server: Any) -> None:
    """An answer that never comes: the process exits at shutdown_timeout, not 2-3 times it, and the
    request that got nothing is logged as such (499, error_type=shutdown), not as 200 with 0 bytes."""
    timeout = 4.0
    port = unused_port()
    cfg = write_config(tmp_path, fake_server.base_url, port, "[stream]\nearly_headers_s = \"100s\"\n")
    cfg.write_text(cfg.read_text().replace('shutdown_timeout = "10s"', f'shutdown_timeout = "{timeout}s"'))
    p = Proc(tmp_path, cfg, port)
    await p.start()
    got: list[Any] = []

    async def client() -> None:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.post(p.url("/chat/completions"),
                                  json=body("[[fake delay_first_byte=60]] never answered", False)) as r:
                    got.append(r.status)
            except aiohttp.ClientError as e:
                got.append(e)

    task = asyncio.create_task(client())
    try:
        await wait_until(lambda: fake_server.fake.count() == 1, 10)
        t0 = time.monotonic()
        p.term()
        code, err = await p.stop()
        elapsed = time.monotonic() - t0
        await asyncio.wait_for(task, 10)
    finally:
        if p.proc and p.proc.returncode is None:
            p.proc.kill()
    assert code == 0, err
    # the deadline plus the cancel and the flush (≈ 1 s here); the old code took 2-3 × timeout (12 s for 4 s)
    assert timeout <= elapsed < timeout * 1.8, (elapsed, err)
    assert len(got) == 1 and isinstance(got[0], aiohttp.ClientError), got
    db = sqlite3.connect(tmp_path / "state" / "r1proxy.db")
    rows = db.execute("SELECT status, error_type, response_bytes FROM requests").fetchall()
    assert rows == [(499, "shutdown", 0)], rows
    access = [line for line in err.splitlines() if " request " in line]
    assert len(access) == 1 and "status=499" in access[0] and "status=200" not in access[0], access


async def test_no_deprecated_site_shutdown_timeout(tmp_path: Path, fake_server: Any) -> None:
    """aiohttp's TCPSite(shutdown_timeout=) is deprecated (and a second, separate wait): not used."""
    port = unused_port()
    p = Proc(tmp_path, write_config(tmp_path, fake_server.base_url, port), port)
    p.env = {**p.env, "PYTHONWARNINGS": "error::DeprecationWarning"}
    await p.start()
    code, err = await p.stop()
    assert code == 0 and "DeprecationWarning" not in err, err


async def run_serve(cfg: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve",
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, err.decode()


async def test_config_errors_exit_with_the_config_status(tmp_path: Path) -> None:
    """A bad file, and a bind the config makes unsafe, both exit EXIT_CONFIG with one line (<3> on the journal)."""
    env = {**os.environ}
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nttl = true\n")
    code, err = await run_serve(bad, env)
    assert code == EXIT_CONFIG and "cache.ttl" in err and len(err.strip().splitlines()) == 1, err
    open_bind = tmp_path / "open.toml"
    open_bind.write_text(f'[server]\nhost = "0.0.0.0"\nport = {unused_port()}\nstate_dir = "{tmp_path / "s"}"\n')
    code, err = await run_serve(open_bind, env)
    assert code == EXIT_CONFIG and "refusing to listen on 0.0.0.0" in err and "Traceback" not in err, err
    with open(tmp_path / "journal", "w+b") as stderr:
        st = os.fstat(stderr.fileno())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "r1proxy", "--config", str(bad), "serve", stderr=stderr,
            env={**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert await asyncio.wait_for(proc.wait(), 30) == EXIT_CONFIG
        stderr.seek(0)
        line = stderr.read().decode()
    assert line.startswith("<3>r1proxy: config error:") and "cache.ttl" in line, line


async def test_a_stream_longer_than_the_deadline_is_cut_and_logged_so(tmp_path: Path, fake_server: Any) -> None:
    """A stream still running at the deadline ends without [DONE]; its line says shutdown, nothing is cached."""
    port = unused_port()
    cfg = write_config(tmp_path, fake_server.base_url, port)
    cfg.write_text(cfg.read_text().replace('shutdown_timeout = "10s"', 'shutdown_timeout = "1s"'))
    p = Proc(tmp_path, cfg, port)
    await p.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
                p.url("/chat/completions"), json=body("[[fake gap=2]] longer than the deadline", True)) as r:
            assert r.status == 200
            assert await r.content.readline()
            p.term()
            try:
                rest = await r.content.read()
            except aiohttp.ClientError:
                rest = b""
        assert b"[DONE]" not in rest
        code, err = await p.stop()
    finally:
        if p.proc and p.proc.returncode is None:
            p.proc.kill()
    assert code == 0, err
    db = sqlite3.connect(tmp_path / "state" / "r1proxy.db")
    (status, error_type, sent), = db.execute("SELECT status, error_type, response_bytes FROM requests").fetchall()
    assert (status, error_type) == (200, "shutdown") and sent > 0
    assert db.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0] == 0


async def test_start_errors_reach_the_journal_as_errors(tmp_path: Path) -> None:
    """A start that fails on the state dir (not a config error) exits 1, its one line at priority err."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nport = {unused_port()}\nstate_dir = "{blocker / "state"}"\n')
    with open(tmp_path / "journal", "w+b") as stderr:
        st = os.fstat(stderr.fileno())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve", stderr=stderr,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert await asyncio.wait_for(proc.wait(), 30) == 1
        stderr.seek(0)
        lines = stderr.read().decode().splitlines()
    assert lines and lines[-1].startswith("<3>r1proxy: ") and str(blocker) in lines[-1], lines
    assert "Traceback" not in "\n".join(lines)
