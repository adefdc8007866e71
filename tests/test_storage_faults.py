"""Storage faults (#11): failing writes make /health degraded (logged once per state change) and
recover without a restart; a database file deleted or replaced while serving is noticed and reopened."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.appkeys import CONFIG_KEY, GATEWAY_KEY, STORE_KEY


async def ask(client: Any, text: str) -> None:
    r = await client.post("/chat/completions", json={"model": "deepseek-r1", "stream": False,
                                                     "messages": [{"role": "user", "content": text}]})
    assert r.status == 200  # never fails for the storage
    await r.read()


async def health(client: Any) -> dict[str, Any]:
    r = await client.get("/health")
    assert r.status == 200
    return dict(await r.json())


def db_errors(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("r1proxy") and words in r.getMessage()]


async def test_failing_writes_are_degraded_logged_once_and_recover(proxy: Any, fake_server: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = await proxy()
    db = client.app[STORE_KEY].db
    await ask(client, "before")
    await db.flush()
    await db.execute("PRAGMA max_page_count = 1")  # the file may not grow: SQLITE_FULL, as on a full disk
    for i in range(20):
        await ask(client, f"full {i} " + "x" * 5000)
        client.app[GATEWAY_KEY].flush_accounting()
    await db.flush()
    doc = await health(client)
    assert doc["status"] == "degraded" and "full" in doc["reason"], doc
    assert db.write_errors > 1
    assert len(db_errors(caplog, "database writes fail")) == 1  # once per state change, not per failure
    await db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    await ask(client, "after")
    client.app[GATEWAY_KEY].flush_accounting()
    await db.flush()
    doc = await health(client)
    assert doc["status"] == "ok" and "reason" not in doc, doc
    assert len(db_errors(caplog, "database writes work again")) == 1
    r = await client.post("/chat/completions", json={"model": "deepseek-r1", "stream": False,
                                                     "messages": [{"role": "user", "content": "after"}]})
    assert r.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_deleted_or_replaced_while_serving_is_reopened(
        proxy: Any, fake_server: Any, caplog: pytest.LogCaptureFixture, how: str) -> None:
    client = await proxy()
    db = client.app[STORE_KEY].db
    path = Path(client.app[CONFIG_KEY].db_path)
    await ask(client, "first")
    await db.flush()
    db.watch_s = 0.05
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    if how == "replaced":
        path.write_bytes(b"not a database at all" * 100)
    for _ in range(200):  # the periodic check runs within 2 s
        if db.reopens:
            break
        await asyncio.sleep(0.05)
    assert db.reopens == 1
    assert len(db_errors(caplog, "while serving")) == 1
    assert "reopened" in (await health(client))["db_event"]
    await ask(client, "second")
    await db.flush()
    await asyncio.sleep(0)
    conn = sqlite3.connect(path)
    try:
        for _ in range(100):  # the cache's writer batches: wait for the entry to land in the new file
            n = conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0]
            if n:
                break
            await asyncio.sleep(0.05)
            await db.flush()
    finally:
        conn.close()
    assert n == 1  # the answer after the fault is stored, in the file on disk
    if how == "replaced":
        assert list(path.parent.glob("r1proxy.db.corrupt-*"))  # the stranger's file kept aside


@pytest.fixture
def small_volume(tmp_path: Path) -> Any:
    """A 4 MB tmpfs (needs root and mount, as on CI): a disk that really fills up."""
    import subprocess

    vol = tmp_path / "vol"
    vol.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(vol)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount): {r.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True)


async def test_a_full_disk_recovers_without_a_restart(proxy: Any, fake_server: Any, small_volume: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import os

    client = await proxy(server={"state_dir": str(small_volume / "state")})
    db = client.app[STORE_KEY].db
    db.watch_s = 0.05
    await ask(client, "first")
    await db.flush()
    filler = small_volume / "filler"
    with open(filler, "wb") as f:  # leave a few hundred KB, then let the cache fill them
        free = os.statvfs(small_volume).f_bavail * os.statvfs(small_volume).f_frsize
        f.write(b"\0" * max(0, free - 300_000))
    for i in range(300):
        await ask(client, f"fill {i} " + os.urandom(6000).hex())
        client.app[GATEWAY_KEY].flush_accounting()
        await db.flush()
        if db.degraded:
            break
    doc = await health(client)
    assert doc["status"] == "degraded" and "full" in doc["reason"], doc
    filler.unlink()  # the operator frees space; no restart
    for i in range(100):
        await ask(client, f"after {i}")
        client.app[GATEWAY_KEY].flush_accounting()
        await db.flush()
        if not db.degraded:
            break
        await asyncio.sleep(0.05)
    assert (await health(client))["status"] == "ok"
    await ask(client, "stored again")
    await db.flush()
    await asyncio.sleep(0.1)
    r = await client.post("/chat/completions", json={"model": "deepseek-r1", "stream": False,
                                                     "messages": [{"role": "user", "content": "stored again"}]})
    assert r.headers["X-Cache"] == "HIT"
    assert len(db_errors(caplog, "database writes fail")) == 1
