"""FakeOpenRouter: an in-process aiohttp app that behaves like OpenRouter for DeepSeek R1.

It follows docs/protocol.md section B: B.3 SSE framing (``: OPENROUTER PROCESSING`` comments,
``delta.reasoning`` + ``reasoning_details``, a finish chunk with ``native_finish_reason``, one usage chunk
with ``choices: []``, then ``data: [DONE]``), B.4 non-stream JSON, B.5/B.6/B.11 error bodies and B.10
mid-stream errors. Every request is recorded in ``calls``.

Behaviour per request = the next queued ``Script`` (``fake.script(...)``, FIFO) or ``Script()``, with any
``[[fake key=value ...]]`` marker in the last user message applied on top (handy for concurrent tests),
e.g. ``[[fake status=429 retry_after=2]]``, ``[[fake drop_after=3]]``, ``[[fake daily_quota]]``.
A request with ``tools`` whose last message contains ``USE_TOOL`` is answered with a tool call.

Accounting endpoints (B.1, B.7, B.8): ``GET /models`` lists ``PRICES`` (strings, USD per token),
``GET /key`` answers ``key_info`` (steer with ``fake.key_info``), ``GET /generation?id=`` the stats of a
generation it served, with ``cache_discount``. GETs are recorded in ``info_calls``, not ``calls``.
Usage carries ``cost`` computed from ``PRICES`` (cache reads at ``input_cache_read``, writes at the
prompt price, reasoning inside completion), ``prompt_tokens_details.cached_tokens`` /
``cache_write_tokens`` (``Script.cached_tokens`` / ``cache_write_tokens``) and
``completion_tokens_details.reasoning_tokens``; ``Script.report_cost = False`` leaves ``cost`` out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MARKER_RE = re.compile(r"\[\[fake((?:\s+[a-z_]+(?:=[^\s\]]*)?)*)\s*\]\]")
PROCESSING = ": OPENROUTER PROCESSING"
DAILY_MESSAGE = ("Rate limit exceeded: free-models-per-day. "
                 "Add 10 credits to unlock 1000 free model requests per day")
NO_TOOLS_MESSAGE = "No endpoints found that support tool use."
# USD per token, as OpenRouter lists them (strings); cache reads at 0.1x the prompt price (DeepSeek)
PRICES: dict[str, dict[str, str]] = {
    "deepseek/deepseek-r1": {"prompt": "0.00000055", "completion": "0.00000219",
                             "input_cache_read": "0.000000055", "request": "0", "image": "0"},
    "deepseek/deepseek-r1:free": {"prompt": "0", "completion": "0", "request": "0", "image": "0"},
}
DEFAULT_PRICE = {"prompt": "0.00000055", "completion": "0.00000219", "input_cache_read": "0.000000055"}


@dataclass
class Script:
    """How the fake answers one request; every field has an OpenRouter-like default."""

    status: int = 200                    # != 200: a B.5 JSON error with this status
    message: str = ""                    # error message (default chosen per status)
    retry_after: str | None = None       # Retry-After header value on an error
    daily_quota: bool = False            # B.11 free-models-per-day 429 with X-RateLimit-* headers
    no_tool_support: bool = False        # 404 "No endpoints found that support tool use." if tools sent
    json_error: bool = False             # HTTP 200 JSON with a top-level "error" (B.4 note)
    mid_stream_error: int | None = None  # B.10 error event after N data chunks, then the stream ends
    done_after_error: bool = False       # ...followed by data: [DONE] (some providers do)
    drop_after: int | None = None        # close the transport after N data chunks (0: before headers)
    delay_first_byte: float = 0.0        # seconds before the response headers
    gap: float = 0.0                     # seconds between data chunks
    silence: float = 0.0                 # a silent pause after `silence_after` data chunks...
    silence_after: int = 0
    keepalive: float = 0.0               # ...with a PROCESSING comment every `keepalive` s (0: none)
    processing_comments: int = 1         # PROCESSING comments before the first data chunk
    think_tags: bool = False             # reasoning inside content as <think>...</think> (Fireworks style)
    reasoning_only: bool = False         # no visible content at all
    reasoning_details: bool = True       # duplicate reasoning into delta.reasoning_details
    finish_reason: str | None = None     # override "stop"/"tool_calls"
    chunks: list[Any] | None = None      # raw events: dicts (sent as data: JSON) or str lines, verbatim
    answer: str | None = None            # override the answer text
    reasoning: str | None = None         # override the reasoning text
    answer_size: int = 0                 # pad the answer to this many characters
    chunk_chars: int = 24                # characters per content/reasoning delta
    tool_call: bool | None = None        # force (True) or forbid (False) the tool-call answer
    provider: str = "FakeProvider"
    usage: dict[str, Any] | None = None  # override the usage object
    raw_body: bytes | None = None        # a 200 application/json reply of exactly these bytes
    raw_stream: bytes | None = None      # a 200 text/event-stream reply of exactly these bytes
    echo_headers: bool = False           # a careless upstream: errors, comments and a response header
                                         # quote the request headers (Authorization included)
    cached_tokens: int = 0               # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int = 0          # prompt tokens written to it
    report_cost: bool = True             # False: usage without `cost` (a non-OpenRouter upstream)
    cache_discount: float | None = None  # /generation's cache_discount when the serving provider's cache-read
                                         # price is not the listed one (default: from the listed prices)

    def apply(self, overrides: dict[str, str]) -> Script:
        """A copy with marker overrides (strings) converted to each field's type."""
        changes: dict[str, Any] = {}
        types = {f.name: str(f.type) for f in dataclasses.fields(self)}
        for key, raw in overrides.items():
            t = types.get(key)
            if t is None:
                raise ValueError(f"unknown fake marker key {key!r}")
            if t.startswith("bool"):
                changes[key] = raw in ("", "1", "true", "yes")
            elif t.startswith("int"):
                changes[key] = int(raw)
            elif t.startswith("float"):
                changes[key] = float(raw)
            elif t.startswith("str"):
                changes[key] = raw
            else:
                raise ValueError(f"fake marker key {key!r} cannot be set from a marker")
        return dataclasses.replace(self, **changes)


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    time: float = field(default_factory=time.monotonic)
    raw: bytes = b""  # the body exactly as received


def unused_port() -> int:
    """A localhost TCP port nothing listens on (for "connection refused" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text_of(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def split(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]


class FakeOpenRouter:
    """The fake; ``app`` serves it, ``calls`` records it, ``script()`` steers it."""

    def __init__(self, models: tuple[str, ...] = ("deepseek/deepseek-r1", "deepseek/deepseek-r1:free"),
                 api_key: str | None = None) -> None:
        self.models = models
        self.api_key = api_key  # when set, any other Bearer token gets a 401
        self.calls: list[Call] = []
        self.info_calls: list[Call] = []  # GET /models, /key, /generation
        self.prices = {m: dict(PRICES.get(m, DEFAULT_PRICE)) for m in models}
        self.key_info: dict[str, Any] = {"label": "sk-or-v1-fak...000", "limit": None, "limit_remaining": None,
                                         "usage": 0.25, "usage_daily": 0.01, "is_free_tier": True,
                                         "rate_limit": {"requests": 20, "interval": "10s"}}
        self.generations: dict[str, dict[str, Any]] = {}
        self.generation_404s = 0  # the next N GET /generation answer 404 (stats not ready yet, B.8)
        self.scripts: deque[Script] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self._seq = 0
        self.echo = ""
        self._app: web.Application | None = None

    def script(self, *scripts: Script) -> None:
        """Queue scripts; each is consumed by the next request (FIFO)."""
        self.scripts.extend(scripts)

    def count(self, path_suffix: str = "/chat/completions") -> int:
        return sum(1 for c in self.calls if c.path.endswith(path_suffix))

    @property
    def last(self) -> Call:
        return self.calls[-1]

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        app = web.Application()
        for prefix in ("/api/v1", "/v1", ""):
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_get(prefix + "/models", self._models)
            app.router.add_get(prefix + "/key", self._key)
            app.router.add_get(prefix + "/generation", self._generation)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.info_calls.append(Call(request.method, request.path, dict(request.headers), None))
        params = ["reasoning", "include_reasoning", "temperature"]
        data = [{"id": m, "name": m, "object": "model", "context_length": 163840,
                 "pricing": self.prices.get(m, DEFAULT_PRICE), "supported_parameters": params}
                for m in self.models]
        return web.json_response({"data": data})

    async def _key(self, request: web.Request) -> web.Response:
        self.info_calls.append(Call(request.method, request.path, dict(request.headers), None))
        if not self._authorized(request) or "Authorization" not in request.headers:
            return self._error(401, "No auth credentials found")
        return web.json_response({"data": self.key_info})

    async def _generation(self, request: web.Request) -> web.Response:
        self.info_calls.append(Call(request.method, request.path, dict(request.headers), None))
        gen = self.generations.get(request.query.get("id", ""))
        if self.generation_404s > 0:
            self.generation_404s -= 1
            gen = None
        if gen is None:
            return self._error(404, "Generation not found")
        return web.json_response({"data": gen})

    def _record(self, request: web.Request, body: Any) -> None:
        self.calls.append(Call(request.method, request.path, dict(request.headers), body))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(request, body)
        if self.calls and self.calls[-1].json is body:  # bench.fake_upstream_server keeps no call history
            self.calls[-1].raw = raw
        if not isinstance(body, dict):
            return self._error(400, "Invalid JSON body")
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "No auth credentials found")
        self._seq += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body, self._script_for(body))
        finally:
            self.in_flight -= 1

    def _script_for(self, body: dict[str, Any]) -> Script:
        script = self.scripts.popleft() if self.scripts else Script()
        users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
        match = MARKER_RE.search(text_of(users[-1])) if users else None
        if match:
            pairs = dict(item.partition("=")[::2] for item in match.group(1).split())
            script = script.apply(pairs)
        return script

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None,
               metadata: dict[str, Any] | None = None) -> web.Response:
        err: dict[str, Any] = {"code": status, "message": message}
        if metadata is not None:
            err["metadata"] = metadata
        return web.json_response({"error": err}, status=status, headers=headers)

    async def _answer(self, request: web.Request, body: dict[str, Any], s: Script) -> web.StreamResponse:
        if s.echo_headers:
            echo = json.dumps(dict(request.headers))
            s = dataclasses.replace(s, message=f"{s.message or 'Bad request'}; you sent {echo}")
            self.echo = echo
        if s.delay_first_byte:
            await asyncio.sleep(s.delay_first_byte)
        if s.drop_after == 0:
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never written: the connection is gone
        if s.daily_quota:
            reset = str((int(time.time()) // 86400 + 1) * 86400 * 1000)
            rl = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
            meta = {"error_type": "rate_limit_exceeded", "headers": rl, "provider_name": None}
            return self._error(429, DAILY_MESSAGE, headers=rl, metadata=meta)
        if s.no_tool_support and body.get("tools"):
            return self._error(404, NO_TOOLS_MESSAGE)
        if s.status != 200:
            headers = {"Retry-After": s.retry_after} if s.retry_after is not None else None
            message = s.message or {429: "Rate limit exceeded: free-models-per-min.",
                                    500: "Internal Server Error", 502: "Provider returned error",
                                    503: "No instances available"}.get(s.status, f"Fake error {s.status}")
            meta = {"raw": f"{body.get('model')} is temporarily rate-limited upstream",
                    "provider_name": s.provider} if s.status == 429 else None
            if s.echo_headers:
                meta = {"raw": self.echo, "headers": dict(request.headers), "provider_name": s.provider}
                headers = {**(headers or {}), "openrouter-provider": request.headers.get("Authorization", "")}
            return self._error(s.status, message, headers=headers, metadata=meta)
        if s.raw_body is not None:
            return web.Response(body=s.raw_body, headers={"Content-Type": "application/json"})
        if s.raw_stream is not None:
            return web.Response(body=s.raw_stream, headers={"Content-Type": "text/event-stream"})
        if s.json_error:
            err = {"code": 502, "message": s.message or "Provider returned error"}
            return web.json_response({"error": err, "user_id": "user_fake"})
        gen_id = f"gen-{1745000000 + self._seq}-Fake{self._seq:04d}"
        answer = Answer.build(body, s, gen_id, self.prices.get(str(body.get("model")), DEFAULT_PRICE))
        self.generations[gen_id] = answer.generation()
        if not body.get("stream"):
            return web.json_response(answer.completion(), headers={"X-Generation-Id": gen_id})
        return await self._stream(request, answer, s, gen_id)

    async def _stream(self, request: web.Request, answer: Answer, s: Script,
                      gen_id: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Generation-Id": gen_id})
        if s.echo_headers:
            resp.headers["openrouter-provider"] = request.headers.get("Authorization", "")
        await resp.prepare(request)
        if s.echo_headers:
            await resp.write(f": debug {request.headers.get('Authorization')}\n\n".encode())
        for _ in range(s.processing_comments):
            await resp.write(f"{PROCESSING}\n\n".encode())
        events: list[Any] = s.chunks if s.chunks is not None else answer.chunks()
        sent = 0
        silenced = False
        for event in [*events, None]:  # None: the end of the stream
            if not silenced and s.silence and sent >= s.silence_after:
                silenced = True
                await self._silence(resp, s)
            if s.mid_stream_error is not None and sent >= s.mid_stream_error:
                await resp.write(sse(answer.error_chunk()))
                if s.done_after_error:
                    await resp.write(b"data: [DONE]\n\n")
                break
            if s.drop_after is not None and sent >= s.drop_after:
                assert request.transport is not None
                request.transport.close()  # flushes what was written, then FIN: no last chunk, no [DONE]
                return resp
            if event is None:
                if s.chunks is None:
                    await resp.write(b"data: [DONE]\n\n")
                break
            if sent and s.gap:
                await asyncio.sleep(s.gap)
            await resp.write(sse(event))
            if not (isinstance(event, str) and event.startswith(":")):
                sent += 1
        await resp.write_eof()
        return resp

    async def _silence(self, resp: web.StreamResponse, s: Script) -> None:
        left = s.silence
        while left > 0:
            step = min(left, s.keepalive) if s.keepalive else left
            await asyncio.sleep(step)
            left -= step
            if s.keepalive and left > 0:
                await resp.write(f"{PROCESSING}\n\n".encode())


def sse(event: Any) -> bytes:
    """One SSE event: a str is sent verbatim as a line (comments, ``data: [DONE]``), a dict as JSON data."""
    if isinstance(event, str):
        return f"{event}\n\n".encode()
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


@dataclass
class Answer:
    """The deterministic reply to one request, renderable as SSE chunks or one B.4 JSON."""

    gen_id: str
    model: str
    s: Script
    reasoning: str
    content: str
    tool: dict[str, Any] | None
    prompt_tokens: int
    price: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRICE))
    created: int = 1745000000

    @classmethod
    def build(cls, body: dict[str, Any], s: Script, gen_id: str,
              price: dict[str, str] | None = None) -> Answer:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        user_text = MARKER_RE.sub("", text_of(users[-1])).strip() if users else ""
        last_text = text_of(messages[-1]) if messages else ""
        reasoning = s.reasoning if s.reasoning is not None else (
            f"Okay, the user asks: {user_text[:40]}. Let me think about it step by step.")
        content = s.answer if s.answer is not None else f"Answer to: {user_text[:40]}"
        if s.answer_size > len(content):
            filler = " The quick brown fox jumps over the lazy dog."
            content = (content + filler * (s.answer_size // len(filler) + 1))[:s.answer_size]
        tools = body.get("tools") or []
        wants_tool = s.tool_call if s.tool_call is not None else bool(tools) and "USE_TOOL" in last_text
        tool = None
        if wants_tool:
            fn = tools[0].get("function", {}) if tools and isinstance(tools[0], dict) else {}
            required = fn.get("parameters", {}).get("required") or ["input"]
            tool = {"id": f"call_fake_{gen_id[-4:]}", "name": fn.get("name", "attempt_completion"),
                    "arguments": json.dumps({k: f"value of {k}" for k in required})}
            content = ""
        if s.reasoning_only:
            content = ""
        if s.think_tags:
            content, reasoning = f"<think>\n{reasoning}\n</think>\n\n{content}", ""
        prompt = len(json.dumps(messages)) // 4
        return cls(gen_id, str(body.get("model", "")), s, reasoning, content, tool, prompt,
                   dict(price if price is not None else DEFAULT_PRICE))

    @property
    def finish(self) -> str:
        return self.s.finish_reason or ("tool_calls" if self.tool else "stop")

    def tokens(self) -> tuple[int, int, int, int, int]:
        """(prompt, completion, reasoning, cached, cache_write) as this answer's usage reports them."""
        rt = len(self.reasoning) // 4 + 1 if self.reasoning else 0
        ct = rt + len(self.content) // 4 + 1 + (len(self.tool["arguments"]) // 4 if self.tool else 0)
        cached = min(self.s.cached_tokens, self.prompt_tokens)
        write = min(self.s.cache_write_tokens, self.prompt_tokens - cached)
        return self.prompt_tokens, ct, rt, cached, write

    def costs(self) -> tuple[float, float]:
        """(billed cost, cache discount) in USD from the listed prices: what OpenRouter bills."""
        prompt, ct, _rt, cached, _write = self.tokens()
        p, c = float(self.price.get("prompt", 0)), float(self.price.get("completion", 0))
        read = float(self.price.get("input_cache_read", self.price.get("prompt", 0)))
        cost = (prompt - cached) * p + cached * read + ct * c  # DeepSeek: writes at the normal input price
        return round(cost, 12), round(cached * (p - read), 12)

    def usage(self) -> dict[str, Any]:
        if self.s.usage is not None:
            return self.s.usage
        prompt, ct, rt, cached, write = self.tokens()
        details: dict[str, Any] = {"cached_tokens": cached}
        if write:
            details["cache_write_tokens"] = write
        out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": ct, "total_tokens": prompt + ct,
                               "prompt_tokens_details": details, "completion_tokens_details": {"reasoning_tokens": rt}}
        if self.s.report_cost:
            cost = self.costs()[0]
            out["cost"] = cost
            out["cost_details"] = {"upstream_inference_cost": None}
        out["is_byok"] = False
        return out

    def generation(self) -> dict[str, Any]:
        """``GET /generation?id=`` data (B.8) for this answer."""
        prompt, ct, rt, cached, _write = self.tokens()
        cost, discount = self.costs()
        if self.s.cache_discount is not None:
            discount = self.s.cache_discount
        return {"id": self.gen_id, "total_cost": cost, "cache_discount": discount, "model": self.model,
                "provider_name": self.s.provider, "tokens_prompt": prompt, "tokens_completion": ct,
                "native_tokens_prompt": prompt, "native_tokens_completion": ct, "native_tokens_reasoning": rt,
                "native_tokens_cached": cached, "is_byok": False}

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "native_finish_reason": finish, "logprobs": None}]
        return {"id": self.gen_id, "provider": self.s.provider, "model": self.model,
                "object": "chat.completion.chunk", "created": self.created, "choices": choices}

    def chunks(self) -> list[Any]:
        """The data events of a normal stream, without [DONE]."""
        out: list[Any] = []
        for piece in split(self.reasoning, self.s.chunk_chars) if self.reasoning else []:
            delta: dict[str, Any] = {"role": "assistant", "content": "", "reasoning": piece}
            if self.s.reasoning_details:
                delta["reasoning_details"] = [{"type": "reasoning.text", "text": piece, "format": "unknown",
                                               "index": 0}]
            out.append(self._chunk(delta))
        pieces = split(self.content, self.s.chunk_chars) if self.content else []
        for piece in pieces:
            out.append(self._chunk({"role": "assistant", "content": piece}))
        if self.tool:
            head = {"index": 0, "id": self.tool["id"], "type": "function",
                    "function": {"name": self.tool["name"], "arguments": ""}}
            out.append(self._chunk({"role": "assistant", "content": None, "tool_calls": [head]}))
            for part in split(self.tool["arguments"], max(1, len(self.tool["arguments"]) // 3)):
                out.append(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        if out and out[-1]["choices"] and not self.tool and pieces:
            last = out[-1]["choices"][0]
            last["finish_reason"] = last["native_finish_reason"] = self.finish
        else:
            out.append(self._chunk({"role": "assistant", "content": ""}, self.finish))
        usage = self._chunk(None)
        usage["usage"] = self.usage()
        out.append(usage)
        return out

    def error_chunk(self) -> dict[str, Any]:
        """The B.10 mid-stream error event."""
        return {"id": self.gen_id, "object": "chat.completion.chunk", "created": self.created + 42,
                "model": self.model, "provider": self.s.provider,
                "error": {"code": 502, "message": self.s.message or "Provider disconnected unexpectedly",
                          "metadata": {"error_type": "provider_unavailable",
                                       **({"raw": self.s.message} if self.s.echo_headers else {})}},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                             "native_finish_reason": None}]}

    def completion(self) -> dict[str, Any]:
        """The B.4 non-stream JSON body."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning"] = self.reasoning
            message["reasoning_details"] = [{"type": "reasoning.text", "text": self.reasoning,
                                             "format": "unknown", "index": 0}]
        if self.tool:
            fn = {"name": self.tool["name"], "arguments": self.tool["arguments"]}
            message["tool_calls"] = [{"id": self.tool["id"], "type": "function", "function": fn}]
        return {"id": self.gen_id, "object": "chat.completion", "created": self.created, "model": self.model,
                "provider": self.s.provider,
                "choices": [{"index": 0, "finish_reason": self.finish, "native_finish_reason": self.finish,
                             "message": message}],
                "usage": self.usage()}


if __name__ == "__main__":  # python fake_upstream.py PORT [KEY]: serve on 127.0.0.1 (.ci/systemd-check.sh)
    import sys

    web.run_app(FakeOpenRouter(api_key=sys.argv[2] if len(sys.argv) > 2 else None).app,
                host="127.0.0.1", port=int(sys.argv[1]), print=None)
