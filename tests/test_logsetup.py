"""Logging: plain and JSON line shapes, one line per request, and redaction of secrets and prompts."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1proxy.logsetup import REDACTED, access_line, journal_prefix, log_requests, redact, setup_logging

SECRET = "sk-or-v1-0123456789abcdef0123456789abcdef"
REQUEST = {"request_id": "r-1", "key_name": "laptop", "alias": "deepseek-r1", "status": 200,
           "cache": "HIT", "tier": "memory", "latency_ms": 0.42, "ttfb_ms": None, "tokens": 1234,
           "bytes": 5678}


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    saved = {}
    for name in ("r1proxy", "aiohttp"):
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.level, lg.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    setup_logging(fmt, stream=buf)
    return logging.getLogger("r1proxy.proxy"), buf


def test_plain_request_line(restore_loggers: None) -> None:
    logger, buf = capture("plain")
    log_requests(logger, [REQUEST])
    out = buf.getvalue()
    assert out.count("\n") == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO request request_id=r-1 key_name=laptop "
        r"alias=deepseek-r1 status=200 cache=HIT tier=memory latency_ms=0.42 tokens=1234 bytes=5678\n", out)


def test_json_request_line(restore_loggers: None) -> None:
    logger, buf = capture("json")
    log_requests(logger, [{**REQUEST, "msg": "spoof", "note": "two\nlines"}])
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["level"] == "INFO" and obj["msg"] == "request" and obj["logger"] == "r1proxy.proxy"
    assert obj["ts"].endswith("Z")
    assert obj["field_msg"] == "spoof"
    assert obj["note"] == "two\nlines"
    assert {k: obj[k] for k in ("request_id", "status", "cache", "latency_ms", "tokens")} == {
        "request_id": "r-1", "status": 200, "cache": "HIT", "latency_ms": 0.42, "tokens": 1234}
    assert "ttfb_ms" not in obj


def test_redaction_drops_names_and_masks_values() -> None:
    fields = {
        "key_name": "laptop", "cache_key": "v1:abc", "api_key": "x", "Authorization": "Bearer abcdefghijk",
        "upstream_secret": "x", "password": "x", "access_token": "x", "token": "x", "x-api-key": "x",
        "tokens": 5, "prompt_tokens": 3, "prompt": "tell me a secret", "messages": [{"role": "user"}],
        "error": f"upstream said: invalid key {SECRET}", "hdr": "Bearer abcdefghijklmnop", "n": None,
        "usage": {"prompt": 7, "completion": 9, "api_key": SECRET},
    }
    out = redact(fields)
    assert out == {"key_name": "laptop", "cache_key": "v1:abc", "tokens": 5, "prompt_tokens": 3,
                   "error": REDACTED, "hdr": REDACTED, "usage": {"prompt": 7, "completion": 9}}


def test_no_secret_reaches_any_output(restore_loggers: None) -> None:
    for fmt in ("plain", "json"):
        logger, buf = capture(fmt)
        log_requests(logger, [{"request_id": "r", "upstream_key": SECRET, "detail": SECRET,
                              "headers": {"authorization": SECRET}, "prompt": "PROMPT-TEXT"}])
        logger.warning("retrying", extra={"r1proxy_fields": {"why": f"401 for {SECRET}"}})
        out = buf.getvalue()
        assert SECRET not in out and "sk-or" not in out and "PROMPT-TEXT" not in out
        assert out.count("\n") == 2


def test_access_line_quotes_and_single_line() -> None:
    line = access_line({"a": "x y", "b": 'q"uote', "c": "new\nline", "d": True, "e": 1.5, "f": "", "g": 3})
    assert "\n" not in line
    assert line == 'a="x y" b="q\\"uote" c="new\\nline" d=true e=1.5 f="" g=3'


def test_long_values_truncated() -> None:
    assert len(redact({"err": "x" * 10_000})["err"]) < 300


def test_setup_is_idempotent_and_levels(restore_loggers: None) -> None:
    buf = io.StringIO()
    setup_logging("plain", stream=buf)
    setup_logging("json", logging.WARNING, stream=buf)
    root = logging.getLogger("r1proxy")
    assert len(root.handlers) == 1 and not root.propagate
    logging.getLogger("r1proxy.x").info("hidden")
    logging.getLogger("aiohttp.access").info("aiohttp access line")
    logging.getLogger("aiohttp.server").error("boom")
    lines = buf.getvalue().splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["boom"]
    log_requests(logging.getLogger("r1proxy.x"), [REQUEST])  # below WARNING: nothing
    assert buf.getvalue().splitlines() == lines


def test_exceptions_are_kept(restore_loggers: None) -> None:
    logger, buf = capture("json")
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logger.exception("handler failed", extra={"r1proxy_fields": {"request_id": "r-9"}})
    obj = json.loads(buf.getvalue())
    assert obj["request_id"] == "r-9" and "RuntimeError: bad" in obj["exc"]


def test_bad_format_rejected() -> None:
    with pytest.raises(ValueError):
        setup_logging("xml")


def journal_env(stream: io.TextIOBase | int) -> dict[str, str]:
    """$JOURNAL_STREAM as systemd sets it: device:inode of the stderr it connected to journald."""
    st = os.fstat(stream if isinstance(stream, int) else stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_priority_prefixes(restore_loggers: None, tmp_path: Path) -> None:
    """Under journald every line starts with <N>, so `journalctl -p warning` finds warnings and errors."""
    with open(tmp_path / "stderr", "w+") as f:
        setup_logging("plain", stream=f, env=journal_env(f))
        lg = logging.getLogger("r1proxy.proxy")
        lg.info("hello")
        lg.warning("careful")
        lg.error("broken")
        try:
            raise ValueError("boom")
        except ValueError:
            lg.exception("failed")
        log_requests(lg, [REQUEST, REQUEST])
        f.flush()
        f.seek(0)
        lines = f.read().splitlines()
    assert lines[0].startswith("<6>") and lines[0].endswith("INFO hello")
    assert lines[1].startswith("<4>") and lines[1].endswith("WARNING careful")
    assert lines[2].startswith("<3>") and lines[2].endswith("ERROR broken")
    # a traceback is several journal entries: each keeps the error's priority
    tb = lines[3:lines.index(next(x for x in lines if "ValueError: boom" in x)) + 1]
    assert len(tb) > 2 and all(x.startswith("<3>") for x in tb), tb
    assert [x[:3] for x in lines[-2:]] == ["<6>", "<6>"] and all("request_id=r-1" in x for x in lines[-2:])


def test_json_lines_get_the_prefix_too(restore_loggers: None, tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+") as f:
        setup_logging("json", stream=f, env=journal_env(f))
        logging.getLogger("r1proxy.proxy").warning("careful")
        f.flush()
        f.seek(0)
        line = f.read()
    assert line.startswith("<4>{") and json.loads(line[3:])["msg"] == "careful"


def test_no_prefix_off_the_journal(restore_loggers: None, tmp_path: Path) -> None:
    """A terminal, or a JOURNAL_STREAM inherited by a process whose stderr went elsewhere: plain lines."""
    with open(tmp_path / "stderr", "w+") as f, open(tmp_path / "other", "w") as other:
        for env in ({}, journal_env(other), {"JOURNAL_STREAM": "garbage"}):
            setup_logging("plain", stream=f, env=env)
            logging.getLogger("r1proxy.proxy").warning("careful")
        f.flush()
        f.seek(0)
        lines = f.read().splitlines()
    assert len(lines) == 3 and not any(x.startswith("<") for x in lines)


def test_journal_prefix_levels() -> None:
    assert [journal_prefix(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                          logging.CRITICAL)] == ["<7>", "<6>", "<4>", "<3>", "<2>"]


def _rule_line(fields: dict[str, Any]) -> str:
    """The access line as the rules define it, field by field: ``redact`` decides what stays and
    how it reads, then a value that would break ``k=v`` parsing is quoted (JSON string)."""
    parts = []
    for name, value in redact(fields).items():
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and (not value or re.search(r'[\s="\\]|[^\x20-\x7e]', value))):
            text = (("true" if value else "false") if isinstance(value, bool)
                    else (format(value, ".6g") if value == value else "nan") if isinstance(value, float)
                    else json.dumps(value, ensure_ascii=False) if isinstance(value, str)
                    else json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
                    if isinstance(value, dict) else json.dumps(str(value), ensure_ascii=False))
            parts.append(f"{name}={text}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


_NAMES = st.sampled_from(["request_id", "key_name", "model", "status", "cache", "tier", "ms", "ttfb_ms", "tokens",
                          "bytes", "route", "error", "api_key", "token", "prompt", "prompt_tokens", "Authorization",
                          "content", "cache_key", "upstream_secret"])
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.just(""),
    st.sampled_from(["HIT", "memory", "5000/700", "deepseek/deepseek-r1", "x y", 'q"uote', "new\nline", "é",
                     SECRET, f"Bearer {SECRET}", "x" * 300, "a=b", "back\\slash"]),
    st.text(max_size=40), st.dictionaries(st.sampled_from(["prompt", "n", "api_key"]), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_the_access_lines_fast_path_says_what_the_rules_say(pairs: list[tuple[str, Any]]) -> None:
    fields = dict(pairs)
    assert access_line(fields) == _rule_line(fields)
    assert access_line(fields) == _rule_line(fields)  # a cached piece reads the same the second time


_TEXT = st.one_of(st.just(""), st.sampled_from(["HIT", "memory", "deepseek/deepseek-r1", "x y", SECRET,
                                                f"Bearer {SECRET}", "x" * 300, "é", 'q"']), st.text(max_size=20))
_FLOAT = st.one_of(st.floats(), st.integers(min_value=0, max_value=10**6).map(lambda n: n / 1000))


@settings(max_examples=300, deadline=None)
@given(st.tuples(_TEXT, _TEXT, _TEXT, st.integers(0, 999), _TEXT, _TEXT, _FLOAT, st.one_of(st.none(), _FLOAT),
                 st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**8), _TEXT, _TEXT))
def test_an_access_records_line_is_the_line_of_its_fields(values: tuple[Any, ...]) -> None:
    """``Access.line`` keeps the text of repeating fields; it reads exactly as ``access_line`` of the
    same fields (redaction, quoting, fields left out), in the plain formatter's batch as well."""
    from r1proxy.logsetup import Access, PlainFormatter

    a = Access(*values)
    assert a.line() == access_line(a.fields())
    assert a.line() == access_line(a.fields())  # from the kept text the second time
    record = logging.LogRecord("r1proxy", logging.INFO, __file__, 1, "request", None, None)
    record.r1proxy_batch = [a, a.fields()]
    first, second = PlainFormatter().format(record).split("\n")
    assert first == second
