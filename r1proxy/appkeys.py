"""Every typed ``web.AppKey`` r1proxy puts on its application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .clock import Clock
from .config import Config
from .store import Store

if TYPE_CHECKING:
    from .gateway import Gateway

CONFIG_KEY = web.AppKey("CONFIG_KEY", Config)
HTTP_SESSION_KEY = web.AppKey("HTTP_SESSION_KEY", aiohttp.ClientSession)
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("GATEWAY_KEY")
CLOCK_KEY = web.AppKey("CLOCK_KEY", Clock)
STORE_KEY: web.AppKey[Store] = web.AppKey("STORE_KEY")
