"""SIGKILL under write load: the cache never serves a wrong or partial answer, the database stays sound.

``python -m bench.sigkill [--kills 50] [--clients 8] [--out docs/sigkill.json]``

One fake upstream (``bench.fake_upstream_server``: the same request always gets the same answer)
and one real ``r1proxy serve`` on a state directory that survives every kill. Each round starts
the proxy, drives distinct requests at it from ``--clients`` threads (streams and JSON, each
a new cache key, so every answer is a write), and SIGKILLs the proxy's process group at a
random moment. After each kill, ``PRAGMA integrity_check`` runs on the database file. At the
end the proxy starts once more and every request that ever got a 200 is replayed with
``Cache-Control: only-if-cached``: a HIT must carry exactly the answer the upstream gave (the
content and reasoning of the original reply). Rows whose client was cut by the kill after the
answer was stored are counted apart (they cannot be compared with a reply nobody received).
Prints the counts; exit status 1 if anything was wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.body import roo_body
from bench.procs import Server, Servers, free_port, request
from bench.targets import proxy_config, start_fake


@dataclass
class Sent:
    body: bytes
    stream: bool
    content: str
    reasoning: str
    key: str


@dataclass
class Tally:
    ok: dict[str, Sent] = field(default_factory=dict)  # nonce -> what the client received
    failed: int = 0  # connection cut by the kill, or an error reply
    lock: threading.Lock = field(default_factory=threading.Lock)


def answer_of(body: bytes, stream: bool) -> tuple[str, str] | None:
    """(content, reasoning) of a complete reply; None when it is not complete."""
    text = body.decode("utf-8", "replace")
    if not stream:
        try:
            msg = json.loads(text)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return msg.get("content") or "", msg.get("reasoning_content") or ""
    lines = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
    if not lines or lines[-1] != "[DONE]":
        return None
    content, reasoning = [], []
    for ln in lines[:-1]:
        try:
            chunk = json.loads(ln)
        except ValueError:
            return None
        if "error" in chunk:
            return None
        for ch in chunk.get("choices") or []:
            delta = ch.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
    return "".join(content), "".join(reasoning)


def client_loop(port: int, stop: threading.Event, tally: Tally, rng: random.Random) -> None:
    while not stop.is_set():
        nonce = f"{rng.getrandbits(64):016x}"
        stream = rng.random() < 0.7
        body = roo_body(target_bytes=8192, nonce=nonce, stream=stream)
        try:
            r = request(port, "POST", "/chat/completions", body, timeout=30)
        except (OSError, http.client.HTTPException):
            with tally.lock:
                tally.failed += 1
            return  # the proxy is gone: this round is over for this client
        got = answer_of(r.body, stream) if r.status == 200 else None
        with tally.lock:
            if got is None:
                tally.failed += 1
            else:
                tally.ok[nonce] = Sent(body, stream, got[0], got[1], r.header("X-Cache-Key"))


def integrity(db: Path) -> str:
    if not db.exists():
        return "ok (no file yet)"
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def start(servers: Servers, cfg: Path, port: int) -> Server:
    argv = [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"]
    return servers.start("proxy", argv, port, "/health", timeout=60)


def kill(servers: Servers, server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    if server in servers.running:
        servers.running.remove(server)


def replay(port: int, tally: Tally) -> tuple[int, int, int]:
    """(hits, misses, wrong) replaying every completed request with only-if-cached."""
    hits = misses = wrong = 0
    for sent in tally.ok.values():
        r = request(port, "POST", "/chat/completions", sent.body, timeout=30,
                    headers={"Cache-Control": "only-if-cached"})
        if r.status == 504:
            misses += 1  # killed before its write landed: allowed, nothing wrong was served
            continue
        got = answer_of(r.body, sent.stream) if r.status == 200 else None
        if got is None or got != (sent.content, sent.reasoning) or r.header("X-Cache") != "HIT":
            wrong += 1
            print(f"WRONG: status {r.status} X-Cache {r.header('X-Cache')} key {sent.key}", file=sys.stderr)
        else:
            hits += 1
    return hits, misses, wrong


def run(kills: int, clients: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    tally = Tally()
    checks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="r1proxy-sigkill-") as tmp, Servers(Path(tmp)) as servers:
        servers.env["OPENROUTER_API_KEY"] = "sk-or-v1-bench"
        fake = start_fake(servers, "fake", 0.02, 0, 0)
        state = Path(tmp) / "state"
        cfg = Path(tmp) / "proxy.toml"
        port = free_port()
        proxy_config(cfg, port, state, fake.port, memory_mb=64)
        db = state / "r1proxy.db"
        t0 = time.monotonic()
        for _ in range(kills):
            proxy = start(servers, cfg, port)
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop, args=(port, stop, tally, random.Random(rng.random())),
                                        daemon=True) for _ in range(clients)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            kill(servers, proxy)
            stop.set()
            for t in threads:
                t.join(35)
            checks.append(integrity(db))
        proxy = start(servers, cfg, port)
        hits, misses, wrong = replay(port, tally)
        conn = sqlite3.connect(db)
        try:
            keys = {row[0] for row in conn.execute("SELECT key FROM cache_entries")}
        finally:
            conn.close()
        known = {s.key for s in tally.ok.values()}
        orphans = len(keys - known)  # an entry no completed request accounts for (a partial answer?)
        servers.stop(proxy)
        return {"kills": kills, "clients": clients, "seconds": round(time.monotonic() - t0, 1),
                "requests_completed": len(tally.ok), "requests_cut": tally.failed,
                "integrity_ok": sum(c.startswith("ok") for c in checks), "integrity_checks": len(checks),
                "entries": len(keys), "replayed_hits": hits, "replayed_not_stored": misses,
                "wrong_or_partial_served": wrong, "entries_without_a_completed_request": orphans}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the counts as JSON here")
    a = p.parse_args(argv)
    result = run(a.kills, a.clients, a.seed)
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    bad = result["wrong_or_partial_served"] or result["integrity_ok"] != result["integrity_checks"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
