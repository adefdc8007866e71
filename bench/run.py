"""The r1proxy benchmark: ``python -m bench.run [--quick] [--rounds N] [--duration S] [--vs-litellm]``.

Starts, on 127.0.0.1 and free ports, a fake OpenRouter (300 ms to first byte), a second fake
with no delay and varied answers (cache filling), r1proxy with the memory tier, r1proxy with
``memory_mb = 0`` (disk hits), and the "ceiling" (bare aiohttp + uvloop returning the bytes of a
captured hit). Then measures, every run bounded in time and count:

1. cache hits with ``wrk`` and bench/post.lua (20 KB Roo-shaped body): non-streaming from
   memory, from disk, and streamed (~2.6 KB answer + reasoning); each round runs the ceiling
   and the targets back to back (A B A B), at 1 connection (p50/p99) and 32 (requests/s);
   ratios are taken per round against that round's ceiling, then the median over rounds;
2. miss overhead: streaming, a unique body per request, sequential aiohttp client, time to
   first content/reasoning event and to the end, through r1proxy vs straight to the fake;
3. an 8 MB request served from cache vs the ceiling with the same body (sequential client);
4. RSS idle with an empty cache and time from exec to a healthy /health (median of 5 starts),
   RSS after the load, and RSS after N distinct misses filling the cache;
5. compression of the stored entries (stored vs raw bytes from ``cache_entries``) and what a
   zstd dictionary trained on stored answers gains on held-out answers;
6. ``--vs-litellm``: the hit and miss rows for a LiteLLM proxy when one is installed.

Prints the table and writes docs/BENCHMARKS.md. Every server runs in its own process group
and is killed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from bench.body import NONCE_PLACEHOLDER, large_body, roo_body
from bench.common import ANSWER_CHARS, DOC, REASONING_CHARS, ROOT, UPSTREAM_DELAY, Settings
from bench.compression import compression_rows
from bench.hits import HitTarget, cpu_rows, hit_rounds, hit_rows
from bench.litellm import litellm_rows
from bench.probes import fill_probe, large_probe, miss_probe, miss_rows, startup_probe, wait_db_settled
from bench.procs import BenchError, Server, Servers, free_port, rss_kib
from bench.report import Report, Row, machine_info, med, pct, table, verdict, write_doc
from bench.scale import scale_rows
from bench.targets import Hit, start_fake, start_proxy, upstream_count, warm_hit
from bench.workersbench import workers_rows
from bench.wrk import ensure_wrk

# -- main ----------------------------------------------------------------------------------

@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit so the finally blocks kill the servers."""
    def raise_exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    old = {sig: signal.signal(sig, raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def abort(report: Report, measure: str, why: str) -> None:
    report.add(Row(measure, "aborted", verdict="aborted", note=why))


def measure_all(s: Settings, wrk: str, servers: Servers, report: Report) -> None:
    work = servers.workdir
    body = roo_body(stream=False)
    body_stream = roo_body(stream=True)
    big = large_body()
    files = {"json": work / "body.json", "stream": work / "body-stream.json", "large": work / "body-8mb.json",
             "fill": work / "body-fill.json"}
    files["json"].write_bytes(body)
    files["stream"].write_bytes(body_stream)
    files["large"].write_bytes(big)
    files["fill"].write_bytes(roo_body(stream=True, nonce=NONCE_PLACEHOLDER))

    section("fake upstreams")
    slow = start_fake(servers, "fake-300ms", UPSTREAM_DELAY, REASONING_CHARS, ANSWER_CHARS)
    fast = start_fake(servers, "fake-0ms-varied", 0.0, 0, 0)
    print(f"  300 ms fake on :{slow.port}, no-delay varied fake on :{fast.port}")

    section(f"start to healthy and idle RSS ({s.starts} fresh starts)")
    times, rss = startup_probe(servers, s, slow.port)
    report.add(Row("start → healthy /health, s (median of starts)", f"{med(times):.3f}", target="≤ 0.5 s",
                   verdict=verdict(med(times) <= 0.5), note="each: " + ", ".join(f"{t:.3f}" for t in times)))
    report.add(Row("RSS idle, empty cache, MiB", f"{med(rss) / 1024:.1f}", target="≤ 80 MB",
                   verdict=verdict(med(rss) / 1024 <= 80), note=f"median of {len(rss)} starts"))

    section("r1proxy (memory tier) and r1proxy (memory_mb = 0)")
    proxy_mem, _ = start_proxy(servers, "r1proxy-memory", slow.port, 256)
    proxy_disk, _ = start_proxy(servers, "r1proxy-disk", slow.port, 0)
    path = "/v1/chat/completions"
    hits: dict[str, Hit] = {}
    failures: dict[str, str] = {}
    for key, server, b, want in (("memory", proxy_mem, body, lambda t: t == "memory"),
                                 ("disk", proxy_disk, body, lambda t: t not in ("memory", "")),
                                 ("stream", proxy_mem, body_stream, None),
                                 ("large", proxy_mem, big, None)):
        try:
            hits[key] = warm_hit(server, path, b, slow, want, f"{key} hit")
            print(f"  {key}: HIT verified (tier {hits[key].tier or '?'}, {len(hits[key].body):,} B, "
                  f"{hits[key].content_type})")
        except BenchError as e:
            failures[key] = str(e)
            print(f"  {key}: ABORTED — {e}")

    routes = []
    for key, route in (("memory", "/json"), ("disk", "/disk"), ("stream", "/sse"), ("large", "/large")):
        if key in hits:
            f = work / f"hit-{key}.bin"
            f.write_bytes(hits[key].body)
            routes += ["--route", f"{route}={f}:{hits[key].content_type}"]
    ceiling: Server | None = None
    if routes:
        cport = free_port()
        ceiling = servers.start("ceiling", [sys.executable, "-m", "bench.ceiling", "--port", str(cport), *routes],
                                cport, "/nothing")

    section(f"cache-hit load: {s.rounds} rounds × (ceiling, target) × (c1, c32), {s.duration:g} s per run")
    targets = [HitTarget("memory", "memory hit", proxy_mem.port, path, files["json"], "/json"),
               HitTarget("disk", "disk hit", proxy_disk.port, path, files["json"], "/disk"),
               HitTarget("stream", "streamed hit (2.6 KB + reasoning)", proxy_mem.port, path, files["stream"],
                         "/sse")]
    live = [t for t in targets if t.key in hits]
    samples = hit_rounds(wrk, s, live, ceiling, [slow], report) if live and ceiling else {}
    for t in targets:
        if t.key not in samples:
            abort(report, t.label, failures.get(t.key, "not measured"))
            continue
        mine, ceil = samples[t.key]
        if t.key == "memory":
            hit_rows(report, t.key, t.label, mine, ceil,
                     lambda p50, r: ("≤ 1.3× and < 0.5 ms", r <= 1.3 and p50 < 0.5), ("≥ 0.8×", 0.8),
                     target_p99=2.0)
        elif t.key == "disk":
            hit_rows(report, t.key, t.label, mine, ceil, lambda p50, r: ("≤ 2×", r <= 2.0), None)
        else:
            hit_rows(report, t.key, t.label, mine, ceil, lambda p50, r: ("total ≤ 1.5 ms", p50 <= 1.5), None)

    if ceiling is not None and "memory" in hits:
        section("CPU per memory hit (request log on), 32 connections")
        cpu_rows(wrk, s, report, "memory hit", proxy_mem, path, ceiling, "/json", files["json"], 1.5)

    if s.workers and ceiling is not None and "memory" in hits:
        section(f"server.workers = {s.workers}: memory hits at 32 connections, {s.rounds} rounds")
        try:
            workers_rows(wrk, s, servers, report, slow, ceiling, proxy_mem, body, files["json"])
        except BenchError as e:
            abort(report, f"memory hit, server.workers = {s.workers}", str(e))

    section(f"miss overhead: {s.miss_reps} reps × {s.miss_n} streaming misses per side, sequential")
    try:
        m = asyncio.run(miss_probe(s, proxy_mem.port, slow.port, f"miss{time.time_ns()}"))
        miss_rows(report, m, s)
    except (BenchError, aiohttp.ClientError, TimeoutError) as e:
        abort(report, "miss overhead", str(e))

    section(f"8 MB request hit: {s.large_n} sequential requests per side")
    if "large" in hits and ceiling is not None:
        try:
            mine_l, ceil_l = asyncio.run(large_probe(s.large_n, proxy_mem.port, ceiling.port, big))
            report.add(Row("8 MB request, hit, p50 ms", f"{med(mine_l):.1f}", f"{med(ceil_l):.1f}",
                           f"{med(mine_l) / med(ceil_l):.2f}×", "≤ 15 ms", verdict(med(mine_l) <= 15.0),
                           f"p90 {pct(mine_l, 90):.1f} vs {pct(ceil_l, 90):.1f}; {len(big):,} B body"))
        except (BenchError, aiohttp.ClientError, TimeoutError) as e:
            abort(report, "8 MB request, hit", str(e))
    else:
        abort(report, "8 MB request, hit", failures.get("large", "no ceiling"))

    served = sum(x.requests for key in ("memory", "stream") if key in samples
                 for x in samples[key][0].c1 + samples[key][0].c32)
    report.add(Row("RSS of the memory-tier proxy after the hit load, MiB", f"{rss_kib(proxy_mem.pid) / 1024:.1f}",
                   note=f"after ≥ {served:,} hits + the miss and 8 MB probes"))
    report.add(Row("RSS of the disk-tier proxy after the hit load, MiB", f"{rss_kib(proxy_disk.pid) / 1024:.1f}"))
    servers.stop(proxy_disk)

    section(f"cache filling: {s.fill_n:,} distinct streaming misses (no-delay fake, varied answers)")
    proxy_fill, fill_state = start_proxy(servers, "r1proxy-fill", fast.port, 256)
    before = upstream_count(fast)
    try:
        fill = asyncio.run(fill_probe(proxy_fill.port, files["fill"].read_bytes(), s.fill_n, 8,
                                      f"f{time.time_ns() % 10**9}-", 45.0 if s.quick else 240.0))
        upstream = upstream_count(fast) - before
        time.sleep(1.0)
        report.add(Row(f"RSS after {fill.done:,} distinct misses (cache filling), MiB",
                       f"{rss_kib(proxy_fill.pid) / 1024:.1f}",
                       note=f"{fill.rate:.0f} misses/s at 8 conn, p50 {med(fill.ms):.1f} ms; upstream calls "
                            f"{upstream:,}; {fill.errors} errors; memory_mb = 256"))
        db = fill_state / "r1proxy.db"
        stored = wait_db_settled(db, upstream, 30.0)
        print(f"  {stored:,} rows in cache_entries")
        compression_rows(db, report)
        for r in report.compression:
            print(f"  {r.measure}: {r.value} | {r.reference} | {r.ratio} {r.note}")
    except (BenchError, aiohttp.ClientError, TimeoutError) as e:
        abort(report, "cache filling", str(e))
    servers.stop(proxy_fill)

    if s.scale:
        section(f"scale: {s.scale:,} entries and {s.scale:,} request-log rows")
        try:
            scale_rows(servers, report, slow, s.scale, s.scale)
        except (BenchError, OSError, sqlite3.Error) as e:
            abort(report, "scale", str(e))

    if s.vs_litellm:
        section("LiteLLM")
        litellm_rows(s, wrk, servers, report, slow, ceiling, files, body, body_stream)
    else:
        report.notes.append("LiteLLM comparison not run (pass --vs-litellm).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="r1proxy benchmarks (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smoke check: 3 short rounds, smaller probes (≤ 2 min)")
    p.add_argument("--rounds", type=int, help="interleaved rounds for the hit load (default 5; quick 3)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 1)")
    p.add_argument("--vs-litellm", action="store_true", help="also measure a LiteLLM proxy when installed")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    p.add_argument("--scale", type=int, nargs="?", const=1_000_000, metavar="ENTRIES",
                   help="also the scale run on a state dir of ENTRIES entries and log rows (default 1,000,000; "
                        "needs ~5.5 GB of disk per million, deleted afterwards)")
    p.add_argument("--workers", type=int, nargs="?", const=2, metavar="N",
                   help="also the server.workers = N run (default 2)")
    args_list = sys.argv[1:] if argv is None else argv
    a = p.parse_args(args_list)
    s = Settings.from_args(a)
    wrk = ensure_wrk()
    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    info = machine_info(wrk)
    print(f"r1proxy bench ({'quick' if s.quick else 'default'}): {s.rounds} rounds × {s.duration:g} s; "
          f"{info['nproc']} × {info['cpu']}; python {info['python']}, aiohttp {info['aiohttp']}, "
          f"uvloop {info['uvloop']}, {info['wrk']}; r1proxy {info['r1proxy']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="r1proxy-bench-"))
    env = dict(os.environ, OPENROUTER_API_KEY="sk-or-bench-dummy", PYTHONPATH=str(ROOT))
    env.pop("R1PROXY_CONFIG", None)
    report = Report()
    failed: BaseException | None = None
    with terminate_as_exception(), Servers(workdir, env) as servers:
        try:
            measure_all(s, wrk, servers, report)
        except (BenchError, OSError) as e:
            failed = e
            report.notes.append(f"Run stopped early: {e}")
            print(f"\nbench: stopped early: {e}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    print("\n" + table(report.rows))
    if report.compression:
        print("\n" + table(report.compression, ("measure", "value", "bytes", "ratio", "", "", "note")))
    if report.litellm:
        print("\n" + table(report.litellm, ("measure", "LiteLLM", "reference", "ratio", "", "", "note")))
    for n in report.notes:
        print(f"note: {n}")
    write_doc(report, info, s, args_list, started, elapsed)
    print(f"\nwrote {DOC.relative_to(ROOT)} ({elapsed:.0f} s)")
    if a.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
