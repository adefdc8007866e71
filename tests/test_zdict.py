"""Trained zstd dictionaries: versioned in the schema (entries name theirs, old ones stay readable),
shared by SQLite and Redis, and shipped through Redis to a process that never trained one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.answers import r1_answer
from r1proxy.cache import CacheEntry
from r1proxy.cache.redistier import RedisTier, connect
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.cache.zdict import Compression, train
from r1proxy.config import RedisConfig
from r1proxy.db import Database
from tests.roo import roo_body


def realistic(i: int) -> CacheEntry:
    reasoning, content = r1_answer(f"seed-{i}", reasoning_chars=1500, content_chars=1200)
    completion = {"id": f"gen-{i}", "object": "chat.completion", "created": 1_700_000_000 + i,
                  "model": "deepseek/deepseek-r1",
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}],
                  "usage": {"prompt_tokens": 900 + i, "completion_tokens": 700, "total_tokens": 1600 + i}}
    request = json.dumps(roo_body(text=f"Task {i}: {content[:80]}"), separators=(",", ":")).encode()
    return CacheEntry(key=f"r1:{i:032x}", completion=completion, created_at=1000.0 + i, expires_at=9e12,
                      model="deepseek/deepseek-r1", request=request, preview_answer=content[:40])


async def _stored(db: Database, key: str) -> tuple[int, int]:
    row = await db.fetchone("SELECT dict_id, LENGTH(body) FROM cache_entries WHERE key = ?", (key,))
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_trained_dictionary_is_versioned_and_old_entries_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "r1proxy.db"
    db = await Database.open(path)
    comp = Compression(db=db)
    tier = SqliteTier(db, compression=comp)
    try:
        for i in range(200):
            await tier.put(realistic(i))
        await db.flush()
        with pytest.raises(ValueError, match="too few"):
            await train(db, Compression(), samples=10)
        dict_id, sampled = await train(db, comp, samples=200)
        assert dict_id != 0 and sampled == 200 and comp.current == dict_id
        await tier.put(realistic(500))
        await db.flush()
        old_id, _ = await _stored(db, realistic(5).key)
        new_id, new_size = await _stored(db, realistic(500).key)
        assert (old_id, new_id) == (0, dict_id)
        plain = len(Compression().compress_body(json.dumps(realistic(500).completion, ensure_ascii=False,
                                                            separators=(",", ":")).encode()))
        assert new_size < plain  # the point of the dictionary
    finally:
        await tier.close()
        await db.close()

    db = await Database.open(path)  # a new process: nothing loaded yet, both generations read
    try:
        fresh = SqliteTier(db, compression=Compression(db=db))
        for i in (5, 500):
            got = await fresh.get_full(realistic(i).key)
            assert got is not None and got.completion == realistic(i).completion and got.request == realistic(i).request
        assert await Compression(db=db).load() == dict_id  # and the newest set is the one new writes use
    finally:
        await db.close()


async def test_the_dictionary_travels_through_redis(tmp_path: Path, redis_server: Any, redis_prefix: str) -> None:
    cfg = RedisConfig(url=redis_server.url, prefix=redis_prefix, timeout=5.0)
    db_a = await Database.open(tmp_path / "a.db")
    db_b = await Database.open(tmp_path / "b.db")
    comp_a = Compression(db=db_a)
    a = RedisTier(connect(cfg), cfg, compression=comp_a)
    b = RedisTier(connect(cfg), cfg, compression=Compression(db=db_b))  # never trained anything
    try:
        disk_a = SqliteTier(db_a, compression=comp_a)
        for i in range(100):
            await disk_a.put(realistic(i))
        await db_a.flush()
        dict_id, _ = await train(db_a, comp_a, samples=100)
        await a.put(realistic(300))
        await a.settle()
        assert await a.client.ttl(a.dict_key(dict_id)) > cfg.ttl  # outlives every entry that needs it
        got = await b.get(realistic(300).key)
        assert got is not None and got.completion == realistic(300).completion
        assert b.compression.has(dict_id) and b.counters.damaged == 0

        # a set that did not reach Redis: a miss, and the entry is left for those who can read it
        c = RedisTier(connect(cfg), cfg, compression=Compression())
        await a.client.delete(a.dict_key(dict_id))
        assert await c.get(realistic(300).key) is None
        assert await a.client.exists(a.entry_key(realistic(300).key)) == 1 and c.counters.damaged == 0
        await c.close()
    finally:
        await a.close()
        await b.close()
        await db_a.close()
        await db_b.close()


async def test_cli_train_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from r1proxy.cli import main

    state = tmp_path / "state"
    db = await Database.open(state / "r1proxy.db")
    tier = SqliteTier(db)
    for i in range(40):
        await tier.put(realistic(i))
    await tier.close()
    await db.close()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nstate_dir = "{state}"\n')
    rc = await asyncio.to_thread(main, ["--config", str(cfg), "cache", "train-dict", "--samples", "40"])
    out = capsys.readouterr().out
    assert rc == 0 and "trained zstd dictionary" in out and "answers" in out and "requests" in out
    assert await asyncio.to_thread(main, ["--config", str(cfg), "cache", "train-dict", "--samples", "3"]) == 1
    assert "too few entries" in capsys.readouterr().err
