"""The request log's cost per memory hit, in process (``python -m bench.hitlog``): CPU time of the
accounting on the event loop and of the SQLite writer thread, request log on vs off.

No HTTP: each round runs one child process that opens a real database (every migration), feeds
``Accounting.finished`` N finished memory hits (the record a real hit leaves: alias, outcome,
tier, usage, bytes, cache key; access lines to /dev/null in the plain format), lets the batches
run as under load and waits for the writer. CPU per hit = process CPU / N; the loop's share is
the main thread's CPU, the rest is the writer (and other helper threads). Variants run A B A B
in the same run; ``--against DIR`` adds the same measurement of another checkout (e.g. main) to
compare a change. What is measured here is what ``server.log_requests = false`` saves on a hit,
minus the HTTP path's noise (a wrk run on this 2-core machine moves ±15 %).

    python -m bench.hitlog                          # 5 rounds x 20,000 hits, log on and off
    python -m bench.hitlog --against /tmp/main-checkout --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import asyncio, json, os, sys, tempfile, time
from pathlib import Path
from r1proxy.accounting import Accounting, RequestRecord
from r1proxy.clock import Clock
from r1proxy.config import build_config
from r1proxy.db import Database
from r1proxy.logsetup import setup_logging
from r1proxy.metrics import Metrics
from r1proxy.ratelimit import KeyLimiter
from r1proxy.reqlog import RequestLog
from r1proxy.usage import Usage

N, LOG = int(sys.argv[1]), sys.argv[2] == "on"
KEY = "v1:" + "ab" * 32


class SlowTiers:  # the hit count of slower tiers is the cache's concern, not the request log's
    async def touch_slow(self, hits):
        pass


async def main(tmp):
    cfg = build_config({"server": {"state_dir": str(tmp), "log_requests": LOG}}, env={})
    setup_logging("plain", stream=open(os.devnull, "w"))
    db = await Database.open(tmp / "r1proxy.db")
    acc = Accounting(cfg, Metrics(), KeyLimiter(cfg.keys), RequestLog(db), SlowTiers(), lambda t: None, Clock())
    usage = Usage.of({"prompt_tokens": 5000, "completion_tokens": 700,
                      "completion_tokens_details": {"reasoning_tokens": 300}})

    def hit(i):
        return RequestRecord(request_id=f"a1b2c3-{i}", t0=time.monotonic(), alias="deepseek/deepseek-r1",
                             upstream_model="deepseek/deepseek-r1", cache="HIT", tier="memory", status=200,
                             cache_key=KEY, request_bytes=20480, response_bytes=4100, latency=0.00023,
                             ts=time.time(), touched=KEY, usage=usage)

    async def feed(n):
        for i in range(n):
            acc.finished(hit(i))
            await asyncio.sleep(0)  # one loop iteration per request, as under load
        acc.flush()
        await db.flush()

    await feed(2000)  # warm-up: statement caches, pages
    p0, m0 = time.process_time(), time.thread_time()
    await feed(N)
    p1, m1 = time.process_time(), time.thread_time()
    await db.close()
    print(json.dumps({"total": (p1 - p0) / N * 1e6, "loop": (m1 - m0) / N * 1e6}))


with tempfile.TemporaryDirectory(prefix="r1proxy-hitlog-bench-") as tmp:
    asyncio.run(main(Path(tmp)))
"""


def measure(code: Path, log: bool, n: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), "on" if log else "off"], env=env,
                         capture_output=True, text=True, timeout=600, cwd=code)
    if out.returncode:
        raise SystemExit(f"bench child failed ({code}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hitlog", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hits", type=int, default=20_000)
    ap.add_argument("--against", type=Path, help="another checkout to measure in the same rounds (e.g. main)")
    a = ap.parse_args(argv)
    variants = [("this checkout, request log on", ROOT, True), ("this checkout, log_requests = false", ROOT, False)]
    if a.against is not None:
        variants.insert(1, (f"{a.against}, request log on", a.against.resolve(), True))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for r in range(a.rounds):
        for name, code, log in variants:
            runs[name].append(measure(code, log, a.hits))
        print(f"  round {r + 1}/{a.rounds}", flush=True)
    print(f"CPU per memory hit in the accounting and the request-log writer ({a.hits:,} hits per round, "
          f"medians of {a.rounds} rounds, A B A B)")
    print("| variant | total µs | event loop µs | writer thread µs | per round (total) |")
    print("|---|---|---|---|---|")
    for name, xs in runs.items():
        total = statistics.median(x["total"] for x in xs)
        loop = statistics.median(x["loop"] for x in xs)
        other = statistics.median(x["total"] - x["loop"] for x in xs)
        per_round = ", ".join(f"{x['total']:.1f}" for x in xs)
        print(f"| {name} | {total:.1f} | {loop:.1f} | {other:.1f} | {per_round} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
