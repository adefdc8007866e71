"""Secret redaction: the one owner of "a configured secret never leaves r1proxy".

``register(secrets)`` records every configured secret (each upstream's API key, local keys
given in plain text, ``server.metrics_key``); ``text``/``raw``/``data``/``headers`` return
copies with each occurrence replaced by ``[redacted]``. Everything relayed from an upstream
(error bodies, ``metadata.raw``, stream events, response headers) passes through here, and
``RedactingFormatter`` applies it to every formatted log line, tracebacks included.

The registry is process-wide and only grows: a secret seen once (a reloaded config, a test's
second app) stays redacted. Very short values are not registered (they would mask ordinary text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[redacted]"
MIN_SECRET_CHARS = 8

_secrets: tuple[str, ...] = ()
_secret_bytes: tuple[bytes, ...] = ()


def register(secrets: Iterable[str]) -> None:
    """Add secrets to redact from now on (empty and very short values are ignored)."""
    global _secrets, _secret_bytes
    new = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
    if new - set(_secrets):
        # longest first: a secret that contains another one is masked whole
        _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))
        _secret_bytes = tuple(s.encode() for s in _secrets)


def active() -> bool:
    return bool(_secrets)


def text(value: str) -> str:
    for s in _secrets:
        if s in value:
            value = value.replace(s, MASK)
    return value


def raw(value: bytes) -> bytes:
    for s in _secret_bytes:
        if s in value:
            value = value.replace(s, MASK.encode())
    return value


def data(value: Any) -> Any:
    """A copy of JSON-like data with secrets masked in every string (keys included)."""
    if not _secrets:
        return value
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(k) if isinstance(k, str) else k: data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [data(v) for v in value]
    return value


def headers(value: Mapping[str, str]) -> dict[str, str]:
    return {k: text(v) for k, v in value.items()}


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter: whatever it produces (message, fields, traceback) is redacted."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return text(self.inner.format(record))
