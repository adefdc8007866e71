"""Shared fixtures: an isolated state dir, configs built in memory, the proxy in-process
(pointed at the fake OpenRouter on loopback) and the official ``openai`` SDK as a client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from r1proxy.app import create_app
from r1proxy.config import Config, build_config
from tests.fake_fixtures import *  # noqa: F403  (fixtures: fake_openrouter, fake_server)
from tests.redis_fixtures import *  # noqa: F403  (fixtures: redis_server, own_redis, redis_prefix)

UPSTREAM_KEY = "sk-or-v1-THIS-IS-THE-SECRET-UPSTREAM-KEY-0123456789"
LOCAL_KEY = "local-r1proxy-key"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("R1PROXY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("R1PROXY_CONFIG", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)


@pytest.fixture
def make_config(tmp_path: Any, fake_server: Any) -> Callable[..., Config]:
    """Build a Config from TOML-shaped dicts; the openrouter upstream points at the fake."""

    def make(**sections: Any) -> Config:
        raw: dict[str, Any] = {k: v for k, v in sections.items()}
        ups = raw.setdefault("upstreams", {})
        ups.setdefault("openrouter", {})
        ups["openrouter"].setdefault("base_url", fake_server.base_url)
        for up in ups.values():
            up.setdefault("base_url", fake_server.base_url)
        server = raw.setdefault("server", {})
        server.setdefault("state_dir", str(tmp_path / "state"))
        raw.setdefault("stream", {"early_headers_s": 10, "keepalive_s": 15})
        retry = raw.setdefault("retry", {})
        retry.setdefault("base_delay_s", 0.01)
        retry.setdefault("max_delay_s", 0.05)
        return build_config(raw, source="test-config.toml", env={"OPENROUTER_API_KEY": UPSTREAM_KEY})

    return make


@pytest.fixture
def proxy(aiohttp_client: Callable[..., Awaitable[Any]], make_config: Callable[..., Config]) -> Callable[..., Any]:
    """``await proxy(**config_sections)`` → an aiohttp test client talking to a fresh proxy."""

    async def start(**sections: Any) -> Any:
        return await aiohttp_client(create_app(make_config(**sections)))

    return start


def sdk(client: Any, key: str = LOCAL_KEY, **kw: Any) -> Any:
    """The official openai SDK pointed at the in-process proxy (as Roo Code is)."""
    import openai

    return openai.AsyncOpenAI(base_url=str(client.make_url("")), api_key=key, max_retries=0, **kw)
