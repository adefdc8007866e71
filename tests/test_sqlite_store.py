"""The SQLite side: migrations, Database open/recovery/writer, eviction, views, crash safety."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cache import CacheEntry, MemoryTier
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database, DatabaseLocked
from r1proxy.migrations import MIGRATIONS, migrate
from r1proxy.reqlog import RequestLog

ROOT = Path(__file__).resolve().parent.parent


def entry(key: str, *, size: int = 1000, created_at: float = 1000.0, expires_at: float = 2000.0,
          model: str = "deepseek-r1") -> CacheEntry:
    # random-ish text so zstd cannot shrink it to nothing: stored size tracks `size`
    text = os.urandom(size // 2).hex()
    return CacheEntry(key=key, completion={"choices": [{"message": {"content": text}}]},
                      created_at=created_at, expires_at=expires_at, model=model,
                      request=b'{"messages":[]}', preview_user="hi", preview_answer=text[:20],
                      raw_bytes=size)


async def open_db(path: Path) -> Database:
    return await Database.open(path, busy_timeout_ms=200)


# --- migrations ---------------------------------------------------------------------------

def test_migrations_on_blank_db_are_idempotent(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "blank.db", isolation_level=None)
    try:
        first = migrate(conn, now=123.0)
        assert first == [fn.__name__ for fn in MIGRATIONS]
        assert migrate(conn) == []
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"cache_entries", "requests", "key_usage", "_r1proxy_migrations",
                "v_cache_entries", "v_requests", "v_daily"} <= names
        assert conn.execute("SELECT COUNT(*), MIN(applied_at) FROM _r1proxy_migrations").fetchone() == (
            len(MIGRATIONS), 123.0)
    finally:
        conn.close()


def test_migrations_resume_a_partly_migrated_db(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "part.db", isolation_level=None)
    try:
        MIGRATIONS[0](conn)  # table exists but the migration was never recorded
        assert len(migrate(conn)) == len(MIGRATIONS)
        assert migrate(conn) == []
    finally:
        conn.close()


async def test_open_creates_parents_and_migrates_twice(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "r1proxy.db"
    for _ in range(2):
        db = await open_db(path)
        assert db.recovered_from is None
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
        await db.close()
    wal = path.with_name("r1proxy.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # close checkpointed and truncated


# --- restart, recovery, locking ------------------------------------------------------------

async def test_entry_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await open_db(path)
    await SqliteTier(db).put(entry("v1:keep"))
    await db.close()  # close flushes queued writes

    db = await open_db(path)
    try:
        got = await SqliteTier(db).get("v1:keep")
        assert got is not None and got.model == "deepseek-r1"
    finally:
        await db.close()


async def test_garbage_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r1proxy.db"
    garbage = b"this is not sqlite at all\x00" * 200
    path.write_bytes(garbage)
    path.with_name("r1proxy.db-wal").write_bytes(b"junk wal")
    with caplog.at_level(logging.WARNING, logger="r1proxy.db"):
        db = await open_db(path)
    try:
        assert db.recovered_from is not None
        assert db.recovered_from.name.startswith("r1proxy.db.corrupt-")
        assert db.recovered_from.read_bytes() == garbage
        assert Path(str(db.recovered_from) + "-wal").read_bytes() == b"junk wal"
        assert any(r.levelno == logging.WARNING and "CORRUPT" in r.getMessage() for r in caplog.records)
        tier = SqliteTier(db)
        await tier.put(entry("v1:fresh"))
        await db.flush()
        assert await tier.get("v1:fresh") is not None
    finally:
        await db.close()


async def test_damaged_pages_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await open_db(path)
    tier = SqliteTier(db)
    for i in range(200):
        await tier.put(entry(f"v1:{i}", size=3000))
    await db.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 40 * 4096
    data[8 * 4096:30 * 4096] = os.urandom(22 * 4096)  # keep the header, trash b-tree pages
    path.write_bytes(bytes(data))

    db = await open_db(path)
    try:
        assert db.recovered_from is not None
        assert await SqliteTier(db).get("v1:1") is None
    finally:
        await db.close()


async def test_locked_database_raises_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(DatabaseLocked, match=r"r1proxy\.db"):
            await Database.open(path, busy_timeout_ms=50)
        assert path.exists()  # a locked file is never moved aside
    finally:
        other.execute("ROLLBACK")
        other.close()
    db = await open_db(path)
    await db.close()


# --- writer ------------------------------------------------------------------------------

async def test_bad_write_is_counted_not_raised_and_batch_survives(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        await tier.put(entry("v1:before"))
        db.submit("INSERT INTO no_such_table VALUES (?)", (1,))
        await tier.put(entry("v1:after"))
        await db.flush()
        assert db.write_errors == 1
        assert await tier.get("v1:before") is not None
        assert await tier.get("v1:after") is not None
        with pytest.raises(sqlite3.OperationalError):
            await db.execute("DELETE FROM no_such_table")
        assert db.write_errors == 2
    finally:
        await db.close()


async def test_disk_full_is_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        pages = await db.fetchone("PRAGMA page_count")
        assert pages is not None
        await db.execute(f"PRAGMA max_page_count = {pages[0] + 2}")  # a nearly full "disk"
        tier = SqliteTier(db)
        with caplog.at_level(logging.ERROR, logger="r1proxy.db"):
            for i in range(5):
                await tier.put(entry(f"v1:{i}", size=40_000))
            await db.flush()
        assert db.write_errors == 5
        full = [r for r in caplog.records if "full" in r.getMessage()]
        assert len(full) == 1
        await db.execute("PRAGMA max_page_count = 1073741823")
        await tier.put(entry("v1:ok"))
        await db.flush()
        assert await tier.get("v1:ok") is not None
    finally:
        await db.close()


async def test_submit_after_close_is_dropped(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    await db.close()
    db.submit("DELETE FROM requests")
    assert db.write_errors == 1
    await db.close()  # idempotent


# --- eviction ----------------------------------------------------------------------------

def test_memory_lru_is_bounded_in_bytes() -> None:
    held = MemoryTier(max_bytes=10**9).put_nowait(entry("v1:x", size=1500))
    assert held is not None
    one = held.size()  # as the memory tier holds it (without the canonical request)
    budget = 4 * one + one // 2  # room for four entries, not five
    mem = MemoryTier(max_bytes=budget)
    for i in range(5):
        mem.put_nowait(entry(f"v1:{i}", size=1500))
    assert mem.entries == 4 and mem.evictions == 1 and mem.bytes <= budget
    assert mem.get_nowait("v1:0") is None
    assert mem.get_nowait("v1:1") is not None  # now most recent
    mem.put_nowait(entry("v1:5", size=1500))
    assert mem.get_nowait("v1:2") is None and mem.get_nowait("v1:1") is not None

    big = mem.get_nowait("v1:1")
    assert big is not None
    mem.note_rendered(big, ("sse", True), b"x" * (one // 2 + 1))
    assert mem.bytes <= budget
    assert mem.get_nowait("v1:1") is big
    assert mem.entries == 3

    mem.put_nowait(entry("v1:huge", size=budget))  # larger than the budget: not stored
    assert mem.get_nowait("v1:huge") is None and mem.bytes <= budget


def test_memory_zero_budget_stores_nothing() -> None:
    mem = MemoryTier(max_bytes=0)
    mem.put_nowait(entry("v1:a"))
    assert mem.get_nowait("v1:a") is None and mem.entries == 0


async def test_sqlite_lru_eviction_keeps_recently_used(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db, max_bytes=0, stale_if_error=10_000)
        for i in range(20):
            await tier.put(entry(f"v1:{i}", size=4000, created_at=1000.0 + i, expires_at=99_999))
        await tier.touch("v1:0", 5000.0)  # oldest by creation, but just used
        await db.flush()
        total = (await tier.stats()).bytes
        tier.max_bytes = total // 2
        deleted = await tier.evict(now=1100.0)
        assert deleted > 0
        st = await tier.stats()
        assert st.bytes <= tier.max_bytes * 0.9
        assert st.entries == 20 - deleted
        assert await tier.get("v1:0") is not None
        assert await tier.get("v1:19") is not None
        assert await tier.get("v1:1") is None
        assert await tier.evict(now=1100.0) == 0  # already under the cap
    finally:
        await db.close()


async def test_expired_rows_go_after_the_stale_window(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db, stale_if_error=100.0)
        await tier.put(entry("v1:old", expires_at=1000.0))
        await tier.put(entry("v1:stale", expires_at=1950.0))
        await tier.put(entry("v1:fresh", expires_at=5000.0))
        await db.flush()
        assert await tier.evict(now=2000.0) == 1  # old: expired 1000 s ago > 100 s window
        assert await tier.get("v1:old") is None
        assert await tier.get("v1:stale") is not None  # may still serve if the upstream fails
        assert await tier.evict(now=2100.0) == 1
        assert await tier.get("v1:fresh") is not None
    finally:
        await db.close()


async def test_eviction_runs_in_background_every_n_puts(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db, stale_if_error=0.0, evict_every=5, clock=lambda: 10_000.0)
        for i in range(4):
            await tier.put(entry(f"v1:{i}", expires_at=1.0))
        await db.flush()
        assert (await tier.stats()).entries == 4  # no eviction yet
        await tier.put(entry("v1:4", expires_at=1.0))
        await tier.close()  # waits for the background eviction
        assert (await tier.stats()).entries == 0
        assert tier.evicted == 5
    finally:
        await db.close()


async def test_purge_and_list(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        await tier.put(entry("v1:a", model="m1", created_at=100.0))
        await tier.put(entry("v1:b", model="m2", created_at=200.0))
        await tier.put(entry("v1:c", model="m2", created_at=300.0))
        await db.flush()
        listed = await tier.list_entries(limit=10)
        assert [r["key"] for r in listed] == ["v1:c", "v1:b", "v1:a"]
        assert "body" not in listed[0]
        assert [r["key"] for r in await tier.list_entries(limit=10, model="m1")] == ["v1:a"]
        with pytest.raises(ValueError):
            await tier.purge()
        assert await tier.purge(model="m2", older_than_s=50.0, now=300.0) == 1
        assert await tier.purge(all=True) == 2
        assert (await tier.stats()).entries == 0
    finally:
        await db.close()


# --- views, queried the way a user would ---------------------------------------------------

async def test_views_show_what_was_inserted(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await open_db(path)
    tier = SqliteTier(db)
    e = entry("v1:view", size=2000, created_at=86_400.0, expires_at=2 * 86_400.0)
    await tier.put(e)
    await tier.touch("v1:view", 86_400.0 + 3600)
    RequestLog(db).record({"ts": 86_400.0 + 60, "request_id": "r-1", "alias": "deepseek-r1", "cache": "HIT",
                           "status": 200, "prompt_tokens": 10, "completion_tokens": 5, "cost": 0.0, "cost_saved": 0.02})
    await db.close()

    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM v_cache_entries").fetchone()
        assert row["key"] == "v1:view" and row["hits"] == 1
        assert (row["created"], row["last_hit"], row["expires"]) == (
            "1970-01-02 00:00:00", "1970-01-02 01:00:00", "1970-01-03 00:00:00")
        assert 0 < row["ratio"] < 1.5 and "body" not in row.keys()  # noqa: SIM118 -- sqlite3.Row has no __contains__
        req = conn.execute("SELECT * FROM v_requests").fetchone()
        assert req["ts"] == "1970-01-02 00:01:00" and req["cache"] == "HIT"
        assert not {"id", "request_id"} & set(req.keys())
        day = dict(conn.execute("SELECT * FROM v_daily").fetchone())
        expected = {"day": "1970-01-02", "requests": 1, "hits": 1, "hit_rate": 1.0,
                    "tokens_saved": 15, "usd_saved": 0.02, "upstream_errors": 0, "usd_spent": 0.0}
        assert list(day)[:len(expected)] == list(expected)  # the documented columns come first (#14 added more)
        assert {k: day[k] for k in expected} == expected
        assert day["usd_prefix_saved"] == 0 and day["upstream_cached_tokens"] == 0
    finally:
        conn.close()


# --- crash safety ----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from r1proxy.cache import CacheEntry
    from r1proxy.cache.sqlite import SqliteTier
    from r1proxy.db import Database

    async def main():
        db = await Database.open(sys.argv[1])
        tier = SqliteTier(db, max_bytes=2_000_000, evict_every=50)
        i = 0
        while True:
            for _ in range(20):
                text = os.urandom(2000).hex()
                await tier.put(CacheEntry(key=f"v1:{i}", completion={"content": text},
                                          created_at=float(i), expires_at=1e12))
                i += 1
            if i == 200:
                await db.flush()
                print("flushed", flush=True)
            await asyncio.sleep(0)

    asyncio.run(main())
""")


def test_sigkill_mid_write_leaves_a_usable_db(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             env=env, cwd=tmp_path)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"flushed"
        # let it keep writing (more batches, a background eviction) before killing it
        wal = path.with_name("r1proxy.db-wal")
        for _ in range(2000):
            if child.poll() is not None or wal.stat().st_size > 3_000_000:
                break
            time.sleep(0.005)
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL

    async def check() -> None:
        db = await open_db(path)
        try:
            assert db.recovered_from is None
            assert await db.fetchall("PRAGMA integrity_check") == [("ok",)]
            tier = SqliteTier(db)
            st = await tier.stats()
            assert st.entries > 0
            newest = await db.fetchone("SELECT key FROM cache_entries ORDER BY created_at DESC LIMIT 1")
            assert newest is not None
            assert int(newest[0].removeprefix("v1:")) >= 200  # writes after the flush landed too
            got = await tier.get(newest[0])
            assert got is not None and len(got.completion["content"]) == 4000
        finally:
            await db.close()

    asyncio.run(check())


def test_upgrade_from_the_first_shipped_schema_keeps_rows(tmp_path: Path) -> None:
    """A database made by the first release (m001–m004) gains m005's prompt column and keeps its rows."""
    from r1proxy import migrations

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for fn in migrations.MIGRATIONS[:4]:
        fn(conn)
        conn.execute("INSERT INTO _r1proxy_migrations VALUES (?, 0)", (fn.__name__,))
    conn.execute("INSERT INTO requests (ts, alias, cache, status) VALUES (1, 'deepseek-r1', 'HIT', 200)")
    assert migrations.migrate(conn) == [fn.__name__ for fn in migrations.MIGRATIONS[4:]]  # m005 and every later one
    assert conn.execute("SELECT alias, cache, status, prompt FROM requests").fetchall() == [
        ("deepseek-r1", "HIT", 200, None)]
    assert conn.execute("SELECT requests, hits FROM v_daily").fetchone() == (1, 1)
    assert migrations.migrate(conn) == []


async def test_a_write_batch_is_one_trip_to_the_writer_thread(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load every await waits a whole (busy) loop iteration: the writer must not await per
    statement, or it falls behind and queued entries pile up in memory."""
    db = await open_db(tmp_path / "r1proxy.db")
    loop = asyncio.get_running_loop()
    trips = 0
    real = loop.run_in_executor

    def counting(executor: Any, fn: Any, *args: Any) -> Any:
        nonlocal trips
        trips += 1
        return real(executor, fn, *args)

    monkeypatch.setattr(loop, "run_in_executor", counting)
    try:
        for i in range(100):  # alternating statements: nothing to coalesce, 100 statements in one batch
            db.submit("INSERT INTO key_usage (key_name, day, requests, tokens, usd) VALUES (?, ?, 1, 0, 0)",
                      (f"k{i}", "2026-11-25"))
            db.submit("UPDATE key_usage SET tokens = tokens + 1 WHERE key_name = ?", (f"k{i}",))
        await db.flush()
        assert trips == 1
        assert (await db.fetchone("SELECT COUNT(*), SUM(tokens) FROM key_usage")) == (100, 100)
    finally:
        monkeypatch.undo()
        await db.close()


async def test_a_put_is_encoded_and_compressed_on_the_writer_thread(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on the event loop, right after [DONE], where the next request lands (~0.3 ms of loop time
    per answer in the miss benchmark, bench/ANALYSIS.md); the row reads back the same."""
    import threading

    from r1proxy.cache import zdict

    threads: list[str] = []
    compress = zdict.ThreadCompressors.compress

    def spy(self: Any, raw_body: bytes, raw_request: bytes) -> tuple[int, bytes, bytes]:
        threads.append(threading.current_thread().name)
        return compress(self, raw_body, raw_request)

    monkeypatch.setattr(zdict.ThreadCompressors, "compress", spy)
    db = await Database.open(tmp_path / "c.db")
    try:
        tier = SqliteTier(db)
        entry = CacheEntry.from_completion("r1:k", {"choices": [{"message": {"content": "hi"}}]}, now=1.0,
                                           ttl=60.0, model="m", namespace="", request=b'{"model":"m"}')
        await tier.put(entry)
        await tier.settle()
        tier._pending.clear()  # read the committed row, not the queued entry
        got = await tier.get_full("r1:k")
        assert got is not None and got.completion == entry.completion and got.request == entry.request
        assert threads and threading.main_thread().name not in threads
    finally:
        await tier.close()
        await db.close()
