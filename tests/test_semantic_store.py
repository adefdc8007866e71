"""Vectors beside their cache entries: stored through the writer, searched per partition, gone with the entry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from r1proxy.cache import CacheEntry
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database
from tests.semantic_model import numpy


def unit(np: Any, seed: int) -> Any:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


def entry(key: str) -> CacheEntry:
    now = time.time()
    return CacheEntry(key=key, completion={"choices": [{"message": {"content": "x"}}]}, created_at=now,
                      expires_at=now + 3600, model="m")


async def test_search_in_ram_ranks_by_cosine_within_the_partition() -> None:
    np = numpy()
    from r1proxy.cache.semantic.store import VectorStore
    store = VectorStore(None)
    a, b = unit(np, 1), unit(np, 2)
    near_a = a + 0.05 * unit(np, 3)
    near_a /= np.linalg.norm(near_a)
    store.add("p1", "r1:a", "text a", a)
    store.add("p1", "r1:b", "text b", b)
    store.add("p2", "r1:other", "text a", a)  # another partition is never searched
    found = await store.search("p1", near_a, floor=0.9)
    assert [c.key for c in found] == ["r1:a"] and found[0].similarity > 0.99 and found[0].text == "text a"
    assert await store.search("p1", near_a, floor=0.0, limit=1) == found
    assert len(await store.search("p1", near_a, floor=-1.0)) == 2
    assert await store.search("p3", near_a, floor=0.0) == []
    store.forget("r1:a")
    assert await store.search("p1", a, floor=0.9) == []


async def test_vectors_live_in_sqlite_and_are_deleted_with_their_entry(tmp_path: Path) -> None:
    np = numpy()
    from r1proxy.cache.semantic.store import VectorStore
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        tier = SqliteTier(db)
        await tier.put(entry("r1:a"))
        await tier.put(entry("r1:b"))
        store = VectorStore(db)
        store.add("p1", "r1:a", "text a", unit(np, 1))
        store.add("p1", "r1:b", "text b", unit(np, 2))
        await db.flush()
        rows = await db.fetchall("SELECT key, partition, text, length(vector) FROM semantic_vectors ORDER BY key")
        assert rows == [("r1:a", "p1", "text a", 384 * 4), ("r1:b", "p1", "text b", 384 * 4)]
        # a fresh process finds them (read from SQLite on first search)
        again = VectorStore(db)
        assert [c.key for c in await again.search("p1", unit(np, 1), floor=0.99)] == ["r1:a"]
        # purge / eviction deletes the entry row; the trigger of m040 takes the vector along
        assert await tier.delete("r1:a")
        await db.flush()
        assert await db.fetchall("SELECT key FROM semantic_vectors") == [("r1:b",)]
        assert await VectorStore(db).search("p1", unit(np, 1), floor=0.99) == []
        # forget() removes it from RAM at once and from the table
        again.forget("r1:b")
        await db.flush()
        assert await db.fetchall("SELECT key FROM semantic_vectors") == []
    finally:
        await db.close()


async def test_ram_is_bounded_by_dropping_least_recently_searched_partitions(tmp_path: Path) -> None:
    np = numpy()
    from r1proxy.cache.semantic.store import VectorStore
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        writer = VectorStore(db)
        for p in range(4):
            for i in range(10):
                writer.add(f"p{p}", f"r1:{p}-{i}", "t", unit(np, 100 * p + i))
        await db.flush()
        per_partition = 10 * (384 * 4 + 100)
        store = VectorStore(db, max_ram_bytes=2 * per_partition)
        for p in range(4):
            found = await store.search(f"p{p}", unit(np, 100 * p), floor=0.99)
            assert [c.key for c in found] == [f"r1:{p}-0"]
            assert store.ram_bytes <= 2 * per_partition
    finally:
        await db.close()


def test_m040_upgrades_a_database_made_before_it(tmp_path: Path) -> None:
    import sqlite3

    from r1proxy import migrations
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _r1proxy_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    before = [fn for fn in migrations.MIGRATIONS if fn.__name__ < "m040"]
    for fn in before:
        fn(conn)
        conn.execute("INSERT INTO _r1proxy_migrations VALUES (?, 0)", (fn.__name__,))
    conn.execute("INSERT INTO cache_entries (key) VALUES ('r1:old')")
    assert "m040_semantic_vectors" in migrations.migrate(conn)
    conn.execute("INSERT INTO semantic_vectors (key, partition, text, vector) VALUES ('r1:old', 'p', 't', x'00')")
    conn.execute("DELETE FROM cache_entries WHERE key = 'r1:old'")
    assert conn.execute("SELECT COUNT(*) FROM semantic_vectors").fetchone() == (0,)
    conn.close()


async def test_appends_and_removals_keep_every_key_on_its_own_vector() -> None:
    np = numpy()
    from r1proxy.cache.semantic.store import VectorStore
    store = VectorStore(None)
    for i in range(40):  # grows its buffer several times
        store.add("p", f"r1:{i}", f"text {i}", unit(np, i))
    for i in range(0, 40, 3):
        store.forget(f"r1:{i}")
    store.add("p", "r1:5", "text 5 again", unit(np, 5))  # a re-put replaces in place
    for i in range(40):
        found = await store.search("p", unit(np, i), floor=0.99)
        if i % 3 == 0:
            assert found == []
        else:
            assert [(c.key, c.text) for c in found] == [(f"r1:{i}", "text 5 again" if i == 5 else f"text {i}")]
