"""Dashboard benchmark: the overview's server time with 100,000 logged requests and a full cache.

    python -m bench.ui                   # 100,000 requests over 30 days, 20,000 cache entries
    python -m bench.ui --requests 20000 --rounds 200

Builds a real r1proxy database (every migration; rows go in through ``rollups.insert_requests``,
which fills ``requests_hourly`` and ``requests_daily`` as the writer does), starts the real app in
this process on 127.0.0.1, and requests ``/ui`` (the HTML page) and ``/ui/api/overview`` (what the
page polls) over and over. The server time is the
``Server-Timing: app;dur=`` each dashboard response carries (measured around the handler); the
round trip is measured by the client. Reference in the same run: ``/health`` (a trivial handler),
so the ratio says what the overview costs beyond the HTTP path itself. Also measured: the request
log's insert cost with the dashboard's rollups and indexes (m050-m053) against the schema before
them. Target (issue #15): overview server time <= 50 ms p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from r1proxy.app import create_app
from r1proxy.config import build_config
from r1proxy.migrations import MIGRATIONS, applied, migrate
from r1proxy.rollups import insert_requests, row_values

OUTCOMES = (("HIT", "memory", 30), ("HIT", "sqlite", 10), ("COALESCED", "", 5), ("STALE", "", 2), ("MISS", "", 45),
            ("BYPASS", "", 3), ("NONE", "", 5))
# Not part of the target; measured for the record (each reads the request log or cache_entries).
OTHER_PAGES = ("/ui/requests", "/ui/requests?key=ci&cache=STALE", "/ui/requests?status=5xx", "/ui/cache",
               "/ui/upstreams", "/ui/api/latency")
ALIASES = ("deepseek-r1", "deepseek-r1-free", "deepseek-v3")
KEYS = ("roo", "ci", "laptop")


def request_rows(n: int, now: float, seed: int = 7) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    weights = [w for *_, w in OUTCOMES]
    rows = []
    for i in range(n):
        cache, tier, _ = rnd.choices(OUTCOMES, weights)[0]
        status = 200 if cache != "NONE" else rnd.choice((429, 502, 400))
        alias = rnd.choice(ALIASES)
        prompt, completion = rnd.randint(2000, 60000), rnd.randint(100, 4000)
        served = cache in ("HIT", "COALESCED", "STALE")
        cost = 0.0 if served else (prompt * 0.55 + completion * 2.19) / 1e6
        saved = (prompt * 0.55 + completion * 2.19) / 1e6 if served else 0.0
        rows.append((now - rnd.random() * 30 * 86400, f"req-{i}", rnd.choice(KEYS), alias,
                     "deepseek/deepseek-r1:free" if alias.endswith("free") else "deepseek/deepseek-r1",
                     "openrouter", 1, cache, tier, status, None, rnd.uniform(1, 90000), rnd.uniform(1, 9000),
                     prompt, completion, completion // 2, cost, saved, 20480, 4000, f"gen-{i}", f"r1:{i:032x}"))
    rows.sort()
    return rows


_COLS = ("ts, request_id, key_name, alias, upstream_model, route, stream, cache, tier, status, error_type, "
         "latency_ms, ttfb_ms, prompt_tokens, completion_tokens, reasoning_tokens, cost, cost_saved, "
         "request_bytes, response_bytes, generation_id, cache_key")
INSERT = f"INSERT INTO requests ({_COLS}) VALUES ({', '.join('?' * 22)})"


def insert_seconds(path: Path, rows: list[tuple[Any, ...]], upto: str | None) -> float:
    """Insert the rows in batches of 256 (as the writer does) into a database migrated up to ``upto``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if upto is None:
        migrate(conn)
    else:
        applied(conn)
        for fn in MIGRATIONS:
            if fn.__name__ == upto:
                break
            fn(conn)
    names = _COLS.split(", ")
    full = [row_values(dict(zip(names, r, strict=True))) for r in rows]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 256):
        conn.execute("BEGIN")
        if upto is None:  # as the writer does: the rows and their rollups
            insert_requests(conn, full[i:i + 256])
        else:
            conn.executemany(INSERT, rows[i:i + 256])
        conn.execute("COMMIT")
    took = time.perf_counter() - t0
    conn.close()
    return took


def fill_cache(path: Path, n: int, now: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    rnd = random.Random(3)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO cache_entries (key, namespace, model, created_at, last_hit_at, hits, expires_at, prompt_tokens,"
        " completion_tokens, cost, raw_bytes, stored_bytes, preview_user, preview_answer, body, request)"
        " VALUES (?, '', ?, ?, ?, ?, ?, 20000, 2000, 0.01, 30000, 6000, 'Add a flag', 'Done.', ?, ?)",
        [(f"r1:{i:032x}", rnd.choice(ALIASES), now - rnd.random() * 7 * 86400, now, rnd.randint(0, 50),
          now + 86400, os.urandom(4000), os.urandom(2000)) for i in range(n)])
    conn.execute("COMMIT")
    conn.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(state: Path, rounds: int) -> dict[str, dict[str, float]]:
    cfg = build_config({"server": {"state_dir": str(state), "log_retention": 0}}, env={})
    server = TestServer(create_app(cfg), host="127.0.0.1")
    await server.start_server()
    out: dict[str, dict[str, float]] = {}
    try:
        async with aiohttp.ClientSession() as s:
            paths = ("/health", "/ui/api/overview", "/ui", *OTHER_PAGES)
            for p in paths:  # warm-up: connections, the read-only connection, SQLite's page cache
                for _ in range(10):
                    async with s.get(server.make_url(p)) as r:
                        assert r.status == 200, (p, r.status)
                        await r.read()
            rtt: dict[str, list[float]] = {p: [] for p in paths}
            srv: dict[str, list[float]] = {p: [] for p in paths}
            for _ in range(rounds):  # interleaved, so drift hits all three alike
                for p in paths:
                    t0 = time.perf_counter()
                    async with s.get(server.make_url(p)) as r:
                        await r.read()
                        timing = r.headers.get("Server-Timing", "")
                    rtt[p].append((time.perf_counter() - t0) * 1000)
                    if timing.startswith("app;dur="):
                        srv[p].append(float(timing.split("=", 1)[1]))
            for p in paths:
                out[p] = {"rtt_p50": pct(rtt[p], 0.5), "rtt_p95": pct(rtt[p], 0.95)}
                if srv[p]:
                    out[p].update(server_p50=pct(srv[p], 0.5), server_p95=pct(srv[p], 0.95),
                                  server_mean=statistics.fmean(srv[p]))
    finally:
        await server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()
    now = time.time()
    rows = request_rows(a.requests, now)
    with tempfile.TemporaryDirectory(prefix="r1proxy-ui-bench-") as tmp:
        base = Path(tmp)
        before = insert_seconds(base / "before.db", rows, upto="m050_requests_hourly")
        state = base / "state"
        state.mkdir()
        after = insert_seconds(state / "r1proxy.db", rows, upto=None)
        fill_cache(state / "r1proxy.db", a.entries, now)
        db = sqlite3.connect(state / "r1proxy.db")
        hourly = db.execute("SELECT COUNT(*) FROM requests_hourly").fetchone()[0]
        daily = db.execute("SELECT COUNT(*) FROM requests_daily").fetchone()[0]
        db.close()
        res = asyncio.run(measure(state, a.rounds))
    health = res["/health"]["rtt_p50"]
    print(f"r1proxy dashboard benchmark: {a.requests:,} logged requests over 30 days "
          f"({hourly:,} requests_hourly rows, {daily:,} requests_daily rows), {a.entries:,} cache entries, "
          f"{a.rounds} rounds")
    print("| what | server p50 | server p95 | round trip p50 | round trip p95 | round trip p50 / /health |")
    print("|---|---|---|---|---|---|")
    for p, label in (("/ui", "overview page `/ui` (HTML)"), ("/ui/api/overview", "overview feed `/ui/api/overview`"),
                     *((o, f"`{o}`") for o in OTHER_PAGES), ("/health", "reference: `/health`")):
        r = res[p]
        sp50 = f"{r['server_p50']:.2f} ms" if "server_p50" in r else "—"
        sp95 = f"{r['server_p95']:.2f} ms" if "server_p95" in r else "—"
        print(f"| {label} | {sp50} | {sp95} | {r['rtt_p50']:.2f} ms | {r['rtt_p95']:.2f} ms | "
              f"{r['rtt_p50'] / health:.2f}× |")
    worst = max(res["/ui"]["server_p95"], res["/ui/api/overview"]["server_p95"])
    print(f"target: overview server time <= 50 ms p95 -> {worst:.2f} ms ({'met' if worst <= 50 else 'NOT met'})")
    print(f"request-log inserts ({a.requests:,} rows, batches of 256): {after:.2f} s with the dashboard's rollups and "
          f"indexes (m050-m053, m060) vs {before:.2f} s without ({after / before:.2f}×, "
          f"{(after - before) / a.requests * 1e6:.1f} µs more per row)")


if __name__ == "__main__":
    main()
