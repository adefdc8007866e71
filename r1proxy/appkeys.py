"""Every typed ``web.AppKey`` r1proxy puts on its application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakSet

import aiohttp
from aiohttp import web

from .config import Config

if TYPE_CHECKING:
    from .app import Store
    from .gateway import Gateway

CONFIG_KEY = web.AppKey("CONFIG_KEY", Config)
HTTP_SESSION_KEY = web.AppKey("HTTP_SESSION_KEY", aiohttp.ClientSession)
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("GATEWAY_KEY")
STREAMS_KEY: web.AppKey[WeakSet[web.StreamResponse]] = web.AppKey("STREAMS_KEY")
STORE_KEY: web.AppKey[Store] = web.AppKey("STORE_KEY")
