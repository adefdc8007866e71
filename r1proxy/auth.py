"""Local keys: who is calling. Keys are stored as sha256 and compared in constant time.

Accepts ``Authorization: Bearer <key>`` and ``x-api-key: <key>``. With no keys configured
(allowed only on a loopback bind) every caller is the anonymous principal ``local``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from .config import KeyConfig
from .errors import ProxyError

ANONYMOUS = KeyConfig(name="local", key_sha256="0" * 64)


class Auth:
    def __init__(self, keys: tuple[KeyConfig, ...]) -> None:
        self.keys = keys
        self._digests = [(bytes.fromhex(k.key_sha256), k) for k in keys]

    def presented(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        key = headers.get("x-api-key")
        return key.strip() if key else None

    def check(self, headers: Mapping[str, str]) -> KeyConfig:
        """The caller's key, or ProxyError 401 that says nothing about which keys exist."""
        if not self._digests:
            return ANONYMOUS
        given = self.presented(headers)
        if not given:
            raise ProxyError(401, "Missing API key: send Authorization: Bearer <your r1proxy key>",
                             code="invalid_api_key")
        try:
            digest = hashlib.sha256(given.encode()).digest()
        except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them as surrogates)
            raise ProxyError(401, "Invalid API key", code="invalid_api_key") from None
        found = None
        for d, k in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(d, digest):
                found = k
        if found is None:
            raise ProxyError(401, "Invalid API key", code="invalid_api_key")
        return found


def new_key() -> tuple[str, str]:
    """A fresh random key and its sha256 hex, for ``r1proxy keys new``."""
    key = "r1p-" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()
