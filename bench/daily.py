"""v_daily at scale (``python -m bench.daily [--rows N]``): the view over ``daily_totals`` vs the same
figures aggregated from the request log (what v_daily was before migration m012), in one run.

Builds a temporary database through the real migrations, inserts N request rows (90 days, a Roo-like
mix of MISS/HIT/COALESCED/STALE/BYPASS) in batches of 256 as the writer does (``rollups.insert_requests``
adds each batch to ``daily_totals``), then times ``SELECT * FROM v_daily`` and the reference scan
(median of 21 each) and the insert cost per row with and without the rollups. Target: v_daily
≤ 20 ms at 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from r1proxy.migrations import SERVED_FROM_CACHE, migrate
from r1proxy.rollups import INSERT, REQUEST_COLUMNS, insert_requests

CACHES = ("MISS", "HIT", "HIT", "COALESCED", "STALE", "BYPASS", "MISS")
SCAN = f"""
SELECT date(ts, 'unixepoch') AS day, COUNT(*), SUM(cache IN {SERVED_FROM_CACHE}),
       SUM(CASE WHEN cache IN {SERVED_FROM_CACHE} THEN prompt_tokens + completion_tokens ELSE 0 END),
       SUM(cost_saved), SUM(status >= 500), SUM(cost), SUM(prefix_saved), SUM(cached_tokens)
FROM requests GROUP BY day ORDER BY day
"""


def rows(n: int, t0: float, step: float, rng: random.Random) -> list[tuple[object, ...]]:
    out = []
    for i in range(n):
        cache = rng.choice(CACHES)
        paid = cache in ("MISS", "BYPASS")
        d = {"ts": t0 + i * step, "cache": cache, "status": 200 if rng.random() > 0.01 else 502,
             "prompt_tokens": 20000, "completion_tokens": 700, "reasoning_tokens": 500,
             "cost": 0.0125 if paid else 0.0, "cost_saved": 0.0 if paid else 0.0125,
             "cached_tokens": 15000 if paid else 0, "prefix_saved": 0.0074 if paid else 0.0,
             "cost_source": "reported"}
        out.append(tuple(d.get(c) for c in REQUEST_COLUMNS))
    return out


def timed(conn: sqlite3.Connection, sql: str, reps: int = 21) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        conn.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def insert(conn: sqlite3.Connection, data: list[tuple[object, ...]], *, rollups: bool = True) -> float:
    t = time.perf_counter()
    for k in range(0, len(data), 256):
        conn.execute("BEGIN")
        if rollups:
            insert_requests(conn, data[k:k + 256])
        else:
            conn.executemany(INSERT, data[k:k + 256])
        conn.execute("COMMIT")
    return (time.perf_counter() - t) / max(1, len(data)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "r1proxy.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn)
        t0 = time.time() - 90 * 86400
        step = 90 * 86400 / args.rows
        per_row = 0.0
        done = 0
        while done < args.rows:
            n = min(100_000, args.rows - done)
            per_row += insert(conn, rows(n, t0 + done * step, step, rng)) * n
            done += n
        per_row /= args.rows
        view_ms = timed(conn, "SELECT * FROM v_daily")
        scan_ms = timed(conn, SCAN, reps=5)
        sample = rows(20_000, t0, step, rng)
        bare = insert(conn, sample, rollups=False)
        days = conn.execute("SELECT COUNT(*) FROM v_daily").fetchone()[0]
        conn.close()
    print(f"rows {args.rows:,}  days {days}")
    met = 'met' if view_ms <= 20 else 'NOT met'
    print(f"v_daily (daily_totals)   median {view_ms:.3f} ms   target <= 20 ms: {met}")
    print(f"reference scan           median {scan_ms:.1f} ms   ratio {view_ms / scan_ms:.5f}")
    print(f"insert per row           {per_row:.1f} us with the rollups, {bare:.1f} us without")


if __name__ == "__main__":
    main()
