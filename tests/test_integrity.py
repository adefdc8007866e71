"""The integrity check is off the start path: it runs after an unclean shutdown, in the
background, and on demand (``r1proxy cache check``); a failed check turns the disk tier off and
the next start moves the file aside."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.cli import main
from r1proxy.db import Database


def entry(key: str) -> CacheEntry:
    text = os.urandom(1500).hex()
    return CacheEntry(key=key, completion={"choices": [{"message": {"content": text}}]},
                      created_at=1000.0, expires_at=1e12, model="m", request=b"{}")


async def damaged_db(path: Path) -> None:
    """A database whose header is fine but whose b-tree pages are garbage (quick_check fails)."""
    db = await Database.open(path)
    tier = SqliteTier(db)
    for i in range(200):
        await tier.put(entry(f"v1:{i}"))
    await db.close()
    data = bytearray(path.read_bytes())
    mid = len(data) // 4096 // 2 * 4096  # cache rows' pages; the schema and small tables stay readable
    data[mid:mid + 20 * 4096] = os.urandom(20 * 4096)
    path.write_bytes(bytes(data))


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n')
    return cfg


async def test_a_clean_start_does_not_scan_and_a_clean_stop_leaves_no_mark(proxy: Any, tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "r1proxy.db"
    db_path.parent.mkdir(parents=True)
    await damaged_db(db_path)  # damaged, but the last run (as far as anyone knows) ended cleanly
    client = await proxy()
    assert (await client.get("/health")).status == 200
    assert Path(f"{db_path}.open").exists()
    await client.close()
    assert db_path.exists()  # not moved aside: no quick_check ran on the start path
    assert not Path(f"{db_path}.open").exists()
    assert not Path(f"{db_path}.check-failed").exists()


async def test_after_an_unclean_stop_a_failed_background_check_turns_the_disk_tier_off(
        proxy: Any, tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "r1proxy.db"
    db_path.parent.mkdir(parents=True)
    await damaged_db(db_path)
    Path(f"{db_path}.open").touch()  # as a SIGKILLed server leaves it
    client = await proxy()
    health: dict[str, Any] = {}
    for _ in range(500):
        health = await (await client.get("/health")).json()
        if health["degraded"]:
            break
        await asyncio.sleep(0.01)
    assert health["status"] == "degraded"
    assert any("integrity" in d for d in health["degraded"])
    assert Path(f"{db_path}.check-failed").exists()
    await client.close()

    # the next start checks on the start path and moves the damaged file aside
    db = await Database.open(db_path, quick_check=True)
    try:
        assert db.recovered_from is not None
    finally:
        await db.close()
    client = await proxy()
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"
    await client.close()


async def test_after_an_unclean_stop_a_sound_file_stays_in_use(proxy: Any, tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "r1proxy.db"
    db_path.parent.mkdir(parents=True)
    db = await Database.open(db_path)
    await SqliteTier(db).put(entry("v1:keep"))
    await db.close()
    Path(f"{db_path}.open").touch()
    client = await proxy()
    await client.close()  # waits for (or cancels) the background check
    assert not Path(f"{db_path}.check-failed").exists()
    db = await Database.open(db_path, quick_check=False)
    try:
        assert db.recovered_from is None and await SqliteTier(db).get("v1:keep") is not None
    finally:
        await db.close()


async def test_cache_check_on_demand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path))
    db_path = tmp_path / "state" / "r1proxy.db"
    db = await Database.open(db_path)
    await SqliteTier(db).put(entry("v1:a"))
    await db.close()
    assert await asyncio.to_thread(main, ["--config", cfg, "cache", "check"]) == 0
    assert "quick_check ok" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["--config", cfg, "cache", "check", "--full"]) == 0
    assert "integrity_check ok" in capsys.readouterr().out
    await damaged_db(db_path)
    assert await asyncio.to_thread(main, ["--config", cfg, "cache", "check"]) == 1
    assert "FAILED" in capsys.readouterr().out
