"""OpenRouter's account endpoints: ``GET /models`` (prices) and ``GET /key`` (credits, free tier).

``AccountWatch`` reads both for every OpenRouter-kind upstream at start and then periodically
(prices daily, the key every ``KEY_EVERY_S``), in the background: a slow or unreachable upstream
never delays serving, and the last answers are kept in the database (``PriceBook``,
``FreeQuota``). The upstream key goes only to its own upstream, as on a chat request; a failure
is logged once per upstream and endpoint until it succeeds again, never with the key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from .config import Config, UpstreamConfig
from .prices import PriceBook, parse_models
from .quota import FreeQuota

log = logging.getLogger("r1proxy")

PRICES_EVERY_S = 86400.0
KEY_EVERY_S = 600.0
TIMEOUT_S = 30.0


class FetchError(Exception):
    """An account endpoint could not be read; the message names the upstream and never the key."""


async def get_json(session: aiohttp.ClientSession, up: UpstreamConfig, path: str,
                   timeout: float = TIMEOUT_S) -> Any:
    """``GET {base_url}{path}`` with the upstream's key; the parsed JSON body."""
    headers = {"Accept": "application/json"}
    if up.api_key:
        headers["Authorization"] = f"Bearer {up.api_key}"
    try:
        async with session.get(f"{up.base_url}{path}", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout, connect=up.connect_timeout or None)) as r:
            if r.status != 200:
                raise FetchError(f"upstream {up.name}: GET {path} answered HTTP {r.status}")
            return await r.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise FetchError(f"upstream {up.name}: GET {path} failed ({type(e).__name__})") from None
    except ValueError:
        raise FetchError(f"upstream {up.name}: GET {path} did not answer JSON") from None


class AccountWatch:
    """Keeps prices and key information of the OpenRouter-kind upstreams current."""

    def __init__(self, config: Config, session: aiohttp.ClientSession, prices: PriceBook,
                 quota: FreeQuota) -> None:
        self.config = config
        self.session = session
        self.prices = prices
        self.quota = quota
        self.upstreams = [u for u in config.upstreams.values() if u.is_openrouter]
        self.task: asyncio.Task[None] | None = None
        self._failing: set[tuple[str, str]] = set()

    async def refresh_prices(self, up: UpstreamConfig) -> int:
        """Fetch one upstream's model list into the price book; how many models had prices."""
        listed = parse_models(await self._get(up, "/models"))
        if listed:
            self.prices.replace(up.name, listed)
        return len(listed)

    async def refresh_key(self, up: UpstreamConfig) -> bool:
        """Fetch one upstream's ``/key`` into the quota (only with a key: without one there is nothing to ask)."""
        if not up.api_key:
            return False
        return self.quota.set_key(up.name, await self._get(up, "/key")) is not None

    async def _get(self, up: UpstreamConfig, path: str) -> Any:
        try:
            doc = await get_json(self.session, up, path)
        except FetchError as e:
            if (up.name, path) not in self._failing:
                self._failing.add((up.name, path))
                log.warning("%s; keeping the last known answer (retrying later)", e)
            raise
        self._failing.discard((up.name, path))
        return doc

    async def refresh(self, *, prices: bool = True, keys: bool = True) -> None:
        """One round over every OpenRouter-kind upstream; failures are logged, never raised."""
        for up in self.upstreams:
            for wanted, fn in ((prices, self.refresh_prices), (keys, self.refresh_key)):
                if not wanted:
                    continue
                try:
                    await fn(up)
                except FetchError:
                    pass

    async def run(self) -> None:
        """At start: prices that are a day old or missing, and the key; then on their schedules."""
        loop = asyncio.get_running_loop()
        names = [u.name for u in self.upstreams]
        await self.refresh(prices=bool(self.prices.stale(names, PRICES_EVERY_S)), keys=True)
        next_prices = loop.time() + PRICES_EVERY_S
        while True:
            await asyncio.sleep(KEY_EVERY_S)
            due = loop.time() >= next_prices
            if due:
                next_prices = loop.time() + PRICES_EVERY_S
            await self.refresh(prices=due, keys=True)

    def start(self) -> asyncio.Task[None] | None:
        if self.upstreams and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name="r1proxy-account-watch")
        return self.task

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
