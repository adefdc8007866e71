"""What a request asks for and what is learned about it on the way.

``validate`` turns a body into a dict or a 400 that says what is wrong; ``parse_cache_control``
reads Cache-Control and LiteLLM's body ``cache`` object into a frozen ``CacheControl``;
``RequestIdentity`` is what a raw body means (memoised by the gateway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from . import jsonbody
from .cache.keys import last_user_text
from .config import ModelConfig
from .errors import bad_request


@dataclass(frozen=True, slots=True)
class CacheControl:
    lookup: bool = True
    store: bool = True
    max_age: float | None = None
    only_if_cached: bool = False
    ttl: float | None = None
    namespace: str = ""
    stale_ok: bool = True


DEFAULT_CC = CacheControl()  # read-only: requests with no cache controls share it


def parse_cache_control(header: str | None, body_cache: Any) -> CacheControl:
    """Cache-Control request directives, then LiteLLM's body ``cache`` object (which wins)."""
    if header is None and body_cache is None:
        return DEFAULT_CC
    cc: dict[str, Any] = {}
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            cc.update(lookup=False, stale_ok=False)
        elif name == "no-store":
            cc["store"] = False
        elif name == "only-if-cached":
            cc["only_if_cached"] = True
        elif name in ("max-age", "s-maxage"):
            try:
                cc["max_age"] = max(0.0, float(value.strip().strip('"')))
                if not math.isfinite(cc["max_age"]):
                    raise ValueError
            except ValueError:
                raise bad_request(f"Cache-Control {name} must be a number of seconds") from None
    if body_cache is not None:
        cc.update(_body_cache(body_cache))
    return replace(DEFAULT_CC, **cc)


def _body_cache(body_cache: Any) -> dict[str, Any]:
    if not isinstance(body_cache, dict):
        raise bad_request("`cache` must be an object such as {\"no-cache\": true}", "cache")
    cc: dict[str, Any] = {}
    if body_cache.get("no-cache"):
        cc.update(lookup=False, stale_ok=False)
    if body_cache.get("no-store"):
        cc["store"] = False
    for name, attr in (("ttl", "ttl"), ("s-maxage", "max_age")):
        if name in body_cache:
            v = body_cache[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad_request(f"cache.{name} must be a number of seconds", f"cache.{name}")
            cc[attr] = float(v)
    ns = body_cache.get("namespace")
    if ns is not None:
        if not isinstance(ns, str):
            raise bad_request("cache.namespace must be a string", "cache.namespace")
        cc["namespace"] = ns
    return cc


def validate(raw: bytes) -> dict[str, Any]:
    """The request body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object with `model` and `messages`")
    body = jsonbody.loads(raw)  # strict: UTF-8, finite numbers, no lone surrogates, bounded depth
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required and must be a non-empty string", "model")
    jsonbody.check_model(model)  # before anything is spent: it reaches the upstream and our headers
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string `role`", f"messages[{i}]")
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise bad_request("`stream` must be true or false", "stream")
    jsonbody.check_limits(body)
    return body


@dataclass(slots=True)
class RequestIdentity:
    """What a raw request body means (pure function of the bytes and the config): memoised so a
    repeated body skips JSON parsing and canonicalisation on the hit path."""

    model: str
    deployments: list[ModelConfig]  # the alias's deployments, or one pass-through deployment
    stream: bool
    body_cache: Any
    cache_key: str
    canonical: bytes = b""
    body: dict[str, Any] | None = None

    @property
    def first(self) -> ModelConfig:
        """The deployment that names the cache key and the reasoning mode (not the balancer's pick:
        the key must not move)."""
        return self.deployments[0]

    def memo(self) -> RequestIdentity:
        return RequestIdentity(self.model, self.deployments, self.stream, self.body_cache, self.cache_key)


PROMPT_LOG_CHARS = 4000


def prompt_of(raw: bytes) -> str | None:
    """The last user message of a request body, for the opt-in prompt log (None if there is none)."""
    text = last_user_text(raw)
    return text[:PROMPT_LOG_CHARS] if text else None
