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
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import zstandard

from bench.body import NONCE_PLACEHOLDER, large_body, roo_body
from bench.procs import BenchError, Server, Servers, free_port, request, rss_kib, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "post.lua"
DOC = ROOT / "docs" / "BENCHMARKS.md"
UPSTREAM_DELAY = 0.3
# ~2.6 KB of answer text: what the streamed-hit target is about (perf-anchors: hits of 2.3-3.7 KB)
REASONING_CHARS = 1300
ANSWER_CHARS = 1300
MIB = 1024 * 1024


# -- settings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: float           # seconds per wrk run
    miss_n: int               # streaming misses per rep per side
    miss_reps: int
    large_n: int              # 8 MB hits per side
    fill_n: int               # distinct misses for the RSS-after-load / compression corpus
    starts: int               # starts for the time-to-healthy median
    vs_litellm: bool
    quick: bool

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Settings:
        if a.quick:
            base = cls(rounds=3, duration=1.0, miss_n=10, miss_reps=2, large_n=10, fill_n=1000, starts=5,
                       vs_litellm=a.vs_litellm, quick=True)
        else:
            base = cls(rounds=5, duration=5.0, miss_n=20, miss_reps=2, large_n=20, fill_n=10_000, starts=5,
                       vs_litellm=a.vs_litellm, quick=False)
        rounds = a.rounds if a.rounds is not None else base.rounds
        duration = a.duration if a.duration is not None else base.duration
        if rounds < 1 or duration <= 0:
            raise SystemExit("bench: --rounds must be >= 1 and --duration > 0")
        return cls(rounds=rounds, duration=duration, miss_n=base.miss_n, miss_reps=base.miss_reps,
                   large_n=base.large_n, fill_n=base.fill_n, starts=base.starts, vs_litellm=a.vs_litellm,
                   quick=base.quick)


# -- wrk -----------------------------------------------------------------------------------

@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int       # socket errors (connect, read, write, timeout)
    non2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def ensure_wrk() -> str:
    """Path of wrk; installs it with apt-get when missing and running as root, else exits saying how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing it (apt-get install -y wrk)…", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("bench: wrk is required: install it with `sudo apt-get install -y wrk` "
                     "(Debian/Ubuntu) or build it from https://github.com/wg/wrk, then re-run")


def run_wrk(wrk: str, url: str, body: Path, conns: int, duration: float, *, threads: int | None = None,
            timeout_s: float = 5.0) -> WrkResult:
    threads = threads or (1 if conns == 1 else 2)
    env = dict(os.environ, BENCH_BODY=str(body))
    argv = [wrk, f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", f"--timeout={timeout_s:g}s",
            "-s", str(LUA), url]
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}")
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise BenchError(f"wrk gave no result (exit {out.returncode}): {out.stderr.strip() or out.stdout[-500:]}")
    d = json.loads(line.removeprefix("BENCHJSON "))
    return WrkResult(requests=d["requests"], seconds=d["duration_us"] / 1e6, p50_ms=d["p50"] / 1000,
                     p90_ms=d["p90"] / 1000, p99_ms=d["p99"] / 1000, max_ms=d["max"] / 1000,
                     errors=d["connect"] + d["read"] + d["write"] + d["timeout"], non2xx=d["status"])


# -- results -------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table."""

    measure: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""   # "met", "NOT met", "" (informational) or "aborted"
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds_detail: list[str] = field(default_factory=list)
    compression: list[Row] = field(default_factory=list)
    litellm: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.measure}: {row.value}" + (f" | ref {row.reference}" if row.reference else "")
              + (f" | ratio {row.ratio}" if row.ratio else "") + (f" | {row.verdict}" if row.verdict else "")
              + (f" ({row.note})" if row.note else ""), flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- the proxy -----------------------------------------------------------------------------

def proxy_config(path: Path, port: int, state: Path, upstream_port: int, memory_mb: float,
                 max_disk_mb: float = 2048) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# written by bench/run.py
[server]
host = "127.0.0.1"
port = {port}
state_dir = "{state}"

[upstreams.openrouter]
base_url = "http://127.0.0.1:{upstream_port}/api/v1"
api_key_env = "OPENROUTER_API_KEY"

[cache]
enabled = true
memory_mb = {memory_mb}
max_disk_mb = {max_disk_mb}
""")


def start_proxy(servers: Servers, name: str, upstream_port: int, memory_mb: float) -> tuple[Server, Path]:
    port = free_port()
    state = servers.workdir / f"{name}-state"
    cfg = servers.workdir / f"{name}.toml"
    proxy_config(cfg, port, state, upstream_port, memory_mb)
    argv = [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"]
    return servers.start(name, argv, port, "/health"), state


def start_fake(servers: Servers, name: str, delay: float, reasoning: int, answer: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.fake_upstream_server", "--port", str(port), "--delay", str(delay),
            "--reasoning-chars", str(reasoning), "--answer-chars", str(answer)]
    return servers.start(name, argv, port, "/stats")


def upstream_count(fake: Server) -> int:
    return int(json.loads(request(fake.port, "GET", "/stats").body)["chat"])


@dataclass
class Hit:
    body: bytes
    content_type: str
    tier: str


def warm_hit(server: Server, path: str, body: bytes, fake: Server, want_tier: Callable[[str], bool] | None,
             label: str, header_check: bool = True) -> Hit:
    """Send ``body`` once (a miss), then until it is served from cache; the hit's bytes.

    r1proxy: ``X-Cache: HIT`` (and a tier ``want_tier`` accepts). Without ``header_check``
    (another proxy), a hit is a 200 that did not reach the fake upstream.
    """
    first = request(server.port, "POST", path, body, timeout=60)
    if first.status != 200:
        raise BenchError(f"{label}: warm-up request got HTTP {first.status}: {first.body[:300]!r}")
    last = first
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        before = upstream_count(fake)
        r = request(server.port, "POST", path, body, timeout=60)
        last = r
        if r.status == 200:
            if header_check:
                if r.header("X-Cache") == "HIT" and (want_tier is None or want_tier(r.header("X-Cache-Tier"))):
                    return Hit(r.body, r.header("Content-Type"), r.header("X-Cache-Tier"))
            elif upstream_count(fake) == before:
                return Hit(r.body, r.header("Content-Type"), "")
        time.sleep(0.1)
    raise BenchError(f"{label}: no cache hit after warming (HTTP {last.status}, "
                     f"X-Cache: {last.header('X-Cache') or '(absent)'}, "
                     f"X-Cache-Tier: {last.header('X-Cache-Tier') or '(absent)'})")


# -- 1. hit load ---------------------------------------------------------------------------

@dataclass
class HitTarget:
    key: str          # e.g. "memory"
    label: str        # for the table
    port: int
    path: str
    body_file: Path
    ceiling_path: str
    fake: Server | None = None


@dataclass
class HitSamples:
    c1: list[WrkResult] = field(default_factory=list)
    c32: list[WrkResult] = field(default_factory=list)


def hit_rounds(wrk: str, s: Settings, targets: list[HitTarget], ceiling: Server, fakes: list[Server],
               report: Report) -> dict[str, tuple[HitSamples, HitSamples]]:
    """Per target: (its samples, the ceiling's samples), interleaved ceiling/target per round."""
    out = {t.key: (HitSamples(), HitSamples()) for t in targets}
    before = {f.name: upstream_count(f) for f in fakes}
    for r in range(s.rounds):
        print(f"  round {r + 1}/{s.rounds}", flush=True)
        for t in targets:
            mine, ceil = out[t.key]
            for conns, bucket_t, bucket_c in ((1, mine.c1, ceil.c1), (32, mine.c32, ceil.c32)):
                url_c = f"http://127.0.0.1:{ceiling.port}{t.ceiling_path}"
                url_t = f"http://127.0.0.1:{t.port}{t.path}"
                bucket_c.append(run_wrk(wrk, url_c, t.body_file, conns, s.duration))
                bucket_t.append(run_wrk(wrk, url_t, t.body_file, conns, s.duration))
    grew = {f.name: upstream_count(f) - before[f.name] for f in fakes}
    report.notes.append("Upstream requests during the hit load (0 = every request was a hit): "
                        + ", ".join(f"{k}: {v}" for k, v in grew.items()))
    return out


def hit_rows(report: Report, key: str, label: str, mine: HitSamples, ceil: HitSamples,
             target_c1: Callable[[float, float], tuple[str, bool]] | None,
             target_c32: tuple[str, float] | None) -> None:
    p50 = [x.p50_ms for x in mine.c1]
    p99 = [x.p99_ms for x in mine.c1]
    c_p50 = [x.p50_ms for x in ceil.c1]
    c_p99 = [x.p99_ms for x in ceil.c1]
    r_p50 = [a / b for a, b in zip(p50, c_p50, strict=True) if b > 0]
    r_p99 = [a / b for a, b in zip(p99, c_p99, strict=True) if b > 0]
    rps = [x.rps for x in mine.c32]
    c_rps = [x.rps for x in ceil.c32]
    r_rps = [a / b for a, b in zip(rps, c_rps, strict=True) if b > 0]
    errs = sum(x.errors + x.non2xx for x in mine.c1 + mine.c32)
    c_errs = sum(x.errors + x.non2xx for x in ceil.c1 + ceil.c32)
    err_note = f"{errs} errors/non-2xx" if errs else ""
    if c_errs:
        err_note = (err_note + "; " if err_note else "") + f"ceiling {c_errs} errors"
    tgt, ok = ("", False)
    if target_c1 is not None:
        tgt, ok = target_c1(med(p50), med(r_p50))
    report.add(Row(f"{label}, 1 conn, p50 ms", f"{med(p50):.3f}", f"{med(c_p50):.3f}", f"{med(r_p50):.2f}×",
                   tgt, verdict(ok and not errs) if tgt else "", err_note))
    report.add(Row(f"{label}, 1 conn, p99 ms", f"{med(p99):.3f}", f"{med(c_p99):.3f}", f"{med(r_p99):.2f}×"))
    report.add(Row(f"{label}, 1 conn, req/s", f"{med([x.rps for x in mine.c1]):.0f}",
                   f"{med([x.rps for x in ceil.c1]):.0f}",
                   f"{med([a.rps / b.rps for a, b in zip(mine.c1, ceil.c1, strict=True) if b.rps]):.2f}×"))
    row32 = Row(f"{label}, 32 conn, req/s", f"{med(rps):.0f}", f"{med(c_rps):.0f}", f"{med(r_rps):.2f}×")
    if target_c32 is not None:
        row32.target, row32.verdict = target_c32[0], verdict(med(r_rps) >= target_c32[1] and not errs)
    report.add(row32)
    report.add(Row(f"{label}, 32 conn, p50 / p99 ms", f"{med([x.p50_ms for x in mine.c32]):.2f} / "
                   f"{med([x.p99_ms for x in mine.c32]):.2f}",
                   f"{med([x.p50_ms for x in ceil.c32]):.2f} / {med([x.p99_ms for x in ceil.c32]):.2f}"))
    report.rounds_detail.append(
        f"- {label}: c1 p50 ms per round {', '.join(f'{x:.3f}' for x in p50)} (ceiling "
        f"{', '.join(f'{x:.3f}' for x in c_p50)}); c32 req/s {', '.join(f'{x:.0f}' for x in rps)} "
        f"(ceiling {', '.join(f'{x:.0f}' for x in c_rps)})")


# -- 2. miss overhead ----------------------------------------------------------------------

def _carries_text(payload: bytes) -> bool:
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    for choice in doc.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content"):
            return True
    return False


async def stream_once(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float, str]:
    """(seconds to the first content/reasoning event, seconds to [DONE] or EOF, X-Cache header)."""
    t0 = time.perf_counter()
    ttfb = float("nan")
    async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                     "Authorization": "Bearer bench"}) as resp:
        if resp.status != 200:
            raise BenchError(f"POST {url} -> HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            if ttfb != ttfb and _carries_text(payload):  # still NaN
                ttfb = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return ttfb, total, resp.headers.get("X-Cache", "")


async def miss_probe(s: Settings, proxy_port: int, fake_port: int, salt: str,
                     proxy_path: str = "/v1/chat/completions") -> dict[str, dict[str, list[float]]]:
    """Sequential streaming misses, interleaved per rep: direct (A) then proxy (B)."""
    out: dict[str, dict[str, list[float]]] = {side: {"ttfb": [], "total": []} for side in ("direct", "proxy")}
    caches: list[str] = []
    urls = {"direct": f"http://127.0.0.1:{fake_port}/api/v1/chat/completions",
            "proxy": f"http://127.0.0.1:{proxy_port}{proxy_path}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for side in urls:  # open the connection and warm both paths (not measured)
            await stream_once(session, urls[side], roo_body(stream=True, nonce=f"{salt}-warm-{side}"))
        for rep in range(s.miss_reps):
            for side, url in urls.items():
                for i in range(s.miss_n):
                    body = roo_body(stream=True, nonce=f"{salt}-{rep}-{side}-{i}")
                    ttfb, total, xcache = await stream_once(session, url, body)
                    out[side]["ttfb"].append(ttfb * 1000)
                    out[side]["total"].append(total * 1000)
                    if side == "proxy":
                        caches.append(xcache)
    bad = [c for c in caches if c not in ("MISS", "")]
    if bad:
        raise BenchError(f"miss probe: some proxied requests were not misses: {sorted(set(bad))}")
    return out


def miss_rows(report: Report, m: dict[str, dict[str, list[float]]], s: Settings, label: str = "r1proxy",
              rows: list[Row] | None = None) -> None:
    add = report.add if rows is None else rows.append
    d, p = m["direct"], m["proxy"]
    n = f"{s.miss_reps}×{s.miss_n} per side"
    dt_ttfb = med(p["ttfb"]) - med(d["ttfb"])
    dt_total = med(p["total"]) - med(d["total"])
    t1 = "≤ +1 ms" if label == "r1proxy" else ""
    t2 = "≤ +2 ms" if label == "r1proxy" else ""
    add(Row(f"miss (stream, 300 ms upstream), TTFB p50 ms [{label}]", f"{med(p['ttfb']):.2f}",
            f"{med(d['ttfb']):.2f}", f"{dt_ttfb:+.2f} ms", t1, verdict(dt_ttfb <= 1.0) if t1 else "",
            f"p90 {pct(p['ttfb'], 90):.2f} vs {pct(d['ttfb'], 90):.2f}; {n}"))
    add(Row(f"miss (stream, 300 ms upstream), total p50 ms [{label}]", f"{med(p['total']):.2f}",
            f"{med(d['total']):.2f}", f"{dt_total:+.2f} ms", t2, verdict(dt_total <= 2.0) if t2 else "",
            f"p90 {pct(p['total'], 90):.2f} vs {pct(d['total'], 90):.2f}"))


# -- 3. large context ----------------------------------------------------------------------

async def large_probe(n: int, proxy_port: int, ceiling_port: int, body: bytes,
                      proxy_path: str = "/v1/chat/completions") -> tuple[list[float], list[float]]:
    """n sequential requests each to the proxy and the ceiling, alternating; total ms per request."""
    async def once(session: aiohttp.ClientSession, url: str) -> float:
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                         "Authorization": "Bearer bench"}) as resp:
            data = await resp.read()
            if resp.status != 200 or not data:
                raise BenchError(f"8 MB request to {url}: HTTP {resp.status}")
            if "/large" not in url and resp.headers.get("X-Cache", "HIT") != "HIT":
                raise BenchError(f"8 MB request was not a hit (X-Cache: {resp.headers.get('X-Cache')})")
        return (time.perf_counter() - t0) * 1000

    mine: list[float] = []
    ceil: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await once(session, f"http://127.0.0.1:{ceiling_port}/large")  # connections + page cache warm
        await once(session, f"http://127.0.0.1:{proxy_port}{proxy_path}")
        for _ in range(n):
            ceil.append(await once(session, f"http://127.0.0.1:{ceiling_port}/large"))
            mine.append(await once(session, f"http://127.0.0.1:{proxy_port}{proxy_path}"))
    return mine, ceil


# -- 4. start / RSS / cache filling ---------------------------------------------------------

@dataclass
class Fill:
    done: int
    seconds: float
    errors: int
    ms: list[float]

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


async def fill_probe(port: int, template: bytes, n: int, conns: int, salt: str, budget_s: float) -> Fill:
    """``n`` distinct streaming requests (NONCE_PLACEHOLDER replaced by a counter), ``conns`` at a time.

    Stops early when ``budget_s`` is spent; every response is read to the end.
    """
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    placeholder = NONCE_PLACEHOLDER.encode()
    counter = iter(range(n))
    result = Fill(0, 0.0, 0, [])
    t0 = time.perf_counter()
    deadline = t0 + budget_s

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            body = template.replace(placeholder, f"{salt}{i}".encode(), 1)
            t = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            result.ms.append((time.perf_counter() - t) * 1000)
            result.done += 1
            result.errors += 0 if ok else 1

    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    result.seconds = time.perf_counter() - t0
    return result


def startup_probe(servers: Servers, s: Settings, upstream_port: int) -> tuple[list[float], list[int]]:
    """Seconds from exec to a healthy /health, and idle RSS (KiB) 1 s later, for fresh empty caches."""
    times: list[float] = []
    rss: list[int] = []
    for i in range(s.starts):
        port = free_port()
        state = servers.workdir / f"start{i}-state"
        cfg = servers.workdir / f"start{i}.toml"
        proxy_config(cfg, port, state, upstream_port, 256)
        argv = [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"]
        log = servers.workdir / f"start{i}.log"
        t0 = time.perf_counter()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=servers.env, start_new_session=True)
        server = Server(f"start{i}", port, proc, log, t0)
        servers.running.append(server)
        try:
            times.append(wait_healthy(server, "/health", 30.0))
            time.sleep(1.0)
            rss.append(rss_kib(proc.pid))
        finally:
            servers.stop(server)
    return times, rss


def wait_db_settled(db: Path, expect: int, timeout: float) -> int:
    """Poll ``cache_entries`` until it holds ``expect`` rows or stops growing for 2 s; the count."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = db_count(db)
        if n >= expect:
            return n
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            return n
        time.sleep(0.25)
    return max(last, 0)


def db_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0])
    except sqlite3.Error:
        return 0


# -- 5. compression ------------------------------------------------------------------------

def compression_rows(db: Path, report: Report) -> None:
    if not db.exists():
        report.compression.append(Row("stored entries", "aborted", verdict="aborted",
                                      note=f"no database at {db}"))
        return
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            n, stored, raw = conn.execute("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0), "
                                          "COALESCE(SUM(raw_bytes), 0) FROM cache_entries").fetchone()
            blobs = conn.execute("SELECT body, request FROM cache_entries ORDER BY key").fetchall()
        except sqlite3.Error as e:
            report.compression.append(Row("stored entries", "aborted", verdict="aborted", note=str(e)))
            return
    if not n:
        report.compression.append(Row("stored entries", "0", verdict="aborted",
                                      note="no rows in cache_entries: misses were not stored"))
        return
    report.compression.append(Row("entries; stored / raw bytes (cache_entries sums)", f"{n:,}",
                                  f"{stored:,} / {raw:,}", f"{raw / stored:.2f}× smaller" if stored else "",
                                  note="stored = zstd body + zstd canonical request"))
    d = zstandard.ZstdDecompressor()
    bodies = [d.decompress(b) for b, _ in blobs if b]
    requests = [d.decompress(r) for _, r in blobs if r]
    b_stored = sum(len(b) for b, _ in blobs if b)
    r_stored = sum(len(r) for _, r in blobs if r)
    if bodies:
        raw_b = sum(map(len, bodies))
        report.compression.append(Row("answers (completion JSON): stored / raw bytes", f"{b_stored:,}",
                                      f"{raw_b:,}", f"{raw_b / b_stored:.2f}× smaller",
                                      note=f"mean raw answer {raw_b // len(bodies):,} B"))
    if requests:
        raw_r = sum(map(len, requests))
        report.compression.append(Row("canonical requests: stored / raw bytes", f"{r_stored:,}", f"{raw_r:,}",
                                      f"{raw_r / r_stored:.2f}× smaller"))
    for what, samples in (("answers", bodies), ("requests", requests)):
        row = dictionary_gain(what, samples)
        if row is not None:
            report.compression.append(row)


def dictionary_gain(what: str, samples: list[bytes], dict_size: int = 112_640) -> Row | None:
    """Train on 80% of the samples (shuffled, fixed seed), compare level-3 sizes on the other 20%."""
    if len(samples) < 50:
        return Row(f"zstd dictionary on {what}", "skipped", note=f"only {len(samples)} samples (need 50)")
    rng = random.Random(7)
    order = list(range(len(samples)))
    rng.shuffle(order)
    cut = int(len(order) * 0.8)
    train = [samples[i] for i in order[:cut]]
    held = [samples[i] for i in order[cut:]]
    size = min(dict_size, max(4096, sum(map(len, train)) // 10))
    try:
        t0 = time.perf_counter()
        zdict = zstandard.train_dictionary(size, train)
        train_s = time.perf_counter() - t0
    except zstandard.ZstdError as e:
        return Row(f"zstd dictionary on {what}", "failed", note=str(e))
    plain = zstandard.ZstdCompressor(level=3)
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=zdict)
    raw = sum(map(len, held))
    a = sum(len(plain.compress(x)) for x in held)
    b = sum(len(with_dict.compress(x)) for x in held)
    return Row(f"zstd level 3 on held-out {what}: without / with a {len(zdict.as_bytes()) // 1024} KiB dictionary",
               f"{raw / a:.2f}× / {raw / b:.2f}×", f"{a:,} / {b:,} B", f"{a / b:.2f}× smaller with",
               note=f"trained on {len(train):,}, tested on {len(held):,} ({train_s:.1f} s to train)")


# -- 6. LiteLLM ----------------------------------------------------------------------------

LITELLM_INSTALL = ("pip install litellm==1.110.2 plus its proxy dependencies (the [proxy] extra does not "
                   "resolve on every registry; see perf-anchors 'Surprises'), then put `litellm` on PATH or "
                   "set LITELLM_BIN")


def litellm_bin() -> str | None:
    env = os.environ.get("LITELLM_BIN")
    if env and Path(env).exists():
        return env
    local = Path(sys.executable).parent / "litellm"
    if local.exists():
        return str(local)
    return shutil.which("litellm")


def start_litellm(servers: Servers, binary: str, upstream_port: int) -> Server:
    port = free_port()
    cfg = servers.workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: deepseek/deepseek-r1
    litellm_params:
      model: openai/deepseek/deepseek-r1
      api_base: http://127.0.0.1:{upstream_port}/api/v1
      api_key: sk-or-bench-dummy
litellm_settings:
  cache: true
  cache_params:
    type: local
""")
    env_extra = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": "bench"}
    servers.env.update(env_extra)
    try:
        return servers.start("litellm", [binary, "--config", str(cfg), "--port", str(port), "--host",
                                         "127.0.0.1", "--num_workers", "1"], port,
                             "/health/liveliness", timeout=120.0)
    finally:
        for k in env_extra:
            servers.env.pop(k, None)


# -- environment ---------------------------------------------------------------------------

def machine_info(wrk: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / MIB:.1f} GiB"
    wrk_v = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    wrk_version = (wrk_v.stdout + wrk_v.stderr).splitlines()[0].split(" Copyright")[0] if (
        wrk_v.stdout + wrk_v.stderr) else "unknown"

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, timeout=10).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "r1proxy"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": mem, "kernel": platform.release(),
            "python": platform.python_version(), "aiohttp": version("aiohttp"), "uvloop": version("uvloop"),
            "zstandard": version("zstandard"), "wrk": wrk_version,
            "r1proxy": f"{version('r1proxy')} (git {rev}{', r1proxy/ has uncommitted changes' if dirty else ''})"}


# -- output --------------------------------------------------------------------------------

def table(rows: list[Row], head: tuple[str, ...] = ("measure", "r1proxy", "reference", "ratio", "target",
                                                      "result", "note")) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.measure, r.value, r.reference, r.ratio, r.target, r.verdict, r.note)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells[:len(head)]) + " |")
    return "\n".join(lines)


def write_doc(report: Report, info: dict[str, str], s: Settings, argv: list[str], started: dt.datetime,
              elapsed: float) -> None:
    met = sum(1 for r in report.rows if r.verdict == "met")
    targets = sum(1 for r in report.rows if r.verdict)
    mode = "quick smoke run" if s.quick else "default run"
    text = f"""# r1proxy benchmarks

Generated by `python -m bench.run{' ' + ' '.join(argv) if argv else ''}` ({mode}) on
{started.strftime('%Y-%m-%d %H:%M %Z').strip()}, in {elapsed:.0f} s. Targets met: **{met} of {targets}**.
Re-run it to refresh this file; see bench/README.md for what each row means.

## Machine and versions

- CPU: {info['cpu']}, {info['nproc']} cores (wrk shares them with the server under test); RAM {info['ram']};
  Linux {info['kernel']}
- Python {info['python']}, aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, zstandard {info['zstandard']},
  {info['wrk']}
- r1proxy {info['r1proxy']}

## Method

- All traffic on 127.0.0.1; every server (r1proxy, the ceiling, the fake upstreams) is its own process
  with a temporary state directory.
- Request: a deterministic 20,480-byte Roo-Code-shaped body (bench/body.py: system prompt, task with
  `<environment_details>`, a read_file tool call and its result, 4 tools), `model: deepseek/deepseek-r1`.
- Hits: wrk with bench/post.lua; {s.rounds} rounds; in every round the ceiling and the target run back to
  back (A B A B), at `-t1 -c1` and `-t2 -c32`, {s.duration:g} s each. Ratios are computed per round
  against that round's ceiling, then the median of the rounds is reported (values are medians too).
  The ceiling is a bare aiohttp + uvloop app that reads the body and returns the identical bytes of
  the captured hit (same content type). Each hit row is measured only after a warm-up request and a
  check that the response carries `X-Cache: HIT` (and the expected `X-Cache-Tier`).
- Answers: the fake upstream gives ~{REASONING_CHARS:,} characters of reasoning and ~{ANSWER_CHARS:,} of
  answer (the ~2.6 KB streamed-hit case); 300 ms before the first byte.
- Misses: streaming, a unique body per request, a sequential aiohttp client, {s.miss_reps} reps × {s.miss_n}
  requests per side, direct-to-fake (A) then through r1proxy (B) in each rep. TTFB = first SSE event
  carrying content or reasoning; total = `[DONE]`/EOF.
- 8 MB: a {len(large_body()) / MIB:.1f} MiB Roo body served from cache, {s.large_n} sequential requests
  alternating with the ceiling returning the same bytes for the same body.
- RSS from /proc/PID/status (VmRSS). Start = exec to the first answer of `/health`, fresh state dir
  (median of {s.starts}); idle RSS read 1 s after that.
- Cache filling: {s.fill_n:,} distinct streaming misses (fake upstream with no delay and varied R1-like
  answers of realistic sizes, bench/answers.py) through a fresh r1proxy; its RSS afterwards and its
  `cache_entries` table give the memory and compression rows.

## Results

{table(report.rows)}

### Compression

{table(report.compression, ("measure", "value", "bytes", "ratio", "", "", "note")) if report.compression
 else "(not measured)"}

### LiteLLM

{table(report.litellm, ("measure", "LiteLLM", "reference", "ratio", "", "", "note")) if report.litellm
 else "(not run: pass --vs-litellm)"}

### Per-round values

{chr(10).join(report.rounds_detail) or "(none)"}

### Notes

{chr(10).join('- ' + n for n in report.notes) or "(none)"}
"""
    analysis = Path(__file__).with_name("ANALYSIS.md")
    if analysis.exists():  # the profile-backed explanation of unmet targets, kept by hand
        text += "\n" + analysis.read_text()
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


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
                     lambda p50, r: ("≤ 1.3× and < 0.5 ms", r <= 1.3 and p50 < 0.5), ("≥ 0.8×", 0.8))
        elif t.key == "disk":
            hit_rows(report, t.key, t.label, mine, ceil, lambda p50, r: ("≤ 2×", r <= 2.0), None)
        else:
            hit_rows(report, t.key, t.label, mine, ceil, lambda p50, r: ("total ≤ 1.5 ms", p50 <= 1.5), None)

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

    if s.vs_litellm:
        section("LiteLLM")
        litellm_rows(s, wrk, servers, report, slow, ceiling, files, body, body_stream)
    else:
        report.notes.append("LiteLLM comparison not run (pass --vs-litellm).")


def litellm_rows(s: Settings, wrk: str, servers: Servers, report: Report, slow: Server, ceiling: Server | None,
                 files: dict[str, Path], body: bytes, body_stream: bytes) -> None:
    binary = litellm_bin()
    if binary is None:
        msg = f"LiteLLM skipped: not installed. To include it: {LITELLM_INSTALL}."
        print("  " + msg)
        report.notes.append(msg)
        return
    try:
        ll = start_litellm(servers, binary, slow.port)
    except BenchError as e:
        report.notes.append(f"LiteLLM skipped: it did not start ({e}).")
        print(f"  LiteLLM did not start: {e}")
        return
    path = "/v1/chat/completions"
    hits: dict[str, Hit] = {}
    for key, b in (("memory", body), ("stream", body_stream)):
        try:
            hits[key] = warm_hit(ll, path, b, slow, None, f"LiteLLM {key} hit", header_check=False)
        except BenchError as e:
            report.litellm.append(Row(f"LiteLLM {key} hit", "aborted", note=str(e)))
    routes = []
    for key in hits:
        f = servers.workdir / f"litellm-hit-{key}.bin"
        f.write_bytes(hits[key].body)
        routes += ["--route", f"/{key}={f}:{hits[key].content_type}"]
    if routes:
        cport = free_port()
        ll_ceiling = servers.start("ceiling-litellm", [sys.executable, "-m", "bench.ceiling", "--port", str(cport),
                                                       *routes], cport, "/nothing")
        targets = [HitTarget(k, f"LiteLLM {k} hit", ll.port, path, files["json" if k == "memory" else "stream"],
                             f"/{k}") for k in hits]
        samples = hit_rounds(wrk, s, targets, ll_ceiling, [slow], report)
        sub = Report()
        for t in targets:
            mine, ceil = samples[t.key]
            hit_rows(sub, t.key, t.label, mine, ceil, None, None)
        report.litellm.extend(sub.rows)
        report.rounds_detail.extend(sub.rounds_detail)
    try:
        m = asyncio.run(miss_probe(s, ll.port, slow.port, f"llmiss{time.time_ns()}", path))
        miss_rows(report, m, s, "LiteLLM", report.litellm)
    except (BenchError, aiohttp.ClientError, TimeoutError) as e:
        report.litellm.append(Row("LiteLLM miss overhead", "aborted", note=str(e)))
    report.litellm.append(Row("LiteLLM RSS after the load, MiB", f"{rss_kib(ll.pid) / 1024:.1f}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="r1proxy benchmarks (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smoke check: 3 short rounds, smaller probes (≤ 2 min)")
    p.add_argument("--rounds", type=int, help="interleaved rounds for the hit load (default 5; quick 3)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 1)")
    p.add_argument("--vs-litellm", action="store_true", help="also measure a LiteLLM proxy when installed")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
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
