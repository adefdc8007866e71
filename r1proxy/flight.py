"""One upstream call, shared by every identical request in flight (single-flight).

A ``Flight`` runs as its own task: it tries each route (deployments, then fallbacks) with
bounded retries before the first byte, then reads the reply, normalising and assembling it.
Followers (the client handlers) read ``items`` as they grow: a late joiner first gets all
that was emitted so far, then follows live. The task does not depend on any one client,
so an answer can still be finished and cached after its client left.

``Flights`` is the registry of flights in progress: it starts, joins, counts followers,
cancels an abandoned flight and runs the completion callback; nothing else touches a
flight's lifecycle. With a ``Shared`` coordinator (Redis, ``r1proxy.coalesce``), a flight first
asks it whether another process already leads the same call: then the flight follows that
leader's frames instead of calling upstream (``remote``), and otherwise leads and is published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import aiohttp

from .balance import backoff_delay, retry_after_seconds
from .completion import Assembler, Normalizer, dumps, not_cacheable
from .config import RetryConfig, UpstreamConfig
from .errors import ProxyError, explain_in_stream, from_upstream, in_stream_error
from .route import FailedAttempt, Hooks, Outcome, Route, explain
from .rules import NO_FALLBACK, RETRYABLE, final, is_daily_quota
from .sse import DEFAULT_MAX_EVENT, Event, EventTooLarge, SSEParser, comment_frame, data_frame
from .upstream import UpstreamError, open_response, read_body, read_error, request_headers, response_headers, sse_json

log = logging.getLogger("r1proxy")


class Shared(Protocol):
    """Coalescing across processes (``r1proxy.coalesce.Coalescer``)."""

    async def follow(self, flight: Flight) -> bool:
        """True when another process's call answered this flight (it is complete but for ``finished``);
        False when this process must call upstream itself (and may publish the flight as it runs)."""


class Flight:
    def __init__(self, key: str, stream: bool) -> None:
        self.key = key
        self.stream = stream
        self.items: list[Any] = []  # normal-form chunk dicts, and bytes for comment frames
        # item index -> the chunk's frame as the "field" reasoning mode sends it (the upstream's own bytes
        # when normalising changed nothing), encoded once by the flight for every follower
        self.frames: dict[int, bytes] = {}
        self.data_count = 0
        self.started = False  # upstream answered 200: followers may send headers
        # the upstream's stream ended with [DONE] after data and without an error: followers end their
        # clients' streams now; the answer is assembled (``result``) and judged for the cache after that
        self.ended = False
        self.finished = False
        self.error: ProxyError | None = None
        self.error_in_stream = False  # the error was emitted as an item (after data)
        self.result: dict[str, Any] | None = None
        self.cacheable = False
        self.store = True  # whether any follower allows storing the answer (Cache-Control: no-store)
        self.headers: dict[str, str] = {}
        self.outcome = Outcome()
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self.max_event = DEFAULT_MAX_EVENT  # stream.max_event_mb
        self.shared: Shared | None = None
        self.remote = False  # answered by another process's upstream call (coalesced across processes)
        self._ev = asyncio.Event()

    def changed(self) -> None:
        """Wake followers: items, ``started``, ``result`` or ``error`` changed (for ``Shared``)."""
        self._notify()

    def fail(self, err: ProxyError) -> None:
        """End with an error: an in-stream error event when data already went out."""
        self._fail(err)

    def _notify(self) -> None:
        ev, self._ev = self._ev, asyncio.Event()
        ev.set()

    async def wait(self, timeout: float | None) -> None:
        """Wait until something new happens (or timeout); never raises for the timeout."""
        ev = self._ev
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            pass

    def _finish(self) -> None:
        self.finished = True
        self._notify()

    async def run(self, session: aiohttp.ClientSession, routes: list[Route], client_headers: dict[str, str],
                  retry: RetryConfig, hooks: Hooks, on_done: Callable[[Flight], Awaitable[None]]) -> None:
        try:
            if self.shared is None or not await self.shared.follow(self):
                await self._run(session, routes, client_headers, retry, hooks)
        except asyncio.CancelledError:
            self.error = self.error or ProxyError(499, "request cancelled", type="cancelled")
            raise
        except Exception as e:  # a bug must not leave followers waiting forever
            log.exception("flight %s failed", self.key)
            self.error = ProxyError(500, f"Internal error in r1proxy: {type(e).__name__}", type="api_error")
        finally:
            self._finish()
            try:
                await on_done(self)
            except Exception:
                log.exception("flight %s: completion hook failed", self.key)

    async def _run(self, session: aiohttp.ClientSession, routes: list[Route], client_headers: dict[str, str],
                   retry: RetryConfig, hooks: Hooks) -> None:
        t0 = time.monotonic()
        last: ProxyError | None = None
        for route in routes:
            why = hooks.skip(route)
            if why:
                last = last or hooks.skip_error(route, why)
                continue
            for attempt in range(retry.max_attempts):
                err, retry_after = await self._attempt(session, route, client_headers, hooks)
                if err is None:
                    return
                last = err
                if self.data_count:  # bytes reached followers: never retry, never fall back
                    return self._fail(err)
                if (err.status not in RETRYABLE or attempt + 1 >= retry.max_attempts
                        or is_daily_quota(err.status, err.message) or err.code == "upstream_key_missing"):
                    break
                if retry_after is not None and retry_after > retry.max_retry_after_s:
                    break  # a long wait: better served by a fallback, or by the client itself
                # at least half the exponential step: a retry storm is what the upstream needs least
                delay = max(backoff_delay(attempt, retry.base_delay_s, retry.max_delay_s, floor=0.5),
                            retry_after or 0.0)
                if time.monotonic() + delay - t0 > retry.max_total_s:
                    break
                await asyncio.sleep(delay)
            if last is not None and last.status in NO_FALLBACK:
                break
        self._fail(final(last or ProxyError(503, "No route could serve this model"), len(self.outcome.failed)))

    def _fail(self, err: ProxyError) -> None:
        self.error = err
        if self.started and self.stream:
            self.error_in_stream = True
            self.items.append(err.stream_event())
        self._notify()

    async def _attempt(self, session: aiohttp.ClientSession, route: Route, client_headers: dict[str, str],
                       hooks: Hooks) -> tuple[ProxyError | None, float | None]:
        up = route.upstream
        if not up.api_key and (up.api_key_env or up.api_key_file):
            where = f"${up.api_key_env}" if up.api_key_env else "its api_key_file"
            return ProxyError(500, f"r1proxy has no API key for upstream {up.name}: set {where} where r1proxy "
                                   "runs, then restart it", type="configuration_error", code="upstream_key_missing",
                              headers={"x-should-retry": "false"}), None
        try:
            token = await hooks.before_attempt(route)
        except ProxyError as e:  # queued too long, or a quota known to be gone
            return e, None
        status, ttfb, retry_after, payload = 0, None, None, None
        t0 = time.monotonic()
        try:
            # built per route: each upstream gets its own key, never another upstream's
            resp = await open_response(session, up, route.body, request_headers(client_headers, up))
        except UpstreamError as e:
            hooks.after_attempt(route, token, e.status, None, None, None)
            self.outcome.failed.append(FailedAttempt(route.label, 0, e.kind))
            return e, None
        try:
            ttfb = time.monotonic() - t0
            status = resp.status
            retry_after = retry_after_seconds(resp.headers)
            ctype = resp.headers.get("Content-Type", "")
            if status != 200:
                payload = (await read_body(resp, up))[0]
                err = explain(from_upstream(status, payload, up.name, headers=response_headers(resp.headers)),
                              route)
                self.outcome.failed.append(FailedAttempt(route.label, status, f"http_{status}"))
                return err, retry_after
            self.outcome.route = route.label
            self.outcome.ttfb = ttfb
            self.outcome.generation_id = resp.headers.get("X-Generation-Id", "")
            self.headers = response_headers(resp.headers)
            if "text/event-stream" in ctype:
                problem = await self._read_stream(resp, up)
            else:
                payload, clean = await read_body(resp, up)
                problem = self._take_json(payload, up)
                self.cacheable = self.cacheable and clean  # bytes that were not UTF-8: relayed, not kept
            failed = problem or self.error
            if failed is not None:  # a 200 that carried an error, or a stream that broke off
                kind = failed.code if isinstance(failed.code, str) else "error_in_reply"
                self.outcome.failed.append(FailedAttempt(route.label, 200, kind))
            return problem, None
        except UpstreamError as e:
            status = e.status
            self.outcome.failed.append(FailedAttempt(route.label, status, e.kind))
            return e, None
        finally:
            resp.release()
            hooks.after_attempt(route, token, status, ttfb, retry_after, payload)

    def _take_json(self, payload: Any, up: UpstreamConfig) -> ProxyError | None:
        if not isinstance(payload, dict) or "error" in payload or not isinstance(payload.get("choices"), list):
            status = 502
            err = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(err, dict) and isinstance(err.get("code"), int) and 400 <= err["code"] < 600:
                status = err["code"]
            if err is None:
                payload = {"error": {"message": f"Upstream {up.name} sent a reply that is not a chat completion"}}
            return from_upstream(status, payload, up.name)
        doc = Normalizer.message(payload)
        self.result = doc
        self.cacheable = not_cacheable(doc) is None
        if self.stream:  # a streaming follower of a JSON reply gets a replay of it
            self.started = True
        self._notify()
        return None

    async def _read_stream(self, resp: aiohttp.ClientResponse, up: UpstreamConfig) -> ProxyError | None:
        """Relay the stream: each read's events become items (and frames) that followers write before
        anything else is done with them; assembling the answer for the cache comes after that."""
        parser, norm, asm = SSEParser(self.max_event), Normalizer(), Assembler()
        self.started = True
        self._notify()
        fed = 0  # items already given to the assembler
        try:
            async for data in resp.content.iter_any():
                if asm.done:
                    continue  # read to the end (the connection is reused); nothing after [DONE] is relayed
                before = len(self.items)
                for ev in parser.events(data):  # the first event is relayed before the rest is parsed
                    had = self.data_count
                    if self._event(ev, norm, up):
                        self.ended = self.data_count > 0 and self.error is None
                        asm.done = True
                        break
                    if had == 0 and self.data_count == 1:
                        # the first token goes out now, not after the rest of this read is processed
                        self._notify()
                        await asyncio.sleep(0)
                if len(self.items) > before or self.ended:
                    self._notify()
                    await asyncio.sleep(0)  # followers write these frames first
                fed = self._assemble(asm, fed)
        except (aiohttp.ClientError, OSError, TimeoutError, EventTooLarge, UpstreamError) as e:
            if not self.ended:
                if not self.data_count:
                    return read_error(up, e)
                self._fail(read_error(up, e))
                return None
        self._assemble(asm, fed)
        if self.error is not None:
            return None
        if not asm.done:
            if not self.data_count:
                return ProxyError(502, f"Upstream {up.name} closed the stream before sending anything")
            self._fail(ProxyError(502, f"Upstream {up.name} ended the stream without [DONE]; the answer is "
                                       "incomplete", type="upstream_error", code="incomplete_stream"))
            return None
        self.result = asm.completion()
        self.cacheable = not_cacheable(self.result) is None and not parser.invalid_utf8
        return None

    def _event(self, ev: Event, norm: Normalizer, up: UpstreamConfig) -> bool:
        """One upstream SSE event into ``items`` (normalised, framed once); True at ``[DONE]``."""
        if ev.comment is not None:
            self.items.append(comment_frame(ev.comment))
            return False
        text = ev.data
        if text is None:
            return False
        if text == "[DONE]":
            return True
        chunk = sse_json(text, up)
        if not isinstance(chunk, dict):
            return False  # never relay a non-JSON data line (openai-node would throw)
        edited = "error" in chunk
        if edited:  # the one field Roo shows: give it the status and metadata.raw
            chunk["error"] = explain_in_stream(chunk["error"])
        norm.chunk(chunk)
        # a multi-line data field needs re-framing
        same = not norm.changed and not edited and "\n" not in text
        self.frames[len(self.items)] = data_frame(text.encode() if same else dumps(chunk))
        self.items.append(chunk)
        self.data_count += 1
        if edited:
            self.error, self.error_in_stream = in_stream_error(chunk["error"]), True
        return False

    def _assemble(self, asm: Assembler, fed: int) -> int:
        """Give the assembler the chunks it has not seen yet; the new count."""
        items = self.items
        for n in range(fed, len(items)):
            item = items[n]
            if not isinstance(item, bytes):
                asm.feed(item)
        return len(items)


OnDone = Callable[[Flight], Awaitable[None]]


class Flights(Mapping[str, Flight]):
    """The flights in progress, by cache key (a read-only mapping); owns their lifecycle.

    ``start`` runs a new flight as a task; ``join`` finds a live one to follow; ``following``
    counts a follower for as long as it reads, and cancels a flight nobody listens to any
    more when the answer need not be finished for the cache.
    """

    def __init__(self, session: aiohttp.ClientSession, retry: RetryConfig, hooks: Hooks,
                 shared: Shared | None = None) -> None:
        self.session = session
        self.retry = retry
        self.hooks = hooks
        self.shared = shared
        self._live: dict[str, Flight] = {}
        self.tasks: set[asyncio.Task[Any]] = set()  # flights and the work they leave behind

    def __getitem__(self, key: str) -> Flight:
        return self._live[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def join(self, key: str) -> Flight | None:
        """A flight for ``key`` that is still running, to follow instead of calling upstream."""
        flight = self._live.get(key) if key else None
        return flight if flight is not None and not flight.finished else None

    def start(self, key: str, stream: bool, routes: list[Route], client_headers: dict[str, str], *,
              store: bool, on_done: OnDone, coalesce: bool = True) -> Flight:
        """Start one upstream call; ``on_done`` runs when it ends (registered under ``key`` when set).
        ``coalesce=False`` (a client that asked for a fresh answer) never follows another process's call."""
        flight = Flight(key, stream)
        flight.store = store
        # only a cache key identifies a call across processes
        flight.shared = self.shared if key and coalesce else None

        async def done(f: Flight) -> None:
            if key and self._live.get(key) is f:
                del self._live[key]
            await asyncio.sleep(0)  # followers send [DONE] first; compressing for the store can wait
            await on_done(f)

        if key:
            self._live[key] = flight
        flight.task = asyncio.get_running_loop().create_task(
            flight.run(self.session, routes, client_headers, self.retry, self.hooks, done))
        self.keep(flight.task)
        return flight

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold background work until it ends (``drain`` waits for it at shutdown)."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @contextmanager
    def following(self, flight: Flight, *, finish_alone: bool) -> Iterator[Flight]:
        """Count one follower while the body runs; the last one to leave cancels the flight unless
        ``finish_alone`` (finish for the cache even with nobody listening)."""
        flight.followers += 1
        try:
            yield flight
        finally:
            flight.followers -= 1
            if flight.followers <= 0 and not flight.finished and flight.task is not None and not finish_alone:
                flight.task.cancel()

    async def drain(self, timeout: float) -> None:
        """Let flights (and the storing they leave behind) finish within ``timeout``; cancel the rest."""
        if self.tasks:
            _, late = await asyncio.wait(list(self.tasks), timeout=timeout) if timeout > 0 else ((), set(self.tasks))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
