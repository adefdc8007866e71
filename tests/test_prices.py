"""Prices: OpenRouter's /models list parsed, kept in the database, config prices over it, costs computed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from r1proxy.config import ModelConfig, build_config
from r1proxy.db import Database
from r1proxy.openrouter import AccountWatch
from r1proxy.prices import Price, PriceBook, config_price, cost_of, parse_models, prefix_saving
from r1proxy.quota import FreeQuota
from tests.conftest import UPSTREAM_KEY

MODELS_DOC = {"data": [
    {"id": "deepseek/deepseek-r1", "pricing": {"prompt": "0.00000055", "completion": "0.00000219",
                                               "input_cache_read": "0.000000055", "request": "0"}},
    {"id": "deepseek/deepseek-r1:free", "pricing": {"prompt": "0", "completion": "0"}},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},  # a router: no price
    {"id": "broken", "pricing": "n/a"},
    {"name": "no id"},
]}


def test_parse_models_reads_per_token_prices_and_skips_unpriced() -> None:
    prices = parse_models(MODELS_DOC)
    assert set(prices) == {"deepseek/deepseek-r1", "deepseek/deepseek-r1:free"}
    r1 = prices["deepseek/deepseek-r1"]
    assert (r1.prompt, r1.completion, r1.cache_read, r1.cache_write) == (0.00000055, 0.00000219, 0.000000055, None)
    assert prices["deepseek/deepseek-r1:free"].read_price == 0.0
    assert parse_models({"error": "x"}) == {} and parse_models([1, 2]) == {}


def test_cost_prices_cache_reads_and_counts_reasoning_once() -> None:
    p = Price(prompt=0.55e-6, completion=2.19e-6, cache_read=0.055e-6)
    # 1000 prompt tokens, 800 of them read from the prompt cache; 500 completion tokens of which 400 reasoning
    assert cost_of(p, 1000, 500, cached=800) == pytest.approx(200 * 0.55e-6 + 800 * 0.055e-6 + 500 * 2.19e-6)
    assert prefix_saving(p, 800) == pytest.approx(800 * (0.55e-6 - 0.055e-6))
    # no cache-read price listed: no discount is invented
    assert prefix_saving(Price(0.55e-6, 2.19e-6), 800) == 0.0
    assert cost_of(Price(0.55e-6, 2.19e-6), 1000, 0, cached=800) == pytest.approx(1000 * 0.55e-6)
    # cached tokens beyond the prompt are clamped
    assert cost_of(p, 10, 0, cached=50) == pytest.approx(10 * 0.055e-6)


def test_config_prices_override_and_zero_means_unset() -> None:
    assert config_price(ModelConfig(name="a")) is None
    own = config_price(ModelConfig(name="a", input_usd_per_mtok=0.55, output_usd_per_mtok=2.19,
                                   cache_read_usd_per_mtok=0.055))
    assert own is not None and own.source == "config"
    assert own.prompt == pytest.approx(0.55e-6) and own.read_price == pytest.approx(0.055e-6)
    book = PriceBook(build_config({}, env={}))
    book.replace("openrouter", parse_models(MODELS_DOC))
    dep = ModelConfig(name="deepseek-r1", model="deepseek/deepseek-r1", input_usd_per_mtok=1.0,
                      output_usd_per_mtok=2.0)
    assert book.lookup("openrouter", "deepseek/deepseek-r1", dep).prompt == pytest.approx(1e-6)  # type: ignore[union-attr]
    assert book.lookup("openrouter", "deepseek/deepseek-r1").source == "openrouter"  # type: ignore[union-attr]
    assert book.lookup("other", "deepseek/deepseek-r1") is None


async def test_prices_survive_a_restart_offline(tmp_path: Path) -> None:
    config = build_config({}, env={})
    db = await Database.open(tmp_path / "r1proxy.db")
    book = PriceBook(config, db, now=lambda: 1000.0)
    book.replace("openrouter", parse_models(MODELS_DOC))
    await db.close()
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        again = PriceBook(config, db, now=lambda: 1000.0 + 3600)
        assert await again.load() == 2
        assert again.lookup("openrouter", "deepseek/deepseek-r1") == book.lookup("openrouter", "deepseek/deepseek-r1")
        assert again.stale(["openrouter"], 86400) == []  # an hour old: no refetch at start
        assert PriceBook(config, db, now=lambda: 1000.0 + 90000).stale(["openrouter"], 86400) == ["openrouter"]
    finally:
        await db.close()


async def test_account_watch_reads_models_and_key_of_openrouter_upstreams(fake_server: Any) -> None:
    import aiohttp

    config = build_config({"upstreams": {"openrouter": {"base_url": fake_server.base_url},
                                         "local": {"base_url": fake_server.base_url, "api_key_env": "X"}}},
                          env={"OPENROUTER_API_KEY": UPSTREAM_KEY, "X": "sk-local"})
    assert config.upstreams["openrouter"].kind == "openrouter" and config.upstreams["local"].kind == "openai"
    book, quota = PriceBook(config), FreeQuota()
    async with aiohttp.ClientSession() as session:
        watch = AccountWatch(config, session, book, quota)
        await watch.refresh()
    paths = sorted(c.path for c in fake_server.fake.info_calls)
    assert paths == ["/api/v1/key", "/api/v1/models"]  # only the OpenRouter-kind upstream is asked
    assert all(c.headers.get("Authorization") == f"Bearer {UPSTREAM_KEY}" for c in fake_server.fake.info_calls)
    assert book.lookup("openrouter", "deepseek/deepseek-r1").cache_read == pytest.approx(0.055e-6)  # type: ignore[union-attr]
    assert quota.keys["openrouter"].is_free_tier is True and quota.limit("openrouter") == 50
    assert fake_server.fake.count() == 0  # no chat call was made


async def test_account_watch_failure_is_logged_once_and_keeps_old_prices(caplog: pytest.LogCaptureFixture) -> None:
    import aiohttp

    from tests.fake_upstream import unused_port

    config = build_config({"upstreams": {"openrouter": {"base_url": f"http://127.0.0.1:{unused_port()}/api/v1"}}},
                          env={"OPENROUTER_API_KEY": UPSTREAM_KEY})
    book = PriceBook(config)
    book.replace("openrouter", parse_models(MODELS_DOC))
    async with aiohttp.ClientSession() as session:
        watch = AccountWatch(config, session, book, FreeQuota())
        await watch.refresh()
        await watch.refresh()
    failures = [r for r in caplog.records if "GET /models failed" in r.getMessage()]
    assert len(failures) == 1 and UPSTREAM_KEY not in caplog.text
    assert book.lookup("openrouter", "deepseek/deepseek-r1") is not None
