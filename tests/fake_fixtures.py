"""Pytest fixtures for the fake OpenRouter: ``fake_openrouter`` (the app object) and ``fake_server``
(it, listening on 127.0.0.1 via pytest-aiohttp's ``aiohttp_server``, with ``.base_url`` ending in /api/v1).

Use from conftest.py with ``from tests.fake_fixtures import *`` (``__all__`` lists only the fixtures).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fake_upstream import Call, FakeOpenRouter, Script

__all__ = ["fake_openrouter", "fake_server"]


@dataclass
class FakeServer:
    """A running FakeOpenRouter; ``base_url`` is what an upstream config's base_url should be."""

    fake: FakeOpenRouter
    server: TestServer

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/api/v1"))

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def calls(self) -> list[Call]:
        return self.fake.calls

    def script(self, *scripts: Script) -> None:
        self.fake.script(*scripts)


@pytest.fixture
def fake_openrouter() -> FakeOpenRouter:
    return FakeOpenRouter()


@pytest_asyncio.fixture
async def fake_server(aiohttp_server: Callable[..., Awaitable[TestServer]],
                      fake_openrouter: FakeOpenRouter) -> Any:
    app: web.Application = fake_openrouter.app
    server = await aiohttp_server(app)
    return FakeServer(fake_openrouter, server)
