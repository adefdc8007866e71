"""The upstream side of one HTTP call: header filtering, the POST, and transport errors.

Only end-to-end client headers go upstream (no Host, Authorization, x-api-key, hop-by-hop,
``X-Stainless-*``, Content-Length/Encoding); the upstream key is added here and nowhere
else. Transport failures become ``UpstreamError`` (502 refused/reset, 504 timeout) whose
message names the upstream, never the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from . import jsonbody, jsonfast, redact
from .config import UpstreamConfig
from .errors import ProxyError
from .sse import EventTooLarge

_DROP = frozenset({
    "host", "authorization", "x-api-key", "api-key", "content-length", "content-type", "content-encoding",
    "accept-encoding", "accept", "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "expect", "cookie", "cache-control", "pragma", "http-referer",
    "x-title", "origin", "referer",
})
_DROP_PREFIXES = ("x-stainless-", "x-r1proxy-", "sec-", "x-forwarded-")
# upstream response headers worth passing to the client (everything else is ours to set)
PASS_RESPONSE = ("x-generation-id", "retry-after", "retry-after-ms", "x-ratelimit-limit",
                 "x-ratelimit-remaining", "x-ratelimit-reset", "openrouter-provider")


class UpstreamError(ProxyError):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(status, message, type="upstream_error" if status == 502 else "timeout_error",
                         code=kind)
        self.kind = kind


def request_headers(client: Mapping[str, str], up: UpstreamConfig) -> dict[str, str]:
    out = {k: v for k, v in client.items()
           if k.lower() not in _DROP and not k.lower().startswith(_DROP_PREFIXES) and v.isprintable()}
    out["Content-Type"] = "application/json"
    out["Accept"] = "application/json, text/event-stream"
    if up.referer:
        out["HTTP-Referer"] = up.referer
    if up.title:
        out["X-Title"] = up.title
    if up.api_key:
        out["Authorization"] = f"Bearer {up.api_key}"
    return out


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return {k: redact.text(upstream[k]) for k in PASS_RESPONSE if k in upstream}


async def open_response(session: aiohttp.ClientSession, up: UpstreamConfig, body: bytes,
                        headers: Mapping[str, str]) -> aiohttp.ClientResponse:
    """POST the body and wait for the response headers, within the upstream's timeouts."""
    url = f"{up.base_url}/chat/completions"
    timeout = aiohttp.ClientTimeout(total=up.total_timeout or None, connect=up.connect_timeout or None,
                                    sock_read=up.idle_timeout or None)
    first_byte = asyncio.timeout(up.first_byte_timeout or None)
    try:
        async with first_byte:
            return await session.post(url, data=body, headers=dict(headers), timeout=timeout)
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamError(504, f"Cannot connect to upstream {up.name} within {up.connect_timeout:g}s "
                                 f"(upstreams.{up.name}.connect_timeout)", "connect_timeout") from None
    except TimeoutError:
        if first_byte.expired():
            raise UpstreamError(504, f"Upstream {up.name} did not answer within {up.first_byte_timeout:g}s "
                                     f"(upstreams.{up.name}.first_byte_timeout)", "first_byte_timeout") from None
        raise read_error(up, TimeoutError()) from None  # aiohttp's total_timeout
    except aiohttp.ClientConnectorError as e:
        raise UpstreamError(502, f"Cannot connect to upstream {up.name} ({_reason(e)})", "connect") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        raise UpstreamError(502, f"Upstream {up.name} closed the connection before answering", "reset") from None
    except (aiohttp.ClientError, OSError) as e:
        raise UpstreamError(502, f"Upstream {up.name} failed: {_reason(e)}", "reset") from None


def read_error(up: UpstreamConfig, e: BaseException) -> UpstreamError:
    """Map an exception raised while reading an upstream body to a sentence naming the limit or fault."""
    if isinstance(e, UpstreamError):
        return e
    if isinstance(e, EventTooLarge):
        return UpstreamError(502, f"Upstream {up.name} sent {e} (stream.max_event_mb)", "event_too_large")
    if isinstance(e, aiohttp.ServerTimeoutError):  # sock_read: no byte for idle_timeout
        return UpstreamError(504, f"Upstream {up.name} went silent for over {up.idle_timeout:g}s "
                                  f"(upstreams.{up.name}.idle_timeout)", "idle_timeout")
    if isinstance(e, TimeoutError):  # the whole reply took longer than total_timeout
        return UpstreamError(504, f"Upstream {up.name} did not finish its reply within {up.total_timeout:g}s "
                                  f"(upstreams.{up.name}.total_timeout)", "total_timeout")
    return UpstreamError(502, f"Upstream {up.name} dropped the connection before its reply was complete",
                         "reset")


def _reason(e: BaseException) -> str:
    name = type(e).__name__
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"{name}: {e.os_error.strerror or e.os_error}" if e.os_error else name
    text = str(e)
    # never echo anything that might carry a header value; the exception text is URL/host level
    return f"{name}: {text[:200]}" if text and "Bearer" not in text else name


def too_deep(doc: Any, text: str) -> bool:
    """Whether parsed JSON nests deeper than r1proxy handles (cheap unless the text has many brackets)."""
    if text.count("{") + text.count("[") <= jsonbody.MAX_DEPTH:
        return False
    try:
        jsonbody.check_tree(doc, False)
    except ProxyError:
        return True
    return False


def nested_error(up: UpstreamConfig) -> UpstreamError:
    return UpstreamError(502, f"Upstream {up.name} sent JSON nested too deeply to relay (over "
                              f"{jsonbody.MAX_DEPTH} levels)", "too_deep")


def sse_json(text: str, up: UpstreamConfig) -> Any:
    """One SSE data payload as JSON; None when it is not JSON (never relayed); 502 when it nests too deeply."""
    try:
        doc = jsonfast.loads(text)
    except RecursionError:
        raise nested_error(up) from None
    except ValueError:
        return None
    if too_deep(doc, text):
        raise nested_error(up)
    return doc


_DEEP = object()


async def read_body(resp: aiohttp.ClientResponse, up: UpstreamConfig) -> tuple[Any, bool]:
    """The whole upstream body parsed as JSON, and whether it was valid UTF-8.

    Bytes that are not UTF-8 are replaced (U+FFFD), as in a stream: the answer is relayed but must
    not be cached. A body that is not JSON becomes an error payload quoting its start."""
    try:
        raw = await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise read_error(up, e) from None
    raw = redact.raw(raw)
    clean = True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text, clean = raw.decode("utf-8", errors="replace"), False
    try:
        doc: Any = jsonfast.loads(text)
    except RecursionError:
        doc = _DEEP
    except ValueError:
        return {"error": {"message": f"Upstream {up.name} answered HTTP {resp.status} with a non-JSON body: "
                                     f"{text[:200]}"}}, clean
    if doc is _DEEP or too_deep(doc, text):
        return {"error": {"message": nested_error(up).message}}, clean
    return doc, clean
