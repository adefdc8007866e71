"""Disk hits (``memory_mb = 0``), A/B: other checkouts against this one, beside the bare ceiling.

    python -m bench.diskab --against /tmp/main-checkout [--against /tmp/other] [--rounds 4] [--duration 3]
        [--log off] [--memory]

Starts one 300 ms fake upstream and a disk-tier proxy from each checkout (A, C, D… for the others, B
for this one; ``python -m r1proxy`` run in that checkout, same interpreter and packages), with
``--memory`` also a memory-tier proxy of this checkout (M), warms one verified hit on each (the
benchmark's 20 KB Roo body, ~2.6 KB answer + reasoning) and the ceiling (bench/ceiling.py) with that
hit's bytes. Each round runs, in a rotated order, ``wrk -t1 -c1`` (p50) and ``wrk -t2 -c32``
(requests/s, and CPU per request: utime+stime from /proc ÷ requests, of the whole server process and
of its event-loop thread) on the ceiling and every proxy. Prints per-round figures and medians;
everything started is killed at the end (process groups).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.body import roo_body
from bench.common import ANSWER_CHARS, REASONING_CHARS, UPSTREAM_DELAY
from bench.hits import cpu_seconds
from bench.procs import Server, Servers, free_port
from bench.targets import start_fake, warm_hit
from bench.wrk import ensure_wrk, run_wrk

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v1/chat/completions"


def loop_cpu_seconds(pid: int) -> float:
    """utime + stime of the process's main thread (the event loop), in seconds."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_disk_proxy(servers: Servers, name: str, checkout: Path, upstream_port: int, log: bool,
                     memory_mb: float = 0) -> Server:
    port = free_port()
    state = servers.workdir / f"{name}-state"
    state.mkdir()
    cfg = servers.workdir / f"{name}.toml"
    cfg.write_text(f"""[server]
host = "127.0.0.1"
port = {port}
state_dir = "{state}"
log_requests = {"true" if log else "false"}

[upstreams.openrouter]
base_url = "http://127.0.0.1:{upstream_port}/api/v1"
api_key_env = "OPENROUTER_API_KEY"

[cache]
enabled = true
memory_mb = {memory_mb:g}
max_disk_mb = 2048
""")
    argv = ["sh", "-c", f'cd "{checkout}" && exec "{sys.executable}" -m r1proxy --config "{cfg}" serve']
    return servers.start(name, argv, port, "/health")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", type=Path, action="append", required=True,
                   help="another checkout (A, then C, D…; repeatable); this one is B")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--log", choices=("on", "off"), default="on")
    p.add_argument("--memory", action="store_true", help="also a memory-tier proxy of this checkout (M)")
    a = p.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="r1-diskab-") as tmp, Servers(Path(tmp)) as servers:
        work = Path(tmp)
        body_file = work / "body.json"
        body = roo_body(stream=False)
        body_file.write_bytes(body)
        fake = start_fake(servers, "fake", UPSTREAM_DELAY, REASONING_CHARS, ANSWER_CHARS)
        names = ["A", *"CDEFG"[:len(a.against) - 1]]
        checkouts = {**dict(zip(names, [c.resolve() for c in a.against], strict=True)), "B": ROOT}
        procs = {k: start_disk_proxy(servers, k, c, fake.port, a.log == "on") for k, c in checkouts.items()}
        hits = {k: warm_hit(s, PATH, body, fake, lambda t: t == "sqlite", k) for k, s in procs.items()}
        if a.memory:
            procs["M"] = start_disk_proxy(servers, "M", ROOT, fake.port, a.log == "on", memory_mb=256)
            warm_hit(procs["M"], PATH, body, fake, lambda t: t == "memory", "M")
        hit_file = work / "hit.bin"
        hit_file.write_bytes(hits["B"].body)
        cport = free_port()
        ceiling = servers.start("ceiling", [sys.executable, "-m", "bench.ceiling", "--port", str(cport), "--route",
                                            f"/disk={hit_file}:{hits['B'].content_type}"], cport, "/nothing")
        targets = {"ceiling": (ceiling, "/disk"), **{k: (s, PATH) for k, s in procs.items()}}
        p50: dict[str, list[float]] = {k: [] for k in targets}
        rps: dict[str, list[float]] = {k: [] for k in targets}
        cpu: dict[str, list[float]] = {k: [] for k in targets}
        loop: dict[str, list[float]] = {k: [] for k in targets}
        order = list(targets)
        for r in range(a.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                server, path = targets[name]
                url = f"http://127.0.0.1:{server.port}{path}"
                w1 = run_wrk(wrk, url, body_file, 1, a.duration)
                before, before_loop = cpu_seconds(server.pid), loop_cpu_seconds(server.pid)
                w32 = run_wrk(wrk, url, body_file, 32, a.duration)
                spent = cpu_seconds(server.pid) - before
                loop[name].append((loop_cpu_seconds(server.pid) - before_loop) / max(1, w32.requests) * 1e6)
                if w1.errors or w1.non2xx or w32.errors or w32.non2xx:
                    print(f"  {name}: errors {w1.errors + w32.errors}, non-2xx {w1.non2xx + w32.non2xx}")
                p50[name].append(w1.p50_ms)
                rps[name].append(w32.rps)
                cpu[name].append(spent / w32.requests * 1e6 if w32.requests else 0.0)
            print(f"round {r + 1}: " + "; ".join(
                f"{k} p50 {p50[k][-1]:.3f} ms, c32 {rps[k][-1]:.0f}/s, {cpu[k][-1]:.1f} µs" for k in targets),
                flush=True)
        med = statistics.median
        print(f"\nmedians over {a.rounds} rounds (log {a.log}):")
        for k in targets:
            ratios = [x / c for x, c in zip(p50[k], p50["ceiling"], strict=True)]
            cratios = [x / c for x, c in zip(cpu[k], cpu["ceiling"], strict=True)]
            print(f"  {k:8s} c1 p50 {med(p50[k]):.3f} ms ({med(ratios):.2f}x ceiling), "
                  f"c32 {med(rps[k]):.0f} req/s, CPU {med(cpu[k]):.1f} us/req ({med(cratios):.2f}x), "
                  f"of which the loop thread {med(loop[k]):.1f}")


if __name__ == "__main__":
    main()
