"""The SSE parser (#11): every line ending the spec allows, a cap on one event, invalid UTF-8 noted."""

from __future__ import annotations

import pytest

from r1proxy import redact
from r1proxy.sse import EventTooLarge, SSEParser


def feed_all(parser: SSEParser, *chunks: bytes) -> list[tuple[str | None, str | None]]:
    out = []
    for c in chunks:
        out += [(e.data, e.comment) for e in parser.feed(c)]
    out += [(e.data, e.comment) for e in parser.close()]
    return out


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_parses(eol: bytes) -> None:
    raw = b": hi" + eol + eol + b"data: {\"a\":1}" + eol + eol + b"data: x" + eol + b"data: y" + eol + eol
    whole = feed_all(SSEParser(), raw)
    assert whole == [(None, "hi"), ('{"a":1}', None), ("x\ny", None)]
    for cut in range(len(raw)):  # split anywhere, including between CR and LF
        assert feed_all(SSEParser(), raw[:cut], raw[cut:]) == whole, cut
    assert feed_all(SSEParser(), *[raw[i:i + 1] for i in range(len(raw))]) == whole


def test_a_crlf_split_across_reads_is_one_line_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert [e.data for e in p.feed(b"\n\r\n")] == ["a"]


def test_one_event_bigger_than_the_cap_is_refused() -> None:
    p = SSEParser(max_event=1000)
    p.feed(b"data: " + b"x" * 500 + b"\n\n")  # under the cap
    with pytest.raises(EventTooLarge):
        for _ in range(10):
            p.feed(b"y" * 200)  # one line that never ends
    p = SSEParser(max_event=1000)
    with pytest.raises(EventTooLarge):
        for _ in range(10):
            p.feed(b"data: " + b"z" * 200 + b"\n")  # many data lines of one event


def test_a_huge_event_in_small_reads_is_whole_and_not_rejoined_per_read() -> None:
    p = SSEParser(max_event=64 * 1024 * 1024)
    piece = b"a" * 16384
    p.feed(b"data: ")
    for _ in range(2000):  # 32 MB in one line: the old parser copied the buffer on every read
        assert p.feed(piece) == []
    (ev,) = p.feed(b"\n\n")
    assert ev.data is not None and len(ev.data) == 2000 * 16384


def test_invalid_utf8_is_replaced_and_noted() -> None:
    p = SSEParser()
    (ev,) = p.feed(b'data: {"c":"\xff\xfe"}\n\n')
    assert ev.data == '{"c":"\ufffd\ufffd"}' and p.invalid_utf8
    q = SSEParser()
    q.feed("data: é\n\n".encode()[:7])  # split inside a UTF-8 sequence: not invalid
    q.feed("data: é\n\n".encode()[7:])
    assert not q.invalid_utf8


def test_secrets_are_masked_in_data_and_comments() -> None:
    redact.register(["sse-secret-0123456789"])
    (c, d) = SSEParser().feed(b": x sse-secret-0123456789\n\ndata: {\"m\":\"sse-secret-0123456789\"}\n\n")
    assert c.comment == f"x {redact.MASK}" and d.data == f'{{"m":"{redact.MASK}"}}'


def test_events_yields_each_event_before_parsing_the_rest_of_the_read() -> None:
    """A read that holds a whole burst: its first token is relayed before the rest is parsed (the
    rest here would raise: an event over the cap)."""
    p = SSEParser(max_event=64)
    it = p.events(b'data: {"a":1}\n\n' + b"data: " + b"x" * 100 + b"\n\n")
    first = next(it)
    assert first.data == '{"a":1}'
    with pytest.raises(EventTooLarge):
        next(it)


def test_events_and_feed_agree_however_the_bytes_are_split() -> None:
    stream = b': c\r\n\r\ndata: {"a":1}\n\nevent: x\rdata: 2\r\ndata: 3\r\n\r\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 7, len(stream)):
        a, b = SSEParser(), SSEParser()
        got_a = [e for i in range(0, len(stream), size) for e in a.feed(stream[i:i + size])]
        got_b = [e for i in range(0, len(stream), size) for e in b.events(stream[i:i + size])]
        assert got_a == got_b and [e.data for e in got_b] == [None, '{"a":1}', "2\n3", "[DONE]"]
