"""The upstream prompt cache's saving, exact (#14 / cost.md §8): a listed-price estimate is replaced by
OpenRouter's own cache_discount from GET /generation (retried while it answers 404), in the request row,
its rollups (v_daily, the dashboard's tables), /stats and /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from r1proxy import rollups
from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.conftest import UPSTREAM_KEY
from tests.fake_upstream import Script
from tests.roo import roo_body
from tests.test_costing import READ, P, post, started

BILLED = 0.0123  # what the serving provider's cache actually saved (not the listed estimate)


async def _reconciled(client: Any) -> None:
    gw = client.app[GATEWAY_KEY]
    gw.flush_accounting()
    await gw.costing.generations.drain()
    await client.app[STORE_KEY].db.flush()


def _fast(client: Any) -> None:
    client.app[GATEWAY_KEY].costing.generations.delays = (0.01, 0.02, 0.04, 0.08)


async def test_an_estimate_is_replaced_by_openrouters_figure(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    _fast(client)
    fake_server.fake.generation_404s = 2  # the stats are not there at once (B.8)
    fake_server.script(Script(cached_tokens=4000, cache_discount=BILLED))
    await post(client, roo_body(stream=False), "m")
    await _reconciled(client)
    db = client.app[STORE_KEY].db
    (prefix,) = await db.fetchone("SELECT prefix_saved FROM requests WHERE request_id = 'm'") or (None,)
    assert prefix == pytest.approx(BILLED)
    (day,) = await db.fetchone("SELECT usd_prefix_saved FROM v_daily") or (None,)
    assert day == pytest.approx(BILLED)
    for table in ("requests_hourly", "requests_daily"):
        (got,) = await db.fetchone(f"SELECT SUM(prefix_saved) FROM {table}") or (None,)
        assert got == pytest.approx(BILLED), table
    for r in rollups.ROLLUPS:  # every rollup still equals the log recomputed
        assert await db.fetchall(r.select_sql()) == await db.fetchall(r.recompute_sql()), r.table
    assert client.app[GATEWAY_KEY].metrics.snapshot()["usd_saved_prefix"] == pytest.approx(BILLED, abs=1e-6)
    gets = [c for c in fake_server.fake.info_calls if c.path.endswith("/generation")]
    assert len(gets) == 3 and all(c.headers.get("Authorization") == f"Bearer {UPSTREAM_KEY}" for c in gets)


async def test_no_lookup_without_an_estimate(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    _fast(client)
    await post(client, roo_body(stream=False), "no-prefix")  # no cached tokens: nothing to reconcile
    fake_server.script(Script(cached_tokens=100, usage={"prompt_tokens": 200, "completion_tokens": 10,
                                                      "prompt_tokens_details": {"cached_tokens": 100},
                                                      "cost": 0.001, "cache_discount": 0.0005}))
    await post(client, roo_body("another task", stream=False), "reported")  # reported: already exact
    await post(client, roo_body(stream=False), "hit")  # served from cache: nothing was called
    await _reconciled(client)
    assert not [c for c in fake_server.fake.info_calls if c.path.endswith("/generation")]


async def test_a_generation_that_never_appears_keeps_its_estimate(proxy: Any, fake_server: Any) -> None:
    client = await started(proxy)
    _fast(client)
    fake_server.fake.generation_404s = 100
    fake_server.script(Script(cached_tokens=4000, cache_discount=BILLED))
    await post(client, roo_body(stream=False), "m")
    await _reconciled(client)
    prefix, cached = await client.app[STORE_KEY].db.fetchone("SELECT prefix_saved, cached_tokens FROM requests") or ()
    assert cached and prefix == pytest.approx(cached * (P - READ))
