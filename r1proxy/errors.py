"""The one error shape: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise ``ProxyError`` (or a subclass); ``error_reply`` (called by ``edge.py``'s middleware)
turns it, or any other exception, into an OpenAI-shaped JSON response with the right status.
Nothing else builds error bodies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import redact

log = logging.getLogger("r1proxy")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ProxyError(Exception):
    """An error the client should see as OpenAI-shaped JSON with ``status``."""

    def __init__(self, status: int, message: str, *, type: str | None = None, code: Any = None,
                 param: str | None = None, metadata: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.code = code
        self.param = param
        self.metadata = dict(metadata) if metadata else None
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param,
                               "code": self.code if self.code is not None else self.status}
        if self.metadata:
            err["metadata"] = self.metadata
        return {"error": redact.data(err)}

    def stream_event(self) -> dict[str, Any]:
        """The error as a final SSE data event (headers already went out): ``message`` is the one
        field Roo shows, so it carries the status and the upstream's ``metadata.raw``."""
        err = self.body()["error"]
        err["message"] = redact.text(stream_message(self.status, self.message, self.metadata))
        return {"error": err, "choices": []}

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=json.dumps(self.body()).encode(),
                            content_type="application/json", headers=redact.headers(self.headers))


def stream_message(status: Any, message: str, metadata: Any) -> str:
    """``"429 Provider returned error (deepseek/deepseek-r1 is temporarily rate-limited upstream)"``."""
    text = message if not status or message.startswith(str(status)) else f"{status} {message}"
    raw = metadata.get("raw") if isinstance(metadata, Mapping) else None
    if isinstance(raw, str) and raw and raw not in text:
        text += f" ({raw[:1000]})"
    return text


def explain_in_stream(err: Any) -> dict[str, Any]:
    """An upstream's own in-stream ``error`` object with its status and ``metadata.raw`` in ``message``."""
    if not isinstance(err, dict):
        return {"message": stream_message(502, str(err), None)}
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    return {**err, "message": stream_message(status, str(err.get("message") or "upstream error"), err.get("metadata"))}


def in_stream_error(err: Any) -> ProxyError:
    """The flight's error for an upstream's in-stream ``error`` object (already through explain_in_stream)."""
    err = err if isinstance(err, dict) else {"message": str(err)}
    meta = err.get("metadata")
    return ProxyError(502, str(err.get("message", "upstream error")), type="upstream_error", code=err.get("code"),
                      metadata=meta if isinstance(meta, dict) else None)


def bad_request(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_request")


def from_upstream(status: int, payload: Any, upstream: str, headers: Mapping[str, str] | None = None) -> ProxyError:
    """An upstream error reply kept as it is (same status, message and ``metadata.raw``), secrets masked."""
    payload = redact.data(payload)
    headers = redact.headers(headers) if headers else headers
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        msg = str(err.get("message") or f"upstream {upstream} answered {status}")
        meta = err.get("metadata") if isinstance(err.get("metadata"), dict) else None
        code = err.get("code", status)
        etype = err.get("type") if isinstance(err.get("type"), str) else None
    elif isinstance(err, str):
        msg, meta, code, etype = err, None, status, None
    else:
        msg, meta, code, etype = f"upstream {upstream} answered HTTP {status}", None, status, None
    return ProxyError(status, msg, type=etype, code=code, metadata=meta, headers=headers)


def error_reply(request: web.Request, e: Exception) -> web.StreamResponse:
    """The reply for an exception a handler (or the guard) raised: OpenAI-shaped JSON with the right
    status. Re-raises an ``HTTPException`` below 400 (a redirect is not an error)."""
    if isinstance(e, ProxyError):
        return e.response()
    if isinstance(e, web.HTTPException):
        if e.status < 400:
            raise e
        status = e.status
        if status == 404:
            msg = f"Unknown path {request.method} {request.path}"
        elif status == 405:
            msg = f"Method {request.method} is not allowed on {request.path}"
        elif status == 413:
            msg = "Request body too large (see server.max_request_mb)"
        else:
            msg = e.reason or "HTTP error"
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return ProxyError(status, msg, headers=headers).response()
    if isinstance(e, web.RequestPayloadError):  # a body that cannot be decoded, or a client that left mid-body
        log.info("unreadable request body on %s %s: %s", request.method, request.path,
                 str(e).replace("\n", " ").strip())
        resp = ProxyError(400, f"Request body could not be read: {str(e).split(chr(10))[-1].strip()}").response()
        resp.force_close()  # the rest of the body is unreadable too: close after this reply...
        request.content.feed_eof()  # ...and aiohttp must not try to drain it (that raises again, unhandled)
        return resp
    if isinstance(e, ConnectionResetError):
        # not an error of ours: one line, no traceback (aiohttp would log this one at ERROR)
        log.info("client went away during %s %s", request.method, request.path)
        resp = ProxyError(400, "Client closed the connection").response()
        resp.force_close()
        request.content.feed_eof()
        return resp
    log.error("internal error on %s %s", request.method, request.path, exc_info=e)
    return ProxyError(500, "Internal error in r1proxy (see its log)", type="api_error").response()


class _ClientMistakeFilter(logging.Filter):
    """aiohttp logs a malformed request (bad header, bad chunk size, unknown Content-Encoding) as an
    ERROR with a traceback; it is the client's mistake: one INFO line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            first = (getattr(exc, "message", "") or str(exc)).strip().splitlines()
            record.msg, record.args = "malformed request: %s (HTTP %s)", (first[0] if first else "?", exc.code)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_mistakes() -> None:
    """Install the filter on aiohttp's server logger (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientMistakeFilter) for f in logger.filters):
        logger.addFilter(_ClientMistakeFilter())
