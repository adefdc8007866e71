"""Property: an SSE stream parsed in arbitrary slices gives exactly the events of one feed.

Streams are generated from events (data lines, comments, event names, ids), written with LF, CRLF
or bare CR line ends and multi-byte UTF-8, then cut at random byte offsets: inside a CRLF pair,
inside a UTF-8 sequence, with empty reads in between.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1proxy.sse import SSEParser

# text that never contains a line end; includes 2-, 3- and 4-byte UTF-8 (é, €, 🧠) and a colon
_text = st.text(alphabet=st.sampled_from(list('ab {}":,é€🧠\\x')), max_size=12)
_line = st.one_of(
    st.builds(lambda t: f"data: {t}", _text),
    st.builds(lambda t: f"data:{t}", _text),
    st.builds(lambda t: f": {t}", _text),  # a comment (OpenRouter's ": OPENROUTER PROCESSING")
    st.builds(lambda t: f"event: {t}", _text),
    st.builds(lambda t: f"id: {t}", _text),
    st.just("data"),  # a field with no colon
)
_event = st.lists(_line, min_size=1, max_size=4)
_eol = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    out = []
    for event in draw(st.lists(_event, max_size=6)):
        for line in event:
            out.append(line + draw(_eol))
        out.append(draw(_eol))  # the blank line that ends the event
    return "".join(out).encode("utf-8")


@st.composite
def sliced(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    raw = draw(streams())
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    bounds = [0, *cuts, len(raw)]
    return raw, [raw[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def parse(chunks: list[bytes]) -> list[tuple[str | None, str | None, str | None]]:
    p = SSEParser()
    events = [e for c in chunks for e in p.feed(c)] + p.close()
    return [(e.data, e.comment, e.event) for e in events]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sliced())
def test_any_slicing_parses_like_one_feed(case: tuple[bytes, list[bytes]]) -> None:
    raw, chunks = case
    assert b"".join(chunks) == raw
    assert parse(chunks) == parse([raw])


@settings(max_examples=200, deadline=None)
@given(streams())
def test_one_byte_at_a_time_parses_like_one_feed(raw: bytes) -> None:
    assert parse([raw[i:i + 1] for i in range(len(raw))]) == parse([raw])


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(0, 400), max_size=8))
def test_empty_reads_change_nothing(raw: bytes, at: list[int]) -> None:
    """aiohttp never hands out an empty read, but a relay loop might: it must be a no-op
    (including between the CR and the LF of a CRLF)."""
    chunks, last = [], 0
    for cut in sorted(min(a, len(raw)) for a in at):
        chunks += [raw[last:cut], b""]
        last = cut
    chunks.append(raw[last:])
    assert parse(chunks) == parse([raw])


def test_an_empty_read_inside_a_crlf_is_a_no_op() -> None:
    raw = b"data: a\r\ndata: b\r\n\r\n"
    assert parse([raw]) == [("a\nb", None, None)]
    assert parse([raw[:8], b"", raw[8:]]) == parse([raw])


def test_the_one_feed_reference_is_right() -> None:
    """The property compares against one feed, so pin what one feed gives for every line end."""
    for eol in ("\n", "\r\n", "\r"):
        raw = f": hi{eol}{eol}event: x{eol}data: é€{eol}data:🧠{eol}id: 1{eol}{eol}".encode()
        assert parse([raw]) == [(None, "hi", None), ("é€\n🧠", None, "x")], eol
