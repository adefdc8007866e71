"""``server.workers = 2`` as a real process tree: both workers serve the port (SO_REUSEPORT), share
the SQLite tier and a key's limits (its rpm is the key's, not each worker's), and SIGHUP, SIGTERM
and sd_notify work through the supervisor; a killed worker is started again."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from r1proxy.proclimits import ProcessKeyLimiter, ProcessLimits
from tests.fake_upstream import unused_port
from tests.test_lifecycle import Proc, body, write_config

KEY = "local-workers-key"


def keys(rpm: int) -> str:
    return f'[[keys]]\nname = "dev"\nkey = "{KEY}"\nrpm = {rpm}\n'


def config(tmp_path: Path, base_url: str, port: int, rpm: int) -> Path:
    cfg = write_config(tmp_path, base_url, port, keys(rpm))
    text = cfg.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    cfg.write_text(text)
    return cfg


async def post(url: str, text: str, stream: bool = False) -> tuple[int, str, str]:
    """One request on a new connection (so the kernel may pick either worker)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s, \
            s.post(url, json=body(text, stream)) as r:
        await r.read()
        return r.status, r.headers.get("X-Request-Id", ""), r.headers.get("X-Cache", "")


async def test_two_workers_share_the_port_the_cache_and_a_keys_rpm(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    cfg = config(tmp_path, fake_server.base_url, port, rpm=6)
    p = Proc(tmp_path, cfg, port)
    await p.start()
    try:
        url = p.url("/chat/completions")
        results = [await post(url, f"question {i}") for i in range(12)]  # misses: each takes an rpm token
        statuses = [s for s, _, _ in results]
        assert statuses.count(200) == 6 and statuses.count(429) == 6  # 6 for the key, not 6 per worker
        assert fake_server.fake.count() == 6
        answered = [i for i, (s, _, _) in enumerate(results) if s == 200]
        again = [await post(url, f"question {i}") for i in answered for _ in range(2)]  # hits cost no token
        assert [c for _, _, c in again] == ["HIT"] * len(again)  # whichever worker stored it: one SQLite
        assert fake_server.fake.count() == 6
        prefixes = {rid[:6] for _, rid, _ in results + again if rid}

        # SIGHUP: validated by the supervisor, applied by every worker
        cfg.write_text(cfg.read_text().replace("rpm = 6", "rpm = 600"))
        p.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await p.wait_for("RELOADING=1", 10)
        ok = 0
        for _ in range(40):
            status, rid, _ = await post(url, f"after the reload {ok}")
            if rid:
                prefixes.add(rid[:6])
            ok += status == 200
            if ok >= 6:
                break
            await asyncio.sleep(0.05)
        assert ok >= 6
        assert len(prefixes) == 2, prefixes  # both workers answered
    finally:
        code, err = await p.stop()
    assert code == 0, err
    assert any("READY=1" in m for m in p.messages) and any("STOPPING=1" in m for m in p.messages)
    assert not Path(tmp_path / "state" / "r1proxy.db.open").exists()  # a clean stop


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("no /proc/PID/task/PID/children on this kernel")
    return [int(x) for x in path.read_text().split()]


async def _replace_a_worker(pid: int) -> list[int]:
    """SIGKILL the supervisor ``pid``'s first worker; the worker(s) forked in its place, as soon as
    they exist (still starting)."""
    before = _children(pid)
    os.kill(before[0], signal.SIGKILL)
    for _ in range(10000):  # ≥ 10 s
        now = _children(pid)
        if before[0] not in now and len(now) >= 2:
            return [w for w in now if w not in before]
        await asyncio.sleep(0.001)
    raise AssertionError(f"worker {before[0]} was not replaced: {now}")


async def test_a_killed_worker_is_started_again(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    p = Proc(tmp_path, config(tmp_path, fake_server.base_url, port, rpm=0), port)
    await p.start()
    try:
        assert p.proc is not None
        assert len(_children(p.proc.pid)) == 2
        await _replace_a_worker(p.proc.pid)
        for i in range(6):  # new connections: some reach the new worker
            status, _, _ = await post(p.url("/chat/completions"), f"after the restart {i}")
            assert status == 200
    finally:
        code, err = await p.stop()
    assert code == 0, err


async def test_a_stop_while_a_worker_is_still_starting_is_a_clean_stop(tmp_path: Path, fake_server: Any) -> None:
    """SIGTERM reaching a worker before its event loop took the signal over (a restarted worker
    still setting up) ends that worker cleanly: the supervisor exits 0, not 1. systemd's stop
    (KillMode=control-group) signals every process of the service at once, workers included."""
    port = unused_port()
    p = Proc(tmp_path, config(tmp_path, fake_server.base_url, port, rpm=0), port)
    await p.start()
    try:
        assert p.proc is not None
        new = await _replace_a_worker(p.proc.pid)
        p.term()
        for _ in range(3000):  # SIGTERM the new worker all through its start, as systemd's stop does once
            try:
                for w in new:
                    os.kill(w, signal.SIGTERM)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.001)
    finally:
        code, err = await p.stop()
    assert code == 0, err


async def test_a_reload_while_a_worker_is_still_starting_does_not_kill_it(tmp_path: Path,
                                                                         fake_server: Any) -> None:
    """SIGHUP's default action ends a process: a worker that gets one before its event loop took
    signals over keeps it for later instead (and reloads once it serves)."""
    port = unused_port()
    p = Proc(tmp_path, config(tmp_path, fake_server.base_url, port, rpm=0), port)
    await p.start()
    try:
        assert p.proc is not None
        new = await _replace_a_worker(p.proc.pid)
        for _ in range(300):  # SIGHUP the new worker all through its start
            for w in new:
                os.kill(w, signal.SIGHUP)
            await asyncio.sleep(0.001)
        assert all(w in _children(p.proc.pid) for w in new)
    finally:
        code, err = await p.stop()
    assert code == 0, err
    assert err.count("starting it again") == 1, err  # only the SIGKILLed worker was restarted


async def test_a_worker_started_after_a_reload_serves_the_reloaded_keys(tmp_path: Path, fake_server: Any) -> None:
    port = unused_port()
    cfg = config(tmp_path, fake_server.base_url, port, rpm=0)
    p = Proc(tmp_path, cfg, port)
    await p.start()
    try:
        assert p.proc is not None
        cfg.write_text(cfg.read_text() + '[[keys]]\nname = "newcomer"\nkey = "local-newcomer-key"\n')
        p.proc.send_signal(signal.SIGHUP)
        await p.wait_for("RELOADING=1", 10)
        await asyncio.sleep(0.5)  # both workers have reloaded
        for _ in range(2):  # replace both workers: neither has seen the SIGHUP
            await _replace_a_worker(p.proc.pid)
        statuses: list[int] = []
        for i in range(200):  # new connections: the kernel spreads them over the listening workers
            try:
                async with aiohttp.ClientSession(headers={"Authorization": "Bearer local-newcomer-key"}) as s, \
                        s.post(p.url("/chat/completions"), json=body(f"newcomer {i}", False)) as r:
                    statuses.append(r.status)
            except aiohttp.ClientConnectionError:  # neither new worker listens yet
                pass
            if len(statuses) >= 20:
                break
            await asyncio.sleep(0.02)
        assert statuses[-10:] == [200] * 10, statuses
    finally:
        code, err = await p.stop()
    assert code == 0, err


def test_shared_limits_hold_across_limiter_instances() -> None:
    """Two limiters (as two workers have) on one ProcessLimits: one rpm bucket, one parallel count."""

    class Key:
        name, rpm, tpm, max_parallel, daily_tokens, daily_usd = "k", 3, 0, 2, 0, 0.0

    t = [1000.0]
    shared = ProcessLimits()
    a = ProcessKeyLimiter([Key()], shared, 0, now=lambda: t[0])
    b = ProcessKeyLimiter([Key()], shared, 1, now=lambda: t[0])
    assert a.acquire("k").allowed and b.acquire("k").allowed
    assert b.acquire("k").reason == "parallel" and a.in_flight("k") == 2
    a.release("k")
    b.release("k")
    assert a.acquire("k").allowed  # the third token
    a.release("k")
    d = b.acquire("k")
    assert not d.allowed and d.reason == "rpm" and d.retry_after == pytest.approx(20.0)
    t[0] += 20.0
    assert b.acquire("k").allowed
    shared.clear_worker(1)  # the supervisor forgets a dead worker's slots
    assert a.in_flight("k") == 0
    a.add_day_usage("k", "2026-11-26", 1, 100, 0.5)
    b.add_day_usage("k", "2026-11-26", 1, 50, 0.25)
    assert a.day_usage("k", "2026-11-26") == (2, 150, 0.75)
    assert b.day_usage("k", "2026-11-27") is None


def test_a_slot_found_once_is_the_slot_every_process_finds() -> None:
    """Each process memoises where a key's slot is (a claimed slot is never given up): another
    process (here a second view of the same cells, with its own memo) finds the same one."""
    shared = ProcessLimits()
    other = ProcessLimits()
    other.cells, other.lock = shared.cells, shared.lock
    names = [f"key{i}" for i in range(40)]
    mine = {n: shared.slot(n) for n in names[:20]}
    theirs = {n: other.slot(n) for n in names}  # half already claimed by `shared`, half new
    assert {n: shared.slot(n) for n in names} == theirs and all(theirs[n] == mine[n] for n in mine)
    assert len(set(theirs.values())) == len(names)
    shared.cells[shared.slot("key3") + 4] = 7.0  # _DREQ: what one process writes, the other reads
    assert other.cells[other.slot("key3") + 4] == 7.0
