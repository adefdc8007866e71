"""wrk: finding (or installing) it, running it with bench/post.lua, its parsed result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import LUA
from bench.procs import BenchError

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
