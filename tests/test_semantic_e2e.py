"""The semantic tier in the real proxy: reworded Roo tasks hit with an explanation, near misses go upstream,
a hit is never stale and never feeds another, `cache purge --key` removes a wrong source, opt-in per key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.helpers import T0, answer, frozen_clock, settle, upstream_calls
from tests.roo import roo_body
from tests.semantic_corpus import ENHANCE
from tests.semantic_model import encoder
from tests.test_cli import run

SEMANTIC = {"cache": {"semantic": {"enabled": True}}}
TASK = "Add a --verbose flag to cli.py"
REWORDED = "Please add a --verbose flag to cli.py, thanks"


@pytest.fixture(autouse=True)
def _model() -> None:
    encoder()  # skip (or fail on CI) without the semantic extra and the model


async def rows(client: Any, sql: str) -> list[tuple[Any, ...]]:
    client.app[GATEWAY_KEY].flush_accounting()
    db = client.app[STORE_KEY].db
    await db.flush()
    return await db.fetchall(sql)


async def test_a_reworded_task_hits_with_an_explanation(proxy: Any, fake_server: Any) -> None:
    client = await proxy(**SEMANTIC)
    r1, a1 = await answer(client, roo_body(TASK))
    assert r1.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 1
    source = r1.headers["X-Cache-Key"]
    await settle(client)
    r2, a2 = await answer(client, roo_body(REWORDED, when="2026-04-21T09:00:00+02:00", stream=False))
    assert r2.headers["X-Cache"] == "HIT"
    assert r2.headers["X-Cache-Tier"] == "semantic"
    assert r2.headers["X-Cache-Source-Key"] == source
    assert 0.95 <= float(r2.headers["X-Cache-Similarity"]) <= 1.0
    assert r2.headers["X-Cache-Key"] != source  # its own key, which is not stored
    assert upstream_calls(fake_server) == 1
    assert a2["content"] == a1["content"] and a1["content"]
    logged = await rows(client, "SELECT cache, tier, semantic_source, semantic_similarity, cache_key FROM requests "
                                "ORDER BY ts, rowid")
    assert logged[0][:3] == ("MISS", "", None) or logged[0][:3] == ("MISS", None, None)
    assert logged[1][:3] == ("HIT", "semantic", source)
    assert abs(logged[1][3] - float(r2.headers["X-Cache-Similarity"])) < 1e-3
    # never feeds another semantic hit: nothing was stored or indexed for the semantic hit
    assert await rows(client, "SELECT key FROM semantic_vectors") == [(source,)]
    entry, _ = await client.app[STORE_KEY].cache.get(r2.headers["X-Cache-Key"])
    assert entry is None


@pytest.mark.parametrize("near_miss", [
    "Remove the --verbose flag from cli.py",
    "Add a --quiet flag to cli.py",
    "Add a --verbose flag to main.py",
    "Do not add a --verbose flag to cli.py",
])
async def test_near_misses_go_upstream(proxy: Any, fake_server: Any, near_miss: str) -> None:
    client = await proxy(**SEMANTIC)
    await answer(client, roo_body(TASK))
    await settle(client)
    r, a = await answer(client, roo_body(near_miss))
    assert r.headers["X-Cache"] == "MISS" and "X-Cache-Source-Key" not in r.headers
    assert upstream_calls(fake_server) == 2 and a["content"].startswith("Answer to:")


async def test_enhance_prompt_calls_hit_too(proxy: Any, fake_server: Any) -> None:
    client = await proxy(**SEMANTIC)
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": ENHANCE + "make the tests run faster"}]}
    await answer(client, body)
    await settle(client)
    again = {"model": "deepseek-r1", "messages": [{"role": "user", "content": ENHANCE + "Make the tests run faster."}]}
    r, _ = await answer(client, again)
    assert (r.headers["X-Cache"], r.headers["X-Cache-Tier"]) == ("HIT", "semantic")
    assert upstream_calls(fake_server) == 1


async def test_an_expired_source_is_never_served_stale(proxy: Any, fake_server: Any) -> None:
    client = await proxy(cache={"ttl": 60, "semantic": {"enabled": True}})
    move = frozen_clock(client)
    await answer(client, roo_body(TASK))
    await settle(client)
    move(T0 + 61)
    r, _ = await answer(client, roo_body(REWORDED))
    assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2


async def test_purge_key_removes_a_wrong_source_from_a_running_server(
        proxy: Any, fake_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = await proxy(**SEMANTIC)
    r1, _ = await answer(client, roo_body(TASK))
    await settle(client)
    r2, _ = await answer(client, roo_body(REWORDED))
    assert r2.headers["X-Cache-Tier"] == "semantic"
    cfg = tmp_path / "purge.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n')
    code, out, err = await asyncio.to_thread(run, capsys, "--config", str(cfg), "cache", "purge", "--key",
                                             r2.headers["X-Cache-Source-Key"])
    assert code == 0 and "purged" in out, err
    assert r2.headers["X-Cache-Source-Key"] == r1.headers["X-Cache-Key"]
    assert await rows(client, "SELECT key FROM semantic_vectors") == []
    r3, _ = await answer(client, roo_body(REWORDED))  # the running server's RAM index still had it
    assert r3.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2
    code, _, err = await asyncio.to_thread(run, capsys, "--config", str(cfg), "cache", "purge", "--key", "r1:nope")
    assert code != 0 and "no cache entry" in err


async def test_opt_in_per_key(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=[{"name": "roo", "key": "k-roo"}, {"name": "other", "key": "k-other"}],
                         cache={"semantic": {"enabled": True, "keys": ["roo"]}})
    roo, other = {"Authorization": "Bearer k-roo"}, {"Authorization": "Bearer k-other"}
    await answer(client, roo_body(TASK), headers=roo)
    await settle(client)
    r, _ = await answer(client, roo_body(REWORDED), headers=other)
    assert r.headers["X-Cache"] == "MISS"
    r, _ = await answer(client, roo_body("add a --verbose flag to cli.py please"), headers=roo)
    assert r.headers["X-Cache-Tier"] == "semantic"


async def test_off_by_default(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    assert client.app[GATEWAY_KEY].semantic is None
    await answer(client, roo_body(TASK))
    await settle(client)
    r, _ = await answer(client, roo_body(REWORDED))
    assert r.headers["X-Cache"] == "MISS" and upstream_calls(fake_server) == 2
    assert await rows(client, "SELECT key FROM semantic_vectors") == []


async def test_tool_result_turns_take_no_part(proxy: Any, fake_server: Any) -> None:
    client = await proxy(**SEMANTIC)
    body = roo_body(TASK)
    body["messages"] += [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "print('hi')"},
        {"role": "user", "content": [{"type": "text", "text": "<environment_details>\nx\n</environment_details>"}]},
    ]
    await answer(client, body)
    await settle(client)
    assert await rows(client, "SELECT key FROM semantic_vectors") == []
