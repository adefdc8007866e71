"""The SSE parser on huge events: cost linear in the event's size, the event loop kept responsive.

``python -m bench.sse_parse [--mb 40]``

1. Feeds one ``--mb`` MB ``data:`` event in 64 KB reads to r1proxy's parser and to the previous
   implementation (kept here as the reference: it re-joined the unfinished line on every read),
   and times both in the same run.
2. Streams an event just under ``stream.max_event_mb`` (8 MB) through the parser on a running
   loop, the way the flight reads it (a yield per read, then one json.loads: a thread would not help,
   the JSON parser holds the GIL), while a ticker measures how late a 1 ms timer fires: the extra
   wait another client's hit would see. The cap is what bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from r1proxy.sse import DEFAULT_MAX_EVENT, SSEParser

READ = 64 * 1024


class OldParser:
    """The parser before #11 (quadratic in one event's size), for comparison only."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                self._data = []
                continue
            text = line.decode("utf-8", errors="replace")
            if text.startswith("data:"):
                self._data.append(text[5:].lstrip(" "))
        return out


def event(mb: float) -> bytes:
    content = "x" * int(mb * 1024 * 1024)
    doc = {"choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def feed_time(parser: Any, data: bytes) -> float:
    t = time.perf_counter()
    n = 0
    for i in range(0, len(data), READ):
        n += len(parser.feed(data[i:i + READ]))
    assert n == 1
    return time.perf_counter() - t


async def stall(data: bytes) -> tuple[float, float]:
    """(max lateness of a 1 ms timer in ms, seconds to parse) while one big event is read and parsed."""
    late = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal late
        loop = asyncio.get_running_loop()
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.001)
            late = max(late, loop.time() - t - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    parser = SSEParser(DEFAULT_MAX_EVENT)
    for i in range(0, len(data), READ):
        for ev in parser.feed(data[i:i + READ]):
            text = ev.data or ""
            doc = json.loads(text)
            assert doc["choices"]
        await asyncio.sleep(0)  # a read from the socket
    took = time.perf_counter() - t0
    done.set()
    await tick
    return late * 1000, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=40.0)
    a = ap.parse_args()
    data = event(a.mb)
    new = feed_time(SSEParser(max_event=len(data) * 2), data)
    old = feed_time(OldParser(), data)
    late, took = asyncio.run(stall(event(DEFAULT_MAX_EVENT / 1048576 - 0.1)))
    print(json.dumps({"event_mb": a.mb, "parse_s": {"r1proxy": round(new, 3), "previous": round(old, 3)},
                      "speedup": round(old / new, 1), "loop_event_mb": round(DEFAULT_MAX_EVENT / 1048576 - 0.1, 1),
                      "loop_read_and_parse_s": round(took, 3), "max_timer_lateness_ms": round(late, 1)}, indent=2))


if __name__ == "__main__":
    main()
