"""1. Hit load: interleaved wrk rounds against the ceiling and the targets, and their rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Settings
from bench.procs import Server
from bench.report import Report, Row, med, verdict
from bench.targets import upstream_count
from bench.wrk import WrkResult, run_wrk

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
             target_c32: tuple[str, float] | None, target_p99: float | None = None) -> None:
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
    row99 = Row(f"{label}, 1 conn, p99 ms", f"{med(p99):.3f}", f"{med(c_p99):.3f}", f"{med(r_p99):.2f}×")
    if target_p99 is not None:
        row99.target, row99.verdict = f"≤ {target_p99:g}×", verdict(med(r_p99) <= target_p99 and not errs)
    report.add(row99)
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_rows(wrk: str, s: Settings, report: Report, label: str, mine: Server, path: str, ceiling: Server,
             ceiling_path: str, body_file: Path, target: float | None) -> None:
    """CPU time per request (µs) of the server process under wrk -c32, A B A B against the ceiling."""
    ours: list[float] = []
    ref: list[float] = []
    for _ in range(s.rounds):
        for server, p, bucket in ((ceiling, ceiling_path, ref), (mine, path, ours)):
            before = cpu_seconds(server.pid)
            w = run_wrk(wrk, f"http://127.0.0.1:{server.port}{p}", body_file, 32, max(2.0, s.duration))
            if w.requests:
                bucket.append((cpu_seconds(server.pid) - before) / w.requests * 1e6)
    ratio = [a / b for a, b in zip(ours, ref, strict=True) if b > 0]
    row = Row(f"{label}, CPU µs per request (32 conn)", f"{med(ours):.0f}", f"{med(ref):.0f}", f"{med(ratio):.2f}×",
              note="utime+stime of the server process (all threads) / requests, per round: "
                   + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(ours, ref, strict=True)))
    if target is not None:
        row.target, row.verdict = f"≤ {target:g}×", verdict(med(ratio) <= target)
    report.add(row)
