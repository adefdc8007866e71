"""2-4. Miss overhead, the 8 MB hit, start to healthy, and filling the cache with misses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.body import NONCE_PLACEHOLDER, roo_body
from bench.common import Settings
from bench.procs import BenchError, Server, Servers, free_port, rss_kib, wait_healthy
from bench.report import Report, Row, med, pct, verdict
from bench.targets import proxy_config

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
    t2 = "≤ +1.5 ms" if label == "r1proxy" else ""
    add(Row(f"miss (stream, 300 ms upstream), TTFB p50 ms [{label}]", f"{med(p['ttfb']):.2f}",
            f"{med(d['ttfb']):.2f}", f"{dt_ttfb:+.2f} ms", t1, verdict(dt_ttfb <= 1.0) if t1 else "",
            f"p90 {pct(p['ttfb'], 90):.2f} vs {pct(d['ttfb'], 90):.2f}; {n}"))
    add(Row(f"miss (stream, 300 ms upstream), total p50 ms [{label}]", f"{med(p['total']):.2f}",
            f"{med(d['total']):.2f}", f"{dt_total:+.2f} ms", t2, verdict(dt_total <= 1.5) if t2 else "",
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
