"""The upstream side of one HTTP call: header filtering, the POST, and transport errors.

Only end-to-end client headers go upstream (no Host, Authorization, x-api-key, hop-by-hop,
``X-Stainless-*``, Content-Length/Encoding); the upstream key is added here and nowhere
else. Transport failures become ``UpstreamError`` (502 refused/reset, 504 timeout) whose
message names the upstream, never the key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from . import redact
from .config import UpstreamConfig
from .errors import ProxyError

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
    try:
        async with asyncio.timeout(up.first_byte_timeout or None):
            return await session.post(url, data=body, headers=dict(headers), timeout=timeout)
    except TimeoutError:
        raise UpstreamError(504, f"Upstream {up.name} did not answer within "
                                 f"{up.first_byte_timeout:g}s", "first_byte_timeout") from None
    except aiohttp.ClientConnectorError as e:
        raise UpstreamError(502, f"Cannot connect to upstream {up.name} ({_reason(e)})", "connect") from None
    except (aiohttp.ClientError, OSError) as e:
        raise UpstreamError(502, f"Upstream {up.name} failed: {_reason(e)}", "reset") from None


def read_error(up: UpstreamConfig, e: BaseException) -> UpstreamError:
    """Map an exception raised while reading an upstream body."""
    if isinstance(e, (TimeoutError, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, f"Upstream {up.name} went silent for over {up.idle_timeout:g}s", "idle_timeout")
    return UpstreamError(502, f"Upstream {up.name} dropped the connection ({_reason(e)})", "reset")


def _reason(e: BaseException) -> str:
    name = type(e).__name__
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"{name}: {e.os_error.strerror or e.os_error}" if e.os_error else name
    text = str(e)
    # never echo anything that might carry a header value; the exception text is URL/host level
    return f"{name}: {text[:200]}" if text and "Bearer" not in text else name


async def read_json(resp: aiohttp.ClientResponse, up: UpstreamConfig) -> Any:
    """The whole upstream body parsed as JSON (None when it is not JSON)."""
    try:
        raw = await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise read_error(up, e) from None
    raw = redact.raw(raw)
    try:
        return json.loads(raw)
    except RecursionError:
        return {"error": {"message": f"Upstream {up.name} answered HTTP {resp.status} with JSON nested too "
                                     "deeply to read"}}
    except ValueError:
        return {"error": {"message": f"Upstream {up.name} answered HTTP {resp.status} with a non-JSON body: "
                                     f"{raw[:200].decode('utf-8', 'replace')}"}}
