"""The fake OpenRouter (tests/fake_upstream.py) as its own process, for the benchmarks.

``python -m bench.fake_upstream_server --port P --delay 0.3 [--reasoning-chars N --answer-chars N]``

Every request is answered after ``--delay`` seconds (before the response headers), streaming
or not as asked, with R1-like reasoning and answer text from ``bench.answers`` seeded by the
request's last user message: the same request gives the same answer, distinct requests give
distinct answers. Fixed sizes (``--reasoning-chars``/``--answer-chars``) or, with 0, varied
realistic sizes. ``GET /stats`` returns ``{"chat": N}``, the number of chat requests served, so
the harness can check that a load run caused no upstream calls. Request bodies up to 256 MB.
Runs on uvloop; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import uvloop
from aiohttp import web

from bench.answers import r1_answer
from tests.fake_upstream import Call, FakeOpenRouter, Script, text_of


class BenchUpstream(FakeOpenRouter):
    """FakeOpenRouter with a fixed first-byte delay, R1-like answers and a request counter."""

    def __init__(self, delay: float, reasoning_chars: int, answer_chars: int) -> None:
        super().__init__()
        self.delay = delay
        self.reasoning_chars = reasoning_chars
        self.answer_chars = answer_chars
        self.chat_count = 0

    def _record(self, request: web.Request, body: Any) -> None:
        self.chat_count += 1  # keep only the last call: a load run would grow the history without bound
        self.calls[:] = [Call(request.method, request.path, {}, None)]

    def _script_for(self, body: dict[str, Any]) -> Script:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        seed = json.dumps([text_of(m)[-4000:] for m in users[-2:]])
        reasoning, answer = r1_answer(seed, self.reasoning_chars, self.answer_chars)
        base = dataclasses.replace(super()._script_for(body), delay_first_byte=self.delay,
                                   reasoning=reasoning, answer=answer, tool_call=False)
        return base

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        for prefix in ("/api/v1", "/v1", ""):
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_get(prefix + "/models", self._models)
        app.router.add_get("/stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"chat": self.chat_count})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.3, help="seconds before the first byte (default 0.3)")
    p.add_argument("--reasoning-chars", type=int, default=0, help="0 = varied realistic sizes")
    p.add_argument("--answer-chars", type=int, default=0, help="0 = varied realistic sizes")
    a = p.parse_args()
    fake = BenchUpstream(a.delay, a.reasoning_chars, a.answer_chars)
    uvloop.install()
    web.run_app(fake.app, host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
