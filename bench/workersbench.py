"""``--workers N``: memory hits at 32 connections from r1proxy with ``server.workers = N``.

Target (issue #17): ≥ 1.0× the requests/s of the bare single-process aiohttp server returning
the same bytes, measured A B A B in the same rounds; the single-process r1proxy runs in the same
rounds too, so the row also shows what the extra processes buy on this machine.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Settings
from bench.procs import BenchError, Server, Servers, request
from bench.report import Report, Row, med, verdict
from bench.targets import start_proxy
from bench.wrk import run_wrk


def _warm(port: int, body: bytes, tries: int = 64) -> int:
    """Send the request on new connections until every worker has it in memory; memory hits seen."""
    memory = 0
    for _ in range(tries):
        r = request(port, "POST", "/v1/chat/completions", body, timeout=60)
        if r.status != 200:
            raise BenchError(f"workers warm-up: HTTP {r.status}")
        memory += r.header("X-Cache-Tier") == "memory"
    return memory


def workers_rows(wrk: str, s: Settings, servers: Servers, report: Report, fake: Server, ceiling: Server,
                 single: Server, body: bytes, body_file: Path) -> None:
    n = s.workers
    proxy, _ = start_proxy(servers, f"r1proxy-workers{n}", fake.port, 256, workers=n)
    if _warm(proxy.port, body) < 16:
        raise BenchError("workers: the hit did not reach the memory tiers")
    path = "/v1/chat/completions"
    mine, ceil, one, ratios, gains = [], [], [], [], []
    for r in range(s.rounds):
        print(f"  round {r + 1}/{s.rounds}", flush=True)
        c = run_wrk(wrk, f"http://127.0.0.1:{ceiling.port}/json", body_file, 32, s.duration)
        w = run_wrk(wrk, f"http://127.0.0.1:{proxy.port}{path}", body_file, 32, s.duration)
        o = run_wrk(wrk, f"http://127.0.0.1:{single.port}{path}", body_file, 32, s.duration)
        ceil.append(c.rps)
        mine.append(w.rps)
        one.append(o.rps)
        ratios.append(w.rps / c.rps if c.rps else 0.0)
        gains.append(w.rps / o.rps if o.rps else 0.0)
        errors = w.errors + w.non2xx
        if errors:
            report.notes.append(f"workers run round {r + 1}: {errors} errors/non-2xx")
    report.add(Row(f"memory hit, 32 conn, req/s, server.workers = {n}", f"{med(mine):.0f}", f"{med(ceil):.0f}",
                   f"{med(ratios):.2f}×", "≥ 1.0× the bare single-process server", verdict(med(ratios) >= 1.0),
                   f"vs one r1proxy process in the same rounds: {med(gains):.2f}× ({med(one):.0f} req/s)"))
    report.rounds_detail.append(
        f"- workers = {n}: c32 req/s per round {', '.join(f'{x:.0f}' for x in mine)} (ceiling "
        f"{', '.join(f'{x:.0f}' for x in ceil)}; one process {', '.join(f'{x:.0f}' for x in one)})")
    servers.stop(proxy)
