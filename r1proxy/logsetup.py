"""Logging setup: the "r1proxy" logger to stderr, as plain ``ts LEVEL msg k=v`` lines or JSON lines.

When stderr is a journald stream (``$JOURNAL_STREAM`` names its device and inode), each line
starts with its syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info), which journald
strips and records, so ``journalctl -p warning`` finds warnings and errors.

Owns the two formatters, the one-line-per-request access log and the redaction every
structured field passes through: field names that suggest credentials are dropped, and values
that look like API keys are masked, so no code path can log a secret or a prompt by accident.
Structured fields travel on the record as ``extra={FIELDS_ATTR: {...}}``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, NamedTuple

from .redact import RedactingFormatter

FIELDS_ATTR = "r1proxy_fields"
REDACTED = "[redacted]"
ACCESS_FIELDS = ("request_id", "key_name", "alias", "model", "status", "cache", "tier",
                 "latency_ms", "ttfb_ms", "tokens", "bytes")
# Exact names that contain a deny-listed word but are known to carry no secret.
_SAFE_NAMES = frozenset({"key_name", "cache_key"})
_DENY_NAME = re.compile(r"key|auth|secret|passw|cookie|credential|bearer|^token$|_token$", re.IGNORECASE)
_PROMPT_NAMES = frozenset({"prompt", "prompts", "messages", "content", "body", "request_body",
                           "response_body", "system_prompt"})
_SECRET_VALUE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}|\bBearer\s+\S{8,}", re.IGNORECASE)
_NEEDS_QUOTE = re.compile(r'[\s="\\]|[^\x20-\x7e]')  # would break "k=v k=v" or the one-line rule
BATCH_ATTR = "r1proxy_batch"  # a record carrying several access lines (one write for many requests)
_MAX_VALUE_CHARS = 256
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})
_HANDLER_MARK = "_r1proxy_handler"


@functools.lru_cache(maxsize=1024)
def _name_kind(name: str) -> str:
    """"drop" (credential-like), "prompt" (text under a prompt name) or "ok"; names repeat, so cached."""
    lname = name.lower()
    if lname not in _SAFE_NAMES and _DENY_NAME.search(lname):
        return "drop"
    return "prompt" if lname in _PROMPT_NAMES else "ok"


_SKIP = object()


def _clean(name: str, value: Any) -> Any:
    """The value as it may be logged under ``name``, or _SKIP: the one place the rules live."""
    if value is None:
        return _SKIP
    kind = _name_kind(name)
    if kind == "drop":
        return _SKIP
    if type(value) is int or type(value) is float:
        return value  # a count named "prompt" is fine
    if kind == "prompt":
        return _SKIP  # text under a prompt name never is
    if isinstance(value, str):
        if _SECRET_VALUE.search(value):
            return REDACTED
        return value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + "…"
    if isinstance(value, (bool, int, float)):
        return value
    return redact(value) if isinstance(value, Mapping) else _plain_value(value)


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secret-named fields, prompt text and None dropped; secret-looking values masked."""
    return {name: v for name, value in fields.items() if (v := _clean(name, value)) is not _SKIP}


def _plain_value(value: Any) -> str:
    text = str(value)
    if _SECRET_VALUE.search(text):
        return REDACTED
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "…"


def _kv(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g") if value == value else "nan"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    text = str(value)
    # Quote anything that would break "k=v k=v" parsing or the one-line-per-event rule.
    if not text or _NEEDS_QUOTE.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def access_line(fields: Mapping[str, Any]) -> str:
    """``k=v k=v`` for the redacted fields, in the order given; never contains a newline.

    It runs once per request, so the common value types take a short path: an int or float is
    logged unless its name is dropped, a string's ``k=v`` text (the same rules) is cached per
    (name, value): aliases, key names, outcomes and tiers repeat on every line."""
    parts = []
    for name, value in fields.items():
        kind = type(value)
        if kind is str:
            piece = _str_piece(name, value)
            if piece:
                parts.append(piece)
        elif kind is int or kind is float:
            if _name_kind(name) != "drop":
                parts.append(f"{name}={value}" if kind is int else f"{name}={_kv(value)}")
        elif value is not None:
            piece = _piece(name, value)
            if piece:
                parts.append(piece)
    return " ".join(parts)


def _piece(name: str, value: Any) -> str:
    """``name=value`` as it may be logged ("" when it may not): the rules of ``_clean``, then quoting."""
    value = _clean(name, value)
    if value is _SKIP:
        return ""
    if type(value) is int or (type(value) is str and value and not _NEEDS_QUOTE.search(value)):
        return f"{name}={value}"
    return f"{name}={_kv(value)}"


_str_piece = functools.lru_cache(maxsize=4096)(_piece)  # str values only: hashable, and they repeat


_MEMO = 4096  # distinct runs of repeating fields whose text is kept (cleared when full)


class Access(NamedTuple):
    """One finished request's access line (accounting.py), cheaper than its ``fields()`` mapping.

    ``fields()`` is the line's content as a mapping (what the JSON formatter writes); ``line()`` its
    ``k=v`` text, the same as ``access_line(self.fields())``: the fields that repeat from request
    to request (key, model, status, outcome, tier; tokens, bytes, route, error) are rendered once
    per distinct run of values and kept, the request id and the timings every time."""

    request_id: str
    key_name: str
    model: str
    status: int
    cache: str
    tier: str
    ms: float
    ttfb_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    bytes: int
    route: str
    error: str

    def fields(self) -> dict[str, Any]:
        out = {"request_id": self.request_id, "key_name": self.key_name, "model": self.model,
               "status": self.status, "cache": self.cache, "tier": self.tier or None, "ms": self.ms,
               "ttfb_ms": self.ttfb_ms, "tokens": f"{self.prompt_tokens}/{self.completion_tokens}",
               "bytes": self.bytes}
        if self.route:
            out["route"] = self.route
        if self.error:
            out["error"] = self.error
        return out

    def line(self) -> str:
        head = (self.key_name, self.model, self.status, self.cache, self.tier)
        middle = _HEADS.get(head)
        if middle is None:
            middle = _remember(_HEADS, head, access_line({"key_name": self.key_name, "model": self.model,
                                                          "status": self.status, "cache": self.cache,
                                                          "tier": self.tier or None}))
        end = (self.prompt_tokens, self.completion_tokens, self.bytes, self.route, self.error)
        tail = _TAILS.get(end)
        if tail is None:
            fields: dict[str, Any] = {"tokens": f"{self.prompt_tokens}/{self.completion_tokens}", "bytes": self.bytes}
            if self.route:
                fields["route"] = self.route
            if self.error:
                fields["error"] = self.error
            tail = _remember(_TAILS, end, access_line(fields))
        # a request id is unique: the uncached rules (the cache would only churn)
        parts = [_piece("request_id", self.request_id), middle, _times(self.ms, self.ttfb_ms), tail]
        return " ".join([p for p in parts if p])


_HEADS: dict[tuple[Any, ...], str] = {}
_TAILS: dict[tuple[Any, ...], str] = {}


def _remember(memo: dict[tuple[Any, ...], str], key: tuple[Any, ...], text: str) -> str:
    if len(memo) >= _MEMO:
        memo.clear()
    memo[key] = text
    return text


def _times(ms: float, ttfb_ms: float | None) -> str:
    if type(ms) is float and (ttfb_ms is None or type(ttfb_ms) is float):
        text = f"ms={format(ms, '.6g') if ms == ms else 'nan'}"
        if ttfb_ms is None:
            return text
        return f"{text} ttfb_ms={format(ttfb_ms, '.6g') if ttfb_ms == ttfb_ms else 'nan'}"
    return access_line({"ms": ms, "ttfb_ms": ttfb_ms})


def _utc(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, FIELDS_ATTR, None)
    return fields if isinstance(fields, Mapping) else {}


class PlainFormatter(logging.Formatter):
    """``2026-11-25T12:00:00.000Z INFO msg k=v …``; tracebacks follow on their own lines."""

    def format(self, record: logging.LogRecord) -> str:
        batch = getattr(record, BATCH_ATTR, None)
        if batch is not None:
            head = f"{_utc(record.created)} {record.levelname} {record.getMessage()} "
            return "\n".join(head + (item.line() if type(item) is Access else access_line(item)) for item in batch)
        line = f"{_utc(record.created)} {record.levelname} {record.getMessage()}"
        extra = access_line(_fields(record))
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the redacted fields (exc if any)."""

    def format(self, record: logging.LogRecord) -> str:
        batch = getattr(record, BATCH_ATTR, None)
        if batch is not None:
            return "\n".join(self._one(record, item.fields() if type(item) is Access else item) for item in batch)
        return self._one(record, _fields(record))

    def _one(self, record: logging.LogRecord, fields: Mapping[str, Any]) -> str:
        obj: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        for k, v in redact(fields).items():
            obj[f"field_{k}" if k in _RESERVED else k] = v
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def journal_prefix(levelno: int) -> str:
    """The sd-daemon(3) priority prefix for a logging level: ``<2>`` critical … ``<7>`` debug."""
    if levelno >= logging.CRITICAL:
        return "<2>"
    if levelno >= logging.ERROR:
        return "<3>"
    if levelno >= logging.WARNING:
        return "<4>"
    return "<6>" if levelno >= logging.INFO else "<7>"


def on_journal(stream: IO[str], env: Mapping[str, str] | None = None) -> bool:
    """True if ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM`` = its dev:inode).

    A child that inherited the variable but writes elsewhere (a pipe, a file) gets plain lines."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """Every line of ``inner``'s output gets the record's priority prefix (a traceback is several entries)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = journal_prefix(record.levelno)
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def setup_logging(fmt: str, level: int | str = logging.INFO, *,
                  stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> logging.Logger:
    """Log "r1proxy" (and aiohttp warnings) to stderr in ``fmt``; safe to call again on reload."""
    if fmt not in ("plain", "json"):
        raise ValueError(f'log format must be "plain" or "json", got {fmt!r}')
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    # every configured secret is masked in whatever the formatter produces (r1proxy.redact)
    formatter: logging.Formatter = RedactingFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.setFormatter(JournalFormatter(formatter) if on_journal(out, env) else formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger("r1proxy")
    # aiohttp.access stays below WARNING and so silent: log_request() writes the access line.
    for name, lvl in (("r1proxy", level), ("aiohttp", logging.WARNING)):
        lg = logging.getLogger(name)
        for old in [h for h in lg.handlers if getattr(h, _HANDLER_MARK, False)]:
            lg.removeHandler(old)
        lg.addHandler(handler)
        lg.setLevel(lvl)
        lg.propagate = False
    return root


def log_requests(logger: logging.Logger, rows: list[Mapping[str, Any]] | list[Access]) -> None:
    """The access lines of several finished requests as one record: one write, one line each."""
    if rows and logger.isEnabledFor(logging.INFO):
        logger.info("request", extra={BATCH_ATTR: rows})
