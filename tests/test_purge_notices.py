"""A purge from the CLI or one worker's dashboard reaches every running process's memory tier without
Redis: purge notices in SQLite, polled by each process (cache/notices.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.cache.purge import PurgeFilter
from tests.helpers import answer, settle, upstream_calls
from tests.roo import roo_body
from tests.test_cli import run


async def _hit_from_memory(client: Any) -> str:
    r, _ = await answer(client, roo_body())
    key = r.headers["X-Cache-Key"]
    await settle(client)
    await client.app[STORE_KEY].db.flush()
    r, _ = await answer(client, roo_body())
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "memory")
    return key


async def _polled(client: Any) -> None:
    watcher = client.app[STORE_KEY].notices
    assert watcher is not None
    await watcher.poll()


@pytest.mark.parametrize("how", [["--key", "{key}"], ["--all"], ["--older-than", "0s"], ["--model", "{model}"]])
async def test_a_cli_purge_empties_a_running_servers_memory(
        proxy: Any, fake_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: list[str]) -> None:
    client = await proxy()
    key = await _hit_from_memory(client)
    model = client.app[GATEWAY_KEY].cache.memory.get_nowait(key).model  # as stored: the upstream's name
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n')
    args = [a.format(key=key, model=model) for a in how]
    code, out, err = await asyncio.to_thread(run, capsys, "--config", str(cfg), "cache", "purge", *args)
    assert code == 0, err
    assert "until restart" not in out
    await _polled(client)
    r, _ = await answer(client, roo_body())
    assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2


async def test_the_watcher_polls_by_itself(proxy: Any, fake_server: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    client = await proxy()
    key = await _hit_from_memory(client)
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n')
    code, _, err = await asyncio.to_thread(run, capsys, "--config", str(cfg), "cache", "purge", "--key", key)
    assert code == 0, err
    memory = client.app[GATEWAY_KEY].cache.memory
    for _ in range(100):  # bounded: the poll interval is a second
        if key not in memory:
            break
        await asyncio.sleep(0.05)
    assert key not in memory


async def test_a_dashboard_purge_reaches_the_other_workers(proxy: Any, fake_server: Any, make_config: Any,
                                                           aiohttp_client: Any) -> None:
    a = await proxy()
    key = await _hit_from_memory(a)
    from r1proxy.app import create_app

    b = await aiohttp_client(create_app(make_config()))  # a second process on the same state dir
    r, _ = await answer(b, roo_body())
    assert r.headers["X-Cache-Tier"] == "sqlite"
    r, _ = await answer(b, roo_body())
    assert r.headers["X-Cache-Tier"] == "memory"
    await a.app[STORE_KEY].notices.post(PurgeFilter(key=key))  # what a.app's dashboard does on a purge
    await _polled(b)
    assert key not in b.app[GATEWAY_KEY].cache.memory


async def test_notices_of_before_the_start_are_not_replayed(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    watcher = client.app[STORE_KEY].notices
    await watcher.post(PurgeFilter(all=True))
    key = await _hit_from_memory(client)  # cached after the notice
    await watcher.poll()  # its own notice was already applied when posted; nothing left to do
    assert key in client.app[GATEWAY_KEY].cache.memory


def test_a_key_filter_matches_only_that_key() -> None:
    f = PurgeFilter(key="r1:abc")
    assert f.matches("m", 0.0, "r1:abc") and not f.matches("m", 0.0, "r1:abd")
    assert PurgeFilter.loads(f.dumps()) == f
