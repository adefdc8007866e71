"""Answering one client: from a stored entry (HIT, STALE) or by following a flight (JSON or SSE).

Everything here takes explicit inputs — the request's record, the entry or the flight, the
reasoning mode, the stream timings, a stale finder, the clock — and never calls back into
the gateway. A stale answer is a value (``Stale``) that the caller serves like a hit; only
when SSE headers already went out (keep-alives) does the stream itself carry it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from . import sse
from .accounting import RequestRecord
from .cache import CacheEntry, TieredCache
from .clock import Clock
from .completion import Renderer, dumps, render_json, render_sse
from .config import StreamConfig
from .errors import ProxyError
from .flight import Flight
from .guard import cors_headers
from .rules import COALESCED, MISS, STALE
from .usage import Usage

FindStale = Callable[[ProxyError | None], Awaitable[CacheEntry | None]]


@dataclass(frozen=True, slots=True)
class Stale:
    """The flight failed and this expired entry may answer instead (stale-if-error)."""

    entry: CacheEntry


def headers_for(rec: RequestRecord, tier: str = "", age: float | None = None) -> dict[str, str]:
    h = {"X-Cache": rec.cache, "X-Request-Id": rec.request_id}
    if rec.cache_key:
        h["X-Cache-Key"] = rec.cache_key
    if tier:
        h["X-Cache-Tier"] = tier
    if age is not None:
        h["Age"] = str(int(max(0.0, age)))
    if rec.route:
        h["X-R1proxy-Route"] = rec.route
    return h


JSON_TYPE = "application/json"


def send_entry(rec: RequestRecord, entry: CacheEntry, tier: str, *, stream: bool, mode: str, label: str,
               now: float, cache: TieredCache, clock: Clock, hit_usage: str = "real") -> web.Response:
    """The whole reply from a stored entry, in the shape the client asked for."""
    rec.cache, rec.tier = label, tier
    variant = (mode, stream)
    body = entry.rendered.get(variant)
    if body is None:
        body = (render_sse(entry.completion, mode, hit_usage=hit_usage) if stream
                else render_json(entry.completion, mode, cached=True, hit_usage=hit_usage))
        cache.note_rendered(entry, variant, body)
    rec.usage = entry.usage()
    rec.cost_saved = entry.cost
    rec.provider = str(entry.completion.get("provider") or "")
    rec.ttfb = clock.monotonic() - rec.t0
    rec.response_bytes = len(body)
    headers = headers_for(rec, tier, now - entry.created_at)
    if label == STALE:
        headers["Warning"] = '110 r1proxy "Response is stale"'
    if stream:
        headers.update(sse.SSE_HEADERS)
    else:
        headers["Content-Type"] = JSON_TYPE  # what content_type= would set, without its checks
    return web.Response(body=body, headers=headers)


def follows_remote(rec: RequestRecord, flight: Flight) -> None:
    """Another process made the upstream call (r1proxy.coalesce): this request is its follower."""
    if flight.remote and rec.cache == MISS:
        rec.cache = COALESCED


def take_outcome(rec: RequestRecord, flight: Flight) -> None:
    """What the flight learned goes into the record; a follower's answer was paid by its leader."""
    rec.route = flight.outcome.route
    rec.generation_id = flight.outcome.generation_id
    follows_remote(rec, flight)
    if rec.cache == COALESCED:
        if flight.result is not None:
            rec.cost_saved = Usage.of_completion(flight.result).cost
    else:
        rec.failed_attempts = flight.outcome.failed
        rec.ttfb = rec.ttfb if rec.ttfb is not None else flight.outcome.ttfb
    if flight.result is not None:
        rec.usage = Usage.of_completion(flight.result)
        rec.provider = str(flight.result.get("provider") or "")


async def follow_json(rec: RequestRecord, flight: Flight, mode: str,
                      find_stale: FindStale) -> web.Response | Stale:
    while not flight.finished:
        await flight.wait(None)
    take_outcome(rec, flight)
    if flight.result is None:
        stale = await find_stale(flight.error)
        if stale is not None:
            return Stale(stale)
        raise flight.error or ProxyError(502, "Upstream gave no answer")
    body = render_json(flight.result, mode)
    rec.response_bytes = len(body)
    headers = headers_for(rec)
    headers.update(flight.headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


class _HeadersWithFirstWrite(web.StreamResponse):
    """A stream whose status line and headers wait for its first write: aiohttp then sends both in one
    ``send`` (the client gets its first frame in the same segment as the headers, not one wake-up later).
    Only for a stream opened with a frame ready to write at once; if a later aiohttp drops this switch,
    headers are simply sent when prepared, as before."""

    _send_headers_immediately = False


class StreamFollower:
    """Relays a flight to one SSE client: early headers and keep-alives while the upstream is
    quiet, frames as they come (a late joiner first gets what was emitted so far), then the end:
    ``[DONE]``, a replay of a JSON answer, an in-stream error, or a stale answer."""

    def __init__(self, request: web.Request, rec: RequestRecord, flight: Flight, mode: str,
                 timing: StreamConfig, find_stale: FindStale, clock: Clock) -> None:
        self.request = request
        self.rec = rec
        self.flight = flight
        self.mode = mode
        self.timing = timing
        self.find_stale = find_stale
        self.clock = clock
        self.renderer = Renderer(mode)
        self.resp: web.StreamResponse | None = None
        self.sent = 0  # items of the flight already written

    async def run(self) -> web.StreamResponse | Stale:
        try:
            await self._relay()
            return await self._finish()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.rec.status, self.rec.error_type = 499, "client_closed"
            if self.resp is None:
                raise
            return self.resp

    async def _open(self, *, writing: bool = False) -> web.StreamResponse:
        """Prepare the client's stream; ``writing``: a write follows at once, so the headers go out with it."""
        self.rec.route = self.flight.outcome.route  # known once upstream answered (not for early headers)
        follows_remote(self.rec, self.flight)
        headers = headers_for(self.rec)
        headers.update(self.flight.headers)
        headers.update(sse.SSE_HEADERS)
        resp = (_HeadersWithFirstWrite if writing else web.StreamResponse)(status=200, headers=headers)
        cors_headers(self.request, resp)  # before prepare: no on_response_prepare hook does it (edge.py)
        await resp.prepare(self.request)
        self.resp = resp
        return resp

    async def _write(self, data: bytes) -> None:
        assert self.resp is not None
        self.rec.response_bytes += len(data)
        await self.resp.write(data)

    def _frames(self) -> bytes:
        """Every item not yet sent, framed for this client's reasoning mode."""
        flight, rec = self.flight, self.rec
        items = flight.items
        frames = flight.frames if self.mode == "field" else {}
        out = []
        for n in range(self.sent, len(items)):
            item = items[n]
            if isinstance(item, bytes):
                out.append(item)
                continue
            if rec.ttfb is None:
                rec.ttfb = self.clock.monotonic() - rec.t0
            frame = frames.get(n)
            if frame is None:
                frame = sse.data_frame(dumps(self.renderer.chunk(item) if self.mode != "field" else item))
            out.append(frame)
        self.sent = len(items)
        return b"".join(out)

    async def _relay(self) -> None:
        flight = self.flight
        loop_time = self.clock.monotonic
        early_at = loop_time() + self.timing.early_headers_s
        while True:
            if self.resp is None and (flight.started or (flight.finished and flight.result is not None)):
                # frames ready (or an answer to replay, or the end): the headers go out with them; an
                # upstream that answered but is quiet still gets its headers at once, as Roo wants
                await self._open(writing=self.sent < len(flight.items) or flight.finished)
            if flight.ended and self.resp is not None:
                return  # what is left goes out with [DONE], in one write
            if self.resp is not None and self.sent < len(flight.items):
                await self._write(self._frames())
                continue
            if flight.finished:
                return
            if self.resp is None:
                timeout = max(0.0, early_at - loop_time())
                if timeout <= 0:
                    # headers now: Node's fetch gives up after 300 s without them
                    await self._open(writing=True)
                    await self._write(sse.KEEPALIVE)
                    continue
            else:
                timeout = self.timing.keepalive_s
            before = len(flight.items)
            await flight.wait(timeout)
            if self.resp is not None and len(flight.items) == before and not flight.finished:
                await self._write(sse.KEEPALIVE)

    async def _finish(self) -> web.StreamResponse | Stale:
        flight, rec = self.flight, self.rec
        if flight.ended and self.resp is not None:
            # the upstream's [DONE]: the client's stream ends now; the record waits for the assembled answer
            await self._write(self._frames() + sse.DONE)
            await self.resp.write_eof()
            while not flight.finished:
                await flight.wait(None)
            take_outcome(rec, flight)
            return self.resp
        take_outcome(rec, flight)
        if flight.result is not None and flight.data_count == 0 and flight.error is None:
            # a JSON reply (or a joined non-stream flight) followed by a streaming client: replay it
            rec.ttfb = rec.ttfb or (self.clock.monotonic() - rec.t0)
            await self._write(render_sse(flight.result, self.mode, cached=False))
        elif flight.error is not None and not flight.error_in_stream:
            stale = await self.find_stale(flight.error)
            if self.resp is None:
                if stale is not None:
                    return Stale(stale)
                raise flight.error
            if stale is not None:
                # only keep-alives went out: the stale answer can still be the whole reply (the
                # X-Cache header said MISS already, so a comment says what happened)
                rec.cache, rec.cost_saved = STALE, stale.cost
                rec.usage = Usage.of_completion(stale.completion)
                await self._write(sse.comment_frame(f"r1proxy: upstream failed ({flight.error.status}); "
                                                    "serving a stale cached answer")
                                  + render_sse(stale.completion, self.mode))
            else:
                # headers already went out (keep-alives): the error must be a final data event
                rec.status, rec.error_type = flight.error.status, flight.error.type
                await self._write(sse.data_frame(dumps(flight.error.stream_event())))
        elif flight.error is not None:
            rec.status, rec.error_type = flight.error.status, flight.error.type
        else:
            await self._write(sse.DONE)
        assert self.resp is not None
        await self.resp.write_eof()
        return self.resp
