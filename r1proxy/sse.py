"""SSE framing: an incremental parser for upstream bytes and the frames r1proxy writes.

Comments (``: OPENROUTER PROCESSING``) stay comments; ``data:`` payloads are yielded whole,
however the bytes were split across reads. Nothing here knows about caching or upstreams.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class SSEParser:
    """Feed bytes, get events. Lines may be split anywhere, including inside UTF-8."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[Event] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    out.append(Event(data="\n".join(self._data), event=self._event))
                self._data = []
                self._event = None
                continue
            text = line.decode("utf-8", errors="replace")
            if text.startswith(":"):
                out.append(Event(comment=text[1:].strip()))
            elif text.startswith("data:"):
                v = text[5:]
                self._data.append(v[1:] if v.startswith(" ") else v)
            elif text.startswith("event:"):
                self._event = text[6:].strip()
            # id:, retry: and unknown fields carry nothing r1proxy relays
        return out

    def close(self) -> list[Event]:
        """Flush a final event that was not followed by a blank line."""
        out = self.feed(b"\n\n") if (self._buf or self._data) else []
        return out


def data_frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def comment_frame(text: str) -> bytes:
    # a comment must stay one line: a newline in it would end the comment and start data
    return b": " + text.replace("\r", " ").replace("\n", " ").encode() + b"\n\n"
