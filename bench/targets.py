"""The servers under test: r1proxy configs and starts, fake upstreams, warming a verified hit."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, Server, Servers, free_port, request

# -- the proxy -----------------------------------------------------------------------------

def proxy_config(path: Path, port: int, state: Path, upstream_port: int, memory_mb: float,
                 max_disk_mb: float = 2048, workers: int = 1) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# written by bench/targets.py
[server]
host = "127.0.0.1"
port = {port}
state_dir = "{state}"
workers = {workers}

[upstreams.openrouter]
base_url = "http://127.0.0.1:{upstream_port}/api/v1"
api_key_env = "OPENROUTER_API_KEY"

[cache]
enabled = true
memory_mb = {memory_mb}
max_disk_mb = {max_disk_mb}
""")


def start_proxy(servers: Servers, name: str, upstream_port: int, memory_mb: float,
                workers: int = 1) -> tuple[Server, Path]:
    port = free_port()
    state = servers.workdir / f"{name}-state"
    cfg = servers.workdir / f"{name}.toml"
    proxy_config(cfg, port, state, upstream_port, memory_mb, workers=workers)
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
