"""``--scale``: r1proxy on a state dir of 1,000,000 entries and 1,000,000 request-log rows.

Builds the state dir with bench/scale_build.py (the store's own encoder and statements, realistic
sizes), then measures, each bounded in time: start → healthy (clean, and after a SIGKILL, when the
integrity check runs in the background), ``/stats`` and ``/metrics``, ``r1proxy stats`` with the
server down (in-process, and the whole command), the documented ``v_daily`` query, a disk hit
against the same on an empty state dir (A B A B), ``cache purge --older-than 3d`` while a client
keeps reading disk hits (their worst latency during the purge), and eviction after the cap is
lowered (time to the first deleted row, time to the target, RSS). Deletes the state dir at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.body import roo_body
from bench.procs import BenchError, Server, Servers, free_port, request, rss_kib
from bench.report import Report, Row, med, pct, verdict
from bench.scale_build import build
from bench.targets import proxy_config
from r1proxy.cache.sqlite import PURGE_BATCH

BIG_CAP_MB = 1_000_000  # no eviction while measuring the rest
MIB = 1024 * 1024


def _start(servers: Servers, name: str, state: Path, fake_port: int, *, memory_mb: float = 0,
           max_disk_mb: float = BIG_CAP_MB) -> Server:
    port = free_port()
    cfg = servers.workdir / f"{name}.toml"
    proxy_config(cfg, port, state, fake_port, memory_mb, max_disk_mb)
    return servers.start(name, [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"], port, "/health")


def _ms(port: int, path: str, n: int = 5) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = request(port, "GET", path)
        if r.status != 200:
            raise BenchError(f"GET {path}: HTTP {r.status}")
        out.append((time.perf_counter() - t) * 1000)
    return out


def _hits(port: int, body: bytes, n: int) -> list[float]:
    """n sequential disk hits on one keep-alive connection; ms each."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Content-Type": "application/json", "Authorization": "Bearer bench"})
            r = conn.getresponse()
            r.read()
            if r.status != 200 or r.getheader("X-Cache") != "HIT":
                raise BenchError(f"scale disk hit: HTTP {r.status}, X-Cache {r.getheader('X-Cache')}")
            out.append((time.perf_counter() - t) * 1000)
    finally:
        conn.close()
    return out


def _totals(db: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT entries, stored_bytes FROM cache_totals").fetchone()
    return int(row[0]), int(row[1])


def scale_rows(servers: Servers, report: Report, fake: Server, entries: int, log_rows: int) -> None:
    work = servers.workdir
    state = work / "scale-state"
    db = state / "r1proxy.db"
    print(f"  building {entries:,} entries + {log_rows:,} log rows …", flush=True)
    took = build(state, entries, log_rows)
    size = db.stat().st_size
    report.notes.append(f"Scale state dir: {entries:,} entries, {log_rows:,} request-log rows, "
                        f"{size / 1e9:.2f} GB, built in {took:.0f} s through the store's encoder and statements.")
    label = f"{entries // 1000:,}k" if entries < 1_000_000 else f"{entries / 1e6:g}M"
    try:
        _measure(servers, report, fake, state, db, label)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _measure(servers: Servers, report: Report, fake: Server, state: Path, db: Path, label: str) -> None:
    # first start applies any migrations the builder did not (none when built by this version)
    s = _start(servers, "scale-warm", state, fake.port)
    servers.stop(s)
    times = []
    for i in range(3):
        s = _start(servers, f"scale-start{i}", state, fake.port)
        times.append(time.perf_counter() - s.started)
        servers.stop(s)
    report.add(Row(f"[{label}] start → healthy, s", f"{med(times):.3f}", target="≤ 0.5 s",
                   verdict=verdict(med(times) <= 0.5), note="each: " + ", ".join(f"{t:.3f}" for t in times)))
    s = _start(servers, "scale-kill", state, fake.port)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    servers.running.remove(s)
    s = _start(servers, "scale-unclean", state, fake.port)
    unclean = time.perf_counter() - s.started
    report.add(Row(f"[{label}] start → healthy after a SIGKILL, s", f"{unclean:.3f}", target="≤ 0.5 s",
                   verdict=verdict(unclean <= 0.5), note="quick_check runs in the background"))

    st, me = _ms(s.port, "/stats"), _ms(s.port, "/metrics")
    report.add(Row(f"[{label}] /stats, ms", f"{med(st):.1f}", target="≤ 20 ms", verdict=verdict(med(st) <= 20),
                   note=f"max {max(st):.1f}"))
    report.add(Row(f"[{label}] /metrics, ms", f"{med(me):.1f}", target="≤ 20 ms", verdict=verdict(med(me) <= 20),
                   note=f"max {max(me):.1f}"))
    for path, what in (("/ui/api/overview", "dashboard overview data"), ("/ui", "dashboard overview page"),
                       ("/ui/cache", "dashboard cache page")):
        ui = _ms(s.port, path)
        report.add(Row(f"[{label}] {what} ({path}), ms", f"{med(ui):.1f}", target="≤ 20 ms",
                       verdict=verdict(med(ui) <= 20), note=f"max {max(ui):.1f}"))
    servers.stop(s)

    cfg = servers.workdir / "scale-start0.toml"  # a config for this state dir (server down now)
    stats_ms = _stats_inprocess(cfg)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "r1proxy", "--config", str(cfg), "stats", "--json"], env=servers.env,
                   capture_output=True, timeout=120, check=False)
    cli_s = time.perf_counter() - t
    report.add(Row(f"[{label}] r1proxy stats (server down), ms", f"{med(stats_ms):.1f}", target="≤ 20 ms",
                   verdict=verdict(med(stats_ms) <= 20),
                   note=f"in-process gather_stats, median of {len(stats_ms)}; the whole command {cli_s:.2f} s"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        vd = []
        for _ in range(3):
            t = time.perf_counter()
            conn.execute("SELECT day, requests, hit_rate, tokens_saved, usd_saved, usd_spent FROM v_daily").fetchall()
            vd.append((time.perf_counter() - t) * 1000)
    report.add(Row(f"[{label}] v_daily query, ms", f"{med(vd):.1f}", target="≤ 20 ms", verdict=verdict(med(vd) <= 20),
                   note="cost engineer's aggregate table (#14)"))

    _disk_hit_and_purge(servers, report, fake, state, db, label)
    _eviction(servers, report, fake, state, db, label)


def _stats_inprocess(cfg: Path) -> list[float]:
    from r1proxy.config import load_config
    from r1proxy.ops import gather_stats

    config = load_config(str(cfg))
    out = []
    for _ in range(3):
        t = time.perf_counter()
        asyncio.run(gather_stats(config))
        out.append((time.perf_counter() - t) * 1000)
    return out


def _disk_hit_and_purge(servers: Servers, report: Report, fake: Server, state: Path, db: Path, label: str) -> None:
    body = roo_body(nonce="scale-disk-hit")
    small = servers.workdir / "scale-small-state"
    big_s = _start(servers, "scale-disk", state, fake.port)
    small_s = _start(servers, "scale-disk-small", small, fake.port)
    for s in (big_s, small_s):
        request(s.port, "POST", "/v1/chat/completions", body, timeout=60)  # the miss that stores it
        _hits(s.port, body, 50)
    ratios, big_ms, small_ms = [], [], []
    for _ in range(3):
        a = _hits(small_s.port, body, 300)
        b = _hits(big_s.port, body, 300)
        small_ms.append(med(a))
        big_ms.append(med(b))
        ratios.append(med(b) / med(a))
    report.add(Row(f"[{label}] disk hit p50 ms vs an empty state dir", f"{med(big_ms):.3f}", f"{med(small_ms):.3f}",
                   f"{med(ratios):.2f}×", "unchanged (≤ 1.2×)", verdict(med(ratios) <= 1.2),
                   "sequential client, 3 × 300 each, A B A B"))
    servers.stop(small_s)

    # purge while a client keeps reading disk hits
    before = _hits(big_s.port, body, 300)
    during: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            during.extend(_hits(big_s.port, body, 20))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    cfg = servers.workdir / "scale-disk.toml"
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "r1proxy", "--config", str(cfg), "cache", "purge", "--older-than",
                          "3d"], env=servers.env, capture_output=True, text=True, timeout=600, check=False)
    purge_s = time.perf_counter() - t
    stop.set()
    th.join(30)
    purged = out.stdout.strip().split(" ")[1] if out.stdout.startswith("purged") else out.stderr.strip()[-200:]
    report.add(Row(f"[{label}] cache purge --older-than 3d, s", f"{purge_s:.1f}", target="≤ 5 s",
                   verdict=verdict(purge_s <= 5.0 and out.returncode == 0),
                   note=f"{purged} rows, batches of ≤ {PURGE_BATCH:,}; the whole command (incl. Python start)"))
    if during:
        report.add(Row(f"[{label}] disk hits during the purge: p50 / p99 / max ms",
                       f"{med(during):.2f} / {pct(during, 99):.1f} / {max(during):.1f}",
                       f"{med(before):.2f} / {pct(before, 99):.1f} / {max(before):.1f}",
                       target="never stall (max ≤ 100 ms)", verdict=verdict(max(during) <= 100),
                       note=f"{len(during):,} hits during, reference = before the purge"))
    servers.stop(big_s)


def _eviction(servers: Servers, report: Report, fake: Server, state: Path, db: Path, label: str) -> None:
    entries0, stored0 = _totals(db)
    cap_mb = max(1, int(stored0 * 0.5 / MIB))
    target = cap_mb * MIB * 0.9
    s = _start(servers, "scale-evict", state, fake.port, max_disk_mb=cap_mb)
    t0 = s.started
    first = reached = None
    rss = [rss_kib(s.pid)]
    deadline = time.perf_counter() + 90
    while time.perf_counter() < deadline:
        n, stored = _totals(db)
        now = time.perf_counter()
        if first is None and n < entries0:
            first = now - t0
        if stored <= target:
            reached = now - t0
            break
        rss.append(rss_kib(s.pid))
        time.sleep(0.25)
    n, stored = _totals(db)
    rate = (entries0 - n) / ((reached or (time.perf_counter() - t0)) - (first or 0) or 1)
    report.add(Row(f"[{label}] eviction: first row deleted after exec, s",
                   "never" if first is None else f"{first:.2f}", target="within seconds (≤ 5 s)",
                   verdict=verdict(first is not None and first <= 5.0),
                   note=f"cap lowered to {cap_mb:,} MB (half of {stored0 / MIB:,.0f} MB)"))
    report.add(Row(f"[{label}] eviction: down to 90% of the cap, s",
                   f"{reached:.1f}" if reached else f"not within 90 s ({stored / MIB:,.0f} MB left)",
                   note=f"{entries0 - n:,} rows deleted, {rate:,.0f} rows/s, batches of ≤ 500"))
    report.add(Row(f"[{label}] eviction: RSS start / max, MiB", f"{rss[0] / 1024:.1f} / {max(rss) / 1024:.1f}",
                   target="flat", verdict=verdict(max(rss) - rss[0] <= 32 * 1024),
                   note="sampled every 0.25 s during the eviction; flat = grows by ≤ 32 MiB"))
    servers.stop(s)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale [--entries N]``: the scale rows alone (printed, no docs written)."""
    import argparse
    import os
    import tempfile

    from bench.common import ROOT
    from bench.report import table
    from bench.targets import start_fake

    p = argparse.ArgumentParser(prog="python -m bench.scale")
    p.add_argument("--entries", type=int, default=1_000_000)
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="r1proxy-scale-", dir=os.environ.get("BENCH_TMP")))
    env = dict(os.environ, OPENROUTER_API_KEY="sk-or-bench-dummy", PYTHONPATH=str(ROOT))
    report = Report()
    try:
        with Servers(workdir, env) as servers:
            fake = start_fake(servers, "fake-scale", 0.0, 0, 0)
            scale_rows(servers, report, fake, a.entries, a.entries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + table(report.rows))
    for n in report.notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
