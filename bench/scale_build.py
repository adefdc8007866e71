"""Build a large r1proxy state directory quickly, through the store's own code.

``build(state_dir, entries, log_rows)`` opens the database the way the server does
(``Database.open``: schema and migrations), encodes a pool of distinct realistic entries with
``SqliteTier``'s own encoder (zstd completion + canonical request, R1-like answers of varied
size from bench/answers.py, the 20 KB Roo body as the canonical request), then writes
``entries`` rows with the tier's own INSERT statement and ``log_rows`` request-log rows with
``RequestLog``'s, in large transactions. Each row gets its own key and times spread evenly over
the last ``days`` days (inserted oldest first, as a real cache grows), so about half the rows
are older than ``days / 2``. Rows reuse the pool's blobs: sizes are realistic, the bytes
repeat (compression of the database file is not what is measured here).

Also ``python -m bench.scale_build STATE_DIR [--entries N] [--log-rows N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from bench.answers import r1_answer
from bench.body import roo_body
from r1proxy import rollups
from r1proxy.cache import sqlite as store
from r1proxy.cache.entry import CacheEntry
from r1proxy.cache.sqlite import SqliteTier
from r1proxy.db import Database
from r1proxy.rollups import REQUEST_COLUMNS

POOL = 500
CHUNK = 20_000
MODEL = "deepseek/deepseek-r1"


def _completion(i: int) -> dict[str, Any]:
    reasoning, content = r1_answer(f"scale-{i}")
    return {"id": f"gen-scale-{i}", "object": "chat.completion", "created": 1_760_000_000, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}],
            "usage": {"prompt_tokens": 5200, "completion_tokens": 900, "total_tokens": 6100,
                      "completion_tokens_details": {"reasoning_tokens": 600}}}


def pool_rows(tier: SqliteTier, n: int = POOL) -> list[tuple[Any, ...]]:
    """``n`` distinct entries encoded by the tier (its column order)."""
    rows = []
    for i in range(n):
        completion = _completion(i)
        e = CacheEntry(key=f"r1:pool{i}", completion=completion, created_at=0.0, expires_at=0.0, model=MODEL,
                       request=roo_body(nonce=f"scale-{i}"), prompt_tokens=5200, completion_tokens=900,
                       reasoning_tokens=600, cost=0.0071, preview_user=f"Add a --verbose flag to cli.py (scale-{i})",
                       preview_answer=completion["choices"][0]["message"]["content"][:160])
        rows.append(tier._encode(e))
    return rows


def entry_rows(pool: list[tuple[Any, ...]], n: int, now: float, span_s: float, ttl_s: float,
               start: int = 0) -> Iterator[tuple[Any, ...]]:
    """Rows ``start``..``n-1``: the pool's blobs with a unique key; created oldest first over ``span_s``."""
    step = span_s / max(1, n)
    for i in range(start, n):
        created = now - span_s + i * step
        row = list(pool[i % len(pool)])
        row[0] = "r1:" + xxhash.xxh3_128_hexdigest(f"scale-entry-{i}".encode())
        row[3], row[4], row[6] = created, created, created + ttl_s  # created_at, last_hit_at, expires_at
        yield tuple(row)


def log_rows(n: int, now: float, span_s: float) -> Iterator[tuple[Any, ...]]:
    step = span_s / max(1, n)
    caches = ("HIT", "MISS", "HIT", "HIT", "MISS", "COALESCED", "HIT", "MISS")
    for i in range(n):
        cache = caches[i % len(caches)]
        hit = cache != "MISS"
        d = {"ts": now - span_s + i * step, "request_id": f"req-{i}", "key_name": f"dev{i % 3}",
             "alias": MODEL, "upstream_model": MODEL, "route": "openrouter", "stream": 1, "cache": cache,
             "tier": "memory" if hit else None, "status": 200, "latency_ms": 0.3 if hit else 8200.0,
             "ttfb_ms": 0.2 if hit else 1400.0, "prompt_tokens": 5200, "completion_tokens": 900,
             "reasoning_tokens": 600, "cost": 0.0 if hit else 0.0071, "cost_saved": 0.0071 if hit else 0.0,
             "request_bytes": 20480, "response_bytes": 4100}
        yield tuple(d.get(c) for c in REQUEST_COLUMNS)


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _schema(db_path: Path) -> list[tuple[Any, ...]]:
    db = await Database.open(db_path)
    try:
        return pool_rows(SqliteTier(db))
    finally:
        await db.close()


def build(state_dir: Path, entries: int, log_rows_n: int, days: float = 6.0, ttl_days: float = 30.0,
          now: float | None = None, progress: bool = True) -> float:
    """Fill ``state_dir/r1proxy.db``; returns the seconds it took."""
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    state_dir.mkdir(parents=True, exist_ok=True)
    db_path = state_dir / "r1proxy.db"
    pool = asyncio.run(_schema(db_path))
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        # a bulk load: no WAL (the server turns WAL back on when it opens the file)
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        put = store._PUT
        done = 0
        for chunk in _chunks(entry_rows(pool, entries, now, days * 86400, ttl_days * 86400), CHUNK):
            conn.execute("BEGIN")
            conn.executemany(put, chunk)
            conn.execute("COMMIT")
            done += len(chunk)
            if progress and done % 200_000 < CHUNK:
                print(f"    {done:,} entries ({time.perf_counter() - t0:.0f} s)", flush=True)
        for chunk in _chunks(log_rows(log_rows_n, now, days * 86400), CHUNK):
            conn.execute("BEGIN")
            rollups.insert_requests(conn, chunk)  # the rows and their rollups, as the writer does
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_build", description=__doc__.split("\n")[0])
    p.add_argument("state_dir", type=Path)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--log-rows", type=int, default=1_000_000)
    a = p.parse_args(argv)
    took = build(a.state_dir, a.entries, a.log_rows)
    size = (a.state_dir / "r1proxy.db").stat().st_size
    print(f"built {a.entries:,} entries and {a.log_rows:,} log rows in {took:.1f} s ({size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
