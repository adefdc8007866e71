"""The shared (Redis) tier, measured: ``python -m bench.team [--quick] [--stop-s 20]``.

Starts, on 127.0.0.1 and free ports, a private ``redis-server`` (no persistence), the bench fake
upstream (300 ms to the first byte), the ceiling (bare aiohttp returning a captured hit's bytes) and
two ``r1proxy serve`` processes A and B sharing the Redis. Then measures:

1. hits from the Redis tier: distinct requests answered by A (so they are in Redis), then asked once
   of B (each a Redis hit, ``X-Cache-Tier: redis``, promoted), then again of B (memory hits); each
   round interleaves B's Redis hits, B's memory hits and the ceiling on one keep-alive connection;
   latency ratios per round against that round's ceiling, median over rounds;
2. coalescing across processes: 10 identical concurrent streams on each of A and B, upstream calls;
3. the SIGSTOP run: 20 concurrent streaming clients (distinct requests, so every one is a miss that
   looks Redis up, coordinates through it and writes to it) before, during and after ``SIGSTOP`` of
   the redis-server: failed requests, p99 per phase, and how long after ``SIGCONT`` the breaker
   closed again (``/health`` no longer degraded);
4. compression of realistic answers and Roo requests with and without a zstd dictionary trained on
   other (held-out) entries, as ``r1proxy cache train-dict`` trains it.

Prints the tables and writes the "Shared tier" section of docs/BENCHMARKS.md (between markers; a
re-run of ``bench.run`` keeps the sections it does not write).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.answers import r1_answer
from bench.body import roo_body
from bench.common import DOC
from bench.procs import BenchError, Server, Servers, free_port, request
from bench.targets import start_fake, upstream_count

START, END = "<!-- team:start -->", "<!-- team:end -->"


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise BenchError("no redis-server (apt-get install redis-server)")
    port = free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.02)
    raise BenchError("redis-server did not start")


def start_proxy(servers: Servers, name: str, upstream: int, redis_port: int, prefix: str) -> Server:
    port = free_port()
    state = servers.workdir / f"{name}-state"
    state.mkdir()
    cfg = servers.workdir / f"{name}.toml"
    cfg.write_text(f"""[server]
port = {port}
state_dir = "{state}"
log_requests = false
[upstreams.openrouter]
base_url = "http://127.0.0.1:{upstream}/api/v1"
[cache.redis]
url = "redis://127.0.0.1:{redis_port}/0"
prefix = "{prefix}"
""")
    return servers.start(name, [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"], port, "/health")


def body(task: str, stream: bool = False) -> bytes:
    return roo_body(target_bytes=20_480, task=task, stream=stream)


class KeepAlive:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, data: bytes) -> tuple[float, int, dict[str, str], bytes]:
        t0 = time.perf_counter()
        self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                            "Authorization": "Bearer bench"})
        r = self.conn.getresponse()
        out = r.read()
        return time.perf_counter() - t0, r.status, dict(r.getheaders()), out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def hits(a: Server, b: Server, ceiling_port: int, fake: Server, rounds: int, per_round: int) -> dict[str, Any]:
    tasks = [f"Team hit {r}-{i}: add a --verbose flag" for r in range(rounds) for i in range(per_round)]
    for t in tasks:  # A answers everything once: every answer lands in Redis (write-behind)
        if request(a.port, "POST", "/chat/completions", body(t), timeout=60).status != 200:
            raise BenchError("A could not answer a warm-up request")
    calls = upstream_count(fake)
    time.sleep(1.0)  # let A's write-behind queue drain
    bconn, cconn = KeepAlive(b.port), KeepAlive(ceiling_port)
    per_round_ratios: dict[str, list[float]] = {"redis": [], "memory": []}
    lat: dict[str, list[float]] = {"redis": [], "memory": [], "ceiling": []}
    for r in range(rounds):
        got: dict[str, list[float]] = {"redis": [], "memory": [], "ceiling": []}
        for i in range(per_round):
            t = body(tasks[r * per_round + i])
            dt, status, h, _ = bconn.post("/chat/completions", t)
            if status != 200 or h.get("X-Cache-Tier") != "redis":
                raise BenchError(f"B: expected a Redis hit, got {status} {h.get('X-Cache')} {h.get('X-Cache-Tier')}")
            got["redis"].append(dt)
            got["ceiling"].append(cconn.post("/json", t)[0])
            dt, status, h, _ = bconn.post("/chat/completions", t)
            if h.get("X-Cache-Tier") != "memory":
                raise BenchError("B: the Redis hit was not promoted to memory")
            got["memory"].append(dt)
        ceiling = statistics.median(got["ceiling"])
        for k in ("redis", "memory"):
            per_round_ratios[k].append(statistics.median(got[k]) / ceiling)
        for k, v in got.items():
            lat[k] += v
    if upstream_count(fake) != calls:
        raise BenchError("a hit reached the upstream")
    return {"lat": lat, "ratio": {k: statistics.median(v) for k, v in per_round_ratios.items()}}


async def coalesce(a: Server, b: Server, fake: Server) -> dict[str, Any]:
    before = upstream_count(fake)
    data = body("Team coalescing: one question, twenty clients", stream=True)
    async with aiohttp.ClientSession() as s:
        async def one(port: int) -> str:
            async with s.post(f"http://127.0.0.1:{port}/chat/completions", data=data,
                              headers={"Content-Type": "application/json", "Authorization": "Bearer bench"}) as r:
                whole = (await r.read()).rstrip().endswith(b"data: [DONE]")
                return f"{r.status} {r.headers.get('X-Cache')} {whole}"
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(one(p.port) for p in (a, b) for _ in range(10)))
        took = time.perf_counter() - t0
    return {"upstream_calls": upstream_count(fake) - before, "clients": len(outs),
            "complete": sum(o.endswith("True") and o.startswith("200") for o in outs),
            "labels": sorted(o.split()[1] for o in outs), "seconds": took}


async def sigstop(a: Server, redis: subprocess.Popen[bytes], before_s: float, stop_s: float,
                  after_s: float) -> dict[str, Any]:
    phases: dict[str, list[tuple[bool, float]]] = {"warm-up": [], "before": [], "stopped": [], "after": []}
    phase = "warm-up"
    stop = False
    n = 0

    async def client(s: aiohttp.ClientSession, w: int) -> None:
        nonlocal n
        while not stop:
            n += 1
            data = body(f"SIGSTOP run {w}-{n}", stream=True)
            mine = phase
            t0 = time.perf_counter()
            ok = False
            try:
                async with s.post(f"http://127.0.0.1:{a.port}/chat/completions", data=data,
                                  headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
                    out = await r.read()
                    ok = r.status == 200 and out.rstrip().endswith(b"data: [DONE]") and b'"error"' not in out
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            phases[mine].append((ok, time.perf_counter() - t0))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        workers = [asyncio.ensure_future(client(s, w)) for w in range(20)]
        await asyncio.sleep(2.0)  # connections and first calls: not counted
        phase = "before"
        await asyncio.sleep(before_s)
        phase = "stopped"
        os.kill(redis.pid, signal.SIGSTOP)
        await asyncio.sleep(stop_s)
        os.kill(redis.pid, signal.SIGCONT)
        t_cont = time.perf_counter()
        phase = "after"
        recovered = None
        deadline = t_cont + max(after_s, 90.0)
        while time.perf_counter() < deadline:
            async with s.get(f"http://127.0.0.1:{a.port}/health") as r:
                if not (await r.json()).get("degraded"):
                    recovered = time.perf_counter() - t_cont
                    break
            await asyncio.sleep(0.25)
        await asyncio.sleep(max(0.0, after_s - (time.perf_counter() - t_cont)))
        stop = True
        await asyncio.gather(*workers)
    out: dict[str, Any] = {"recovered_s": recovered}
    phases.pop("warm-up")
    for k, v in phases.items():
        lat = [t for ok, t in v if ok]
        out[k] = {"requests": len(v), "failed": sum(1 for ok, _ in v if not ok),
                  "p50_ms": 1000 * pct(lat, 50) if lat else None, "p99_ms": 1000 * pct(lat, 99) if lat else None}
    return out


def compression(n: int) -> dict[str, dict[str, int]]:
    import zstandard

    from r1proxy.cache.zdict import Compression, measure

    def sample(i: int) -> tuple[bytes, bytes]:
        reasoning, content = r1_answer(f"team-{i}")
        doc = {"id": f"gen-{i}", "object": "chat.completion", "model": "deepseek/deepseek-r1",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}],
               "usage": {"prompt_tokens": 5000 + i, "completion_tokens": 700, "total_tokens": 5700 + i}}
        return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(),
                roo_body(target_bytes=20_480, task=f"Task {i}: {content[:60]}"))

    train = [sample(i) for i in range(n)]
    held = [sample(n + i) for i in range(n)]
    bd = zstandard.train_dictionary(112_640, [t[0] for t in train])
    rd = zstandard.train_dictionary(112_640, [t[1] for t in train])
    comp = Compression()
    comp.add(bd.dict_id(), bd.as_bytes(), rd.as_bytes())
    return measure(comp, bd.dict_id(), [h[0] for h in held], [h[1] for h in held])


def render(h: dict[str, Any], c: dict[str, Any], st: dict[str, Any], z: dict[str, dict[str, int]],
           args: argparse.Namespace, started: str) -> str:
    ms = {k: 1000 * statistics.median(v) for k, v in h["lat"].items()}
    p99 = {k: 1000 * pct(v, 99) for k, v in h["lat"].items()}
    base = st["before"]["p99_ms"] or 0.0
    stopped = st["stopped"]["p99_ms"] or 0.0
    rows = [
        "| measure | value | reference | ratio |", "|---|---|---|---|",
        f"| hit from the Redis tier (B), p50 / p99 | {ms['redis']:.2f} / {p99['redis']:.2f} ms | ceiling "
        f"{ms['ceiling']:.2f} / {p99['ceiling']:.2f} ms | {h['ratio']['redis']:.2f}× (median of per-round ratios) |",
        f"| the same entry again, from memory (promoted), p50 / p99 | {ms['memory']:.2f} / {p99['memory']:.2f} ms | "
        f"ceiling | {h['ratio']['memory']:.2f}× |",
        f"| 2 processes × 10 identical streams | {c['upstream_calls']} upstream call(s), {c['complete']}/"
        f"{c['clients']} complete answers | {c['seconds']:.2f} s for all | labels: "
        f"{c['labels'].count('MISS')} MISS, {c['labels'].count('COALESCED')} COALESCED |",
    ]
    for k in ("before", "stopped", "after"):
        v = st[k]
        rows.append(f"| SIGSTOP run, {k}: 20 streaming clients | {v['requests']} requests, {v['failed']} failed | "
                    f"p50 {v['p50_ms'] or 0:.0f} ms, p99 {v['p99_ms'] or 0:.0f} ms | |")
    rows.append(f"| p99 added while Redis was stopped | {stopped - base:+.0f} ms | target ≤ +100 ms | |")
    rec = st["recovered_s"]
    recovered = f"{rec:.1f} s" if rec is not None else "not seen"
    rows.append(f"| back to shared operation after SIGCONT | {recovered} | "
                f"breaker_reset 30 s | |")
    for name, m in z.items():
        rows.append(f"| {name}: {m['n']} held-out, raw {m['raw']:,} B | dictionary {m['dict']:,} B | plain zstd "
                    f"{m['plain']:,} B | {m['raw'] / m['dict']:.1f}× vs {m['raw'] / m['plain']:.1f}× |")
    short = "" if args.stop_s >= 60 else f"; this run stopped Redis for {args.stop_s:g} s to keep it short"
    return f"""{START}
## Shared tier: Redis (`python -m bench.team`, {started})

Generated by `python -m bench.team{' --quick' if args.quick else ''} --stop-s {args.stop_s:g}`: a private
redis-server ({redis_version()}, no persistence), the bench fake upstream (300 ms to the first byte), the
ceiling, and two `r1proxy serve` processes sharing the Redis with the default `[cache.redis]` settings
(timeout 100 ms, breaker after 5 failures, probe after 30 s). All on 127.0.0.1 of this machine, which other
sessions load too: absolute times are noisy, ratios are per round against the same round's ceiling.
Hits: {args.rounds} rounds × {args.per_round} distinct 20 KB Roo-shaped JSON requests, one keep-alive
connection each. SIGSTOP run: 20 concurrent streaming clients, each request distinct (a miss that looks
Redis up, coordinates through it and writes to it); {args.before_s:g} s before, {args.stop_s:g} s with
redis-server stopped, then after SIGCONT until /health is no longer degraded (at least {args.after_s:g} s;
the first 2 s of load are a warm-up, not counted). Compression: R1-like answers (bench/answers.py) and
20 KB Roo requests, a dictionary trained on {args.dict_n} entries, measured on {args.dict_n} others.

{chr(10).join(rows)}

A Redis hit costs a network round trip and a decompression that a memory hit does not: it is the
tier for the second process, not the first (the first request promotes the entry, later ones are
memory hits). The SIGSTOP target (issue #13) is 60 s under 20 Roo streams{short}. "p99 added" compares
the stopped phase with the phase before it: with Redis up, every miss also coordinates through it
(a lookup, the coalescing lock, the leader's frames published to its stream, write-behind), on the
same loaded cores as redis-server, the proxies and the fake upstream; with Redis stopped the breaker
skips all of that, so the stopped phase can be faster than the shared one.
{END}
"""


def redis_version() -> str:
    try:
        out = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"], capture_output=True,
                             text=True, timeout=10).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown version"


def write(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# r1proxy benchmarks\n"
    if START in text and END in text:
        text = text[:text.index(START)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.team", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds, a short stop")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=40)
    p.add_argument("--before-s", type=float, default=10.0)
    p.add_argument("--stop-s", type=float, default=60.0)
    p.add_argument("--after-s", type=float, default=10.0)
    p.add_argument("--dict-n", type=int, default=300)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round, args.before_s, args.stop_s, args.after_s, args.dict_n = 2, 10, 3, 5, 3, 60
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="r1proxy-team-bench-"))
    redis = None
    try:
        redis, rport = start_redis(workdir)
        env = {**os.environ, "OPENROUTER_API_KEY": "sk-or-v1-bench"}
        env.pop("REDIS_PASSWORD", None)
        with Servers(workdir, env) as servers:
            fake = start_fake(servers, "fake", 0.3, 1500, 1100)
            a = start_proxy(servers, "a", fake.port, rport, "bench:")
            b = start_proxy(servers, "b", fake.port, rport, "bench:")
            sample = request(a.port, "POST", "/chat/completions", body("ceiling sample"), timeout=60)
            (workdir / "hit.json").write_bytes(sample.body)
            cport = free_port()
            servers.start("ceiling", [sys.executable, "-m", "bench.ceiling", "--port", str(cport), "--route",
                                      f"/json={workdir / 'hit.json'}:application/json"], cport, "/json", method="POST")
            print("hits …", flush=True)
            h = hits(a, b, cport, fake, args.rounds, args.per_round)
            print("coalescing …", flush=True)
            c = asyncio.run(coalesce(a, b, fake))
            print("compression …", flush=True)
            z = compression(args.dict_n)
            print(f"SIGSTOP run ({args.before_s:g} + {args.stop_s:g} + {args.after_s:g} s) …", flush=True)
            st = asyncio.run(sigstop(a, redis, args.before_s, args.stop_s, args.after_s))
        section = render(h, c, st, z, args, started)
        print(section)
        if not args.no_write:
            write(section)
        return 0
    except BenchError as e:
        print(f"bench.team: {e}", file=sys.stderr)
        return 1
    finally:
        if redis is not None and redis.poll() is None:
            os.kill(redis.pid, signal.SIGCONT)
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
