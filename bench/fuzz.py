"""A long fuzz run against a real ``r1proxy serve`` on 127.0.0.1: client mistakes never get a 5xx.

``python -m bench.fuzz [--requests 20000] [--concurrency 32] [--seed 11] [--out docs/fuzz.json]``

One fake upstream (``bench.fake_upstream_server``, no delay) and one proxy with the default config
(no keys, loopback). Each request is raw bytes on its own connection, built by a seeded generator
from a valid Roo-shaped body: fields replaced by wrong types and values, bodies cut, spliced or
replaced by random bytes, JSON nested up to 100,000 deep, lone surrogates, NaN/Infinity/1e999,
CR/LF/NUL in the model id, non-UTF-8 Authorization, wrong Content-Type, a body that does not match
its Content-Encoding, a Content-Length the client never fills (it leaves mid-body), malformed
request lines and headers, foreign Host and Origin, unknown paths and methods; a share of valid
requests keeps the hit and miss paths busy. Prints the counts by status, the 5xx, and the
tracebacks and ERROR lines in the proxy's log; exit status 1 when there is any 5xx or traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import Servers, free_port
from bench.targets import proxy_config, start_fake

HOST = b"127.0.0.1"


def valid(rng: random.Random, stream: bool | None = None) -> dict[str, Any]:
    text = rng.choice(["hello", "write a function", "explain <think> tags", "ünïcödé ✓", "x" * 200])
    # not deepseek-r1-free: its 20 rpm pacing would make the run wait in the queue, not test anything
    return {"model": rng.choice(["deepseek-r1", "deepseek/deepseek-r1", "deepseek/deepseek-r1:free"]),
            "stream": rng.random() < 0.5 if stream is None else stream,
            "messages": [{"role": "system", "content": "You are Roo."},
                         {"role": "user", "content": [{"type": "text", "text": f"{text} {rng.randrange(50)}"}]}]}


JUNK_VALUES: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [1, 2], {"a": 1}, "\u0000", "a" * 300,
                          [[[[[]]]]], {"role": 5}, [{"role": "user"}], [{"content": "no role"}]]


def field_mutation(rng: random.Random) -> bytes:
    doc = valid(rng)
    key = rng.choice(["model", "messages", "stream", "cache", "temperature", "tools", "max_tokens", "n"])
    doc[key] = rng.choice(JUNK_VALUES)
    if rng.random() < 0.3:
        del doc[rng.choice(list(doc))]
    return json.dumps(doc).encode()


def model_mutation(rng: random.Random) -> bytes:
    model = rng.choice(["deepseek/x\r\nX-Evil: 1", "a\u0000b", "m" * rng.choice([257, 5000]), "\ud800",
                        "deepseek\u2028r1", "tab\tbed", " ", "ok/model"])
    return json.dumps({**valid(rng), "model": model}).encode()


def literal(rng: random.Random) -> bytes:
    lit = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b'"\\ud800"', b'"\\udfff x"',
                      b'"a\\ud83d"', b"1" * 5000])
    key = rng.choice([b"temperature", b"top_p", b"content"])
    if key == b"content":
        return b'{"model":"deepseek-r1","messages":[{"role":"user","content":' + lit + b"}]}"
    return b'{"model":"deepseek-r1","' + key + b'":' + lit + b',"messages":[{"role":"user","content":"a"}]}'


def nested(rng: random.Random) -> bytes:
    depth = rng.choice([65, 500, 1000, 5000, 100_000])
    inner = b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"model":"deepseek-r1","messages":[{"role":"user","content":"a","x":' + inner + b"}]}"


def raw_mutation(rng: random.Random) -> bytes:
    raw = json.dumps(valid(rng)).encode()
    how = rng.choice(["cut", "splice", "random", "flip", "many"])
    if how == "cut":
        return raw[:rng.randrange(len(raw))]
    if how == "splice":
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.randbytes(rng.randrange(1, 16)) + raw[at:]
    if how == "flip":
        b = bytearray(raw)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if how == "many":
        n = rng.choice([10_001, 20_000])
        return json.dumps({"model": "deepseek-r1", "messages": [{"role": "user", "content": "a"}] * n}).encode()
    return rng.randbytes(rng.randrange(0, 200))


def http(body: bytes, *, path: bytes = b"/chat/completions", method: bytes = b"POST",
         headers: dict[bytes, bytes] | None = None, length: int | None = None) -> bytes:
    h = {b"Host": HOST, b"Content-Type": b"application/json", b"Connection": b"close"}
    h.update(headers or {})
    h[b"Content-Length"] = str(len(body) if length is None else length).encode()
    head = method + b" " + path + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in h.items() if v)
    return head + b"\r\n" + body


def case(rng: random.Random) -> tuple[str, bytes, bool]:
    """(kind, bytes to send, whether the client leaves before the body is complete)."""
    r = rng.random()
    if r < 0.15:
        return "valid", http(json.dumps(valid(rng)).encode()), False
    if r < 0.30:
        return "field", http(field_mutation(rng)), False
    if r < 0.38:
        return "model", http(model_mutation(rng)), False
    if r < 0.46:
        return "literal", http(literal(rng)), False
    if r < 0.52:
        return "nested", http(nested(rng)), False
    if r < 0.66:
        return "raw", http(raw_mutation(rng)), False
    body = json.dumps(valid(rng, stream=False)).encode()
    if r < 0.70:
        auth = rng.choice([b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer " + rng.randbytes(8), b"Basic \x80"])
        return "auth", http(body, headers={b"Authorization": auth, b"X-Other": b"\xff"}), False
    if r < 0.74:
        ctype = rng.choice([b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data",
                            b"", b"application/json\xff", b"application/jsonx"])
        return "content-type", http(body, headers={b"Content-Type": ctype}), False
    if r < 0.78:
        enc = rng.choice([b"deflate", b"gzip", b"br", b"zstd", b"x-nonsense"])
        data = rng.choice([rng.randbytes(40), zlib.compress(body)[:-4], body])
        return "encoding", http(data, headers={b"Content-Encoding": enc}), False
    if r < 0.83:
        return "vanish", http(body[:rng.randrange(len(body))], length=len(body) + 1000), True
    if r < 0.88:
        junk = rng.choice([b"GARBAGE \x00\x01 HTTP/9\r\n\r\n", b"POST /chat/completions HTTP/1.1\r\nHost\r\n\r\n",
                           b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", rng.randbytes(64) + b"\r\n\r\n",
                           b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                           b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"])
        return "malformed-http", junk, False
    if r < 0.94:
        hdr = rng.choice([{b"Host": b"evil.example"}, {b"Origin": b"https://evil.example"},
                          {b"Origin": b"null"}, {b"Host": b"evil.example:4000", b"Origin": b"http://evil.example"}])
        return "foreign", http(body, headers=hdr), False
    path, method = rng.choice([(b"/nope", b"POST"), (b"/chat/completions", b"GET"), (b"/models", b"DELETE"),
                               (b"/stats", b"GET"), (b"/%ff%00", b"GET"), (b"/v1/chat/completions", b"PUT")])
    return "path", http(body if method != b"GET" else b"", path=path, method=method), False


async def send(port: int, data: bytes, vanish: bool) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect-failed"
    try:
        writer.write(data)
        await writer.drain()
        if vanish:
            return "vanished"
        line = await asyncio.wait_for(reader.readline(), 15)
        parts = line.split(b" ", 2)
        status = parts[1].decode(errors="replace") if len(parts) > 1 else "no-reply"
        await asyncio.wait_for(reader.read(), 15)  # the whole reply, to EOF
        return status
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return "no-reply"
    finally:
        writer.close()


async def drive(port: int, n: int, concurrency: int, seed: int) -> tuple[Counter[str], Counter[str], list[str]]:
    rng = random.Random(seed)
    cases = [case(rng) for _ in range(n)]
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    fives: list[str] = []
    slow: Counter[str] = Counter()
    it = iter(cases)

    async def worker() -> None:
        for kind, data, vanish in it:
            t = time.monotonic()
            status = await send(port, data, vanish)
            slow[kind] += time.monotonic() - t
            statuses[status] += 1
            kinds[kind] += 1
            if status.startswith("5"):
                fives.append(f"{status} {kind}: {data[:160]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print("seconds by kind:", {k: round(v, 1) for k, v in slow.most_common()}, file=sys.stderr)
    return statuses, kinds, fives


def run(n: int, concurrency: int, seed: int, keep_log: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="r1proxy-fuzz-") as tmp, Servers(Path(tmp)) as servers:
        servers.env["OPENROUTER_API_KEY"] = "sk-or-v1-bench-fuzz-key"
        fake = start_fake(servers, "fake", 0.0, 300, 300)  # short answers: the fuzz is about the edges
        port = free_port()
        cfg = Path(tmp) / "proxy.toml"
        proxy_config(cfg, port, Path(tmp) / "state", fake.port, memory_mb=64)
        proxy = servers.start("proxy", [sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"],
                              port, "/health", timeout=60)
        t0 = time.monotonic()
        statuses, kinds, fives = asyncio.run(drive(port, n, concurrency, seed))
        elapsed = time.monotonic() - t0
        servers.stop(proxy)
        log = proxy.log.read_text(errors="replace")
        if keep_log is not None:
            keep_log.write_text(log)
    lines = log.splitlines()
    errors = Counter(" ".join(line.split()[2:])[:120] for line in lines if " ERROR " in line)
    return {"requests": n, "concurrency": concurrency, "seed": seed, "seconds": round(elapsed, 1),
            "by_status": dict(sorted(statuses.items())), "by_kind": dict(sorted(kinds.items())),
            "5xx": sum(v for k, v in statuses.items() if k.startswith("5")), "first_5xx": fives[:10],
            "tracebacks": log.count("Traceback"),
            "error_lines": sum(errors.values()), "error_kinds": dict(errors.most_common(10)),
            "info_lines_client_gone": sum(1 for line in lines if "went away" in line or "unreadable" in line)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, help="also write the counts as JSON here")
    ap.add_argument("--keep-log", type=Path, help="copy the proxy's log here")
    a = ap.parse_args()
    result = run(a.requests, a.concurrency, a.seed, a.keep_log)
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["5xx"] or result["tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main())
