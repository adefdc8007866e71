"""SSE framing: an incremental parser for upstream bytes and the frames r1proxy writes.

Comments (``: OPENROUTER PROCESSING``) stay comments; ``data:`` payloads are yielded whole,
however the bytes were split across reads. Nothing here knows about caching or upstreams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import redact

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


@dataclass(slots=True)
class Event:
    """One SSE item: a comment (``comment`` set) or a data event (``data`` set)."""

    data: str | None = None
    comment: str | None = None
    event: str | None = None


class EventTooLarge(ValueError):
    """One event grew past the parser's cap (``stream.max_event_mb``)."""


DEFAULT_MAX_EVENT = 8 * 1024 * 1024


class SSEParser:
    """Feed bytes, get events. Lines may be split anywhere, including inside UTF-8.

    Cost is linear in the bytes fed: an unfinished line is kept as a list of pieces and joined
    once, when its end arrives. Lines end in LF, CRLF or a bare CR (the SSE spec allows all three,
    and a CRLF split across two reads is one line end). An event bigger than ``max_event``
    bytes raises ``EventTooLarge``. Bytes that are not UTF-8 are replaced (U+FFFD) and noted in
    ``invalid_utf8``: such an answer may be relayed but must not be cached. Configured secrets
    are masked in every payload (r1proxy.redact).
    """

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self.max_event = max_event
        self.invalid_utf8 = False
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._skip_lf = False
        self._data: list[str] = []
        self._data_len = 0
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        return list(self.events(chunk))

    def events(self, chunk: bytes) -> Iterator[Event]:
        """``feed``, one event at a time: each is yielded before the rest of the chunk is parsed (a read
        that holds a whole burst, ~110 events and ~200 us of parsing, need not wait for its last event
        before its first token is relayed). Stop iterating early only when nothing after is wanted
        (the upstream's ``[DONE]``): the rest of the chunk is then never parsed."""
        if not chunk:  # an empty read changes nothing (not even a pending CR's LF skip)
            return
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return
        out: list[Event] = []
        for piece in chunk.splitlines(keepends=True):
            last = piece[-1:]
            if last != b"\n" and last != b"\r":  # an unfinished line: only the end of a chunk
                self._pending.append(piece)
                self._pending_len += len(piece)
                self._check(0)
                break
            body = piece[:-2] if piece.endswith(b"\r\n") else piece[:-1]
            if self._pending:
                self._pending.append(body)
                body = b"".join(self._pending)
                self._pending.clear()
                self._pending_len = 0
            self._line(body, out)
            if out:  # a line ends at most one event
                yield out.pop()
        else:
            self._skip_lf = chunk.endswith(b"\r")

    def _check(self, extra: int) -> None:
        if self._data_len + self._pending_len + extra > self.max_event:
            raise EventTooLarge(f"an event is larger than {self.max_event / 1048576:g} MB")

    def _decode(self, line: bytes) -> str:
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self.invalid_utf8 = True
            return line.decode("utf-8", errors="replace")

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            if self._data:
                data = "\n".join(self._data)
                out.append(Event(data=redact.text(data) if redact.active() else data, event=self._event))
            self._data = []
            self._data_len = 0
            self._event = None
            return
        self._check(len(line))
        if line[:1] == b":":
            out.append(Event(comment=redact.text(self._decode(line[1:]).strip())))
        elif line[:5] == b"data:":
            v = self._decode(line[5:])
            self._data.append(v[1:] if v.startswith(" ") else v)
            self._data_len += len(line)
        elif line[:6] == b"event:":
            self._event = self._decode(line[6:]).strip()
        # id:, retry: and unknown fields carry nothing r1proxy relays

    def close(self) -> list[Event]:
        """Flush a final event that was not followed by a blank line."""
        self._skip_lf = False
        out = self.feed(b"\n\n") if (self._pending or self._data) else []
        return out


def data_frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def comment_frame(text: str) -> bytes:
    # a comment must stay one line: a newline in it would end the comment and start data
    return b": " + text.replace("\r", " ").replace("\n", " ").encode() + b"\n\n"
