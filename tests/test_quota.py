"""The free daily quota: counting :free upstream calls per UTC day against what /key implies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from r1proxy.db import Database
from r1proxy.quota import FreeQuota, KeyInfo

DAY = 1_764_115_200.0  # 2025-11-26 00:00 UTC


def key_doc(free: bool) -> dict[str, object]:
    return {"data": {"label": "sk-or-v1-abc...123", "limit": None, "usage": 1.5, "usage_daily": 0.25,
                     "is_free_tier": free, "rate_limit": {"requests": 20, "interval": "10s"}}}


def test_allowance_follows_is_free_tier() -> None:
    q = FreeQuota(now=lambda: DAY + 10)
    assert q.limit("openrouter") == 50  # unknown: the smaller allowance
    q.set_key("openrouter", key_doc(free=False))
    assert q.limit("openrouter") == 1000
    q.set_key("openrouter", key_doc(free=True))
    assert q.limit("openrouter") == 50
    assert KeyInfo.parse({"nope": 1}) is None


def test_counts_only_free_models_and_served_calls() -> None:
    q = FreeQuota(now=lambda: DAY + 10)
    q.count("openrouter", "deepseek/deepseek-r1:free", 200)
    q.count("openrouter", "deepseek/deepseek-r1:free", 503)  # answered (and counted by OpenRouter)
    q.count("openrouter", "deepseek/deepseek-r1:free", 429)  # refused
    q.count("openrouter", "deepseek/deepseek-r1:free", 0)  # never reached it
    q.count("openrouter", "deepseek/deepseek-r1", 200)  # paid model
    assert q.left("openrouter") == 48
    assert q.text("openrouter") == "free requests left today: 48 (resets 00:00 UTC)"


def test_a_new_utc_day_starts_from_zero() -> None:
    now = [DAY + 86000]
    q = FreeQuota(now=lambda: now[0])
    q.count("openrouter", "x:free", 200)
    assert q.left("openrouter") == 49
    now[0] = DAY + 86400 + 1
    assert q.left("openrouter") == 50


def test_a_daily_limit_429_overrides_the_local_count() -> None:
    q = FreeQuota(now=lambda: DAY + 10)
    q.count("openrouter", "x:free", 200)
    q.exhausted("openrouter", {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0"})
    assert q.limit("openrouter") == 1000 and q.left("openrouter") == 0
    q2 = FreeQuota(now=lambda: DAY + 10)
    q2.exhausted("openrouter", None)  # no headers: used up against the known allowance
    assert q2.left("openrouter") == 0


def test_warns_once_at_90_percent(caplog: pytest.LogCaptureFixture) -> None:
    q = FreeQuota(now=lambda: DAY + 10)
    seen: list[str] = []
    q.on_change = seen.append
    with caplog.at_level(logging.WARNING, logger="r1proxy"):
        for _ in range(50):
            q.count("openrouter", "x:free", 200)
    warnings = [r for r in caplog.records if "free requests used today" in r.getMessage()]
    assert len(warnings) == 1 and "45 of 50" in warnings[0].getMessage()
    assert seen[-1] == "free requests left today: 0 (resets 00:00 UTC)"


async def test_counts_and_key_survive_a_restart(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    q = FreeQuota(db, now=lambda: DAY + 10)
    for _ in range(3):
        q.count("openrouter", "x:free", 200)
    q.set_key("openrouter", key_doc(free=False))
    await db.close()
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        again = FreeQuota(db, now=lambda: DAY + 20)
        await again.load()
        assert again.used["openrouter"] == 3 and again.left("openrouter") == 997
        stored = (await db.fetchall("SELECT info FROM upstream_keys"))[0][0]
        assert "sk-or" not in stored  # the label (a key prefix) is not kept
        tomorrow = FreeQuota(db, now=lambda: DAY + 86400 + 5)
        await tomorrow.load()
        assert tomorrow.left("openrouter") == 1000
        st = tomorrow.status()["openrouter"]
        assert st["used_today"] == 0 and st["resets"] == "00:00 UTC" and st["key"]["is_free_tier"] is False
    finally:
        await db.close()
