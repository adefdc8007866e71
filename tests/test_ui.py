"""The dashboard over HTTP (no browser): access rule, login, CSRF, headers, `/`, data, aggregates, purge.

The browser tests (tests/test_ui_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.migrations import MIGRATIONS, applied, migrate
from r1proxy.rollups import insert_requests, row_values
from r1proxy.ui import data as ui_data
from r1proxy.ui.access import CSP, local_host
from r1proxy.ui.assets import ASSETS, own_gzip_bytes
from r1proxy.ui.data import RequestFilter, UiData
from tests.conftest import LOCAL_KEY
from tests.roo import roo_body

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
KEYS = [{"name": "roo", "key": LOCAL_KEY}]
PAGES = ("/ui", "/ui/requests", "/ui/cache", "/ui/upstreams", "/ui/api/overview", "/ui/api/latency")


async def chat(client: Any, text: str, **kw: Any) -> Any:
    r = await client.post("/chat/completions", json=roo_body(text, stream=False, **kw), headers=AUTH)
    assert r.status == 200, await r.text()
    await r.read()
    return r


async def settled(client: Any) -> None:
    """Everything finished so far is accounted for and written to the database."""
    client.app[GATEWAY_KEY].flush_accounting()
    await client.app[STORE_KEY].db.flush()


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert m, page[:400]
    return m.group(1)


async def test_every_page_answers_loopback_with_strict_headers(proxy: Any) -> None:
    client = await proxy(keys=KEYS)
    for path in PAGES:
        r = await client.get(path)
        assert r.status == 200, (path, await r.text())
        assert r.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Server-Timing"].startswith("app;dur=")
        if not path.startswith("/ui/api/"):
            assert "<script>" not in await r.text()  # scripts come from files only


async def test_root_redirects_a_browser_and_stays_404_json_for_api_clients(proxy: Any) -> None:
    client = await proxy()
    r = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, "/ui")
    r = await client.get("/", headers={"Accept": "application/json"})
    assert r.status == 404
    assert (await r.json())["error"]["type"] == "not_found_error"


async def test_a_foreign_host_name_is_refused_on_loopback(proxy: Any) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 reaches us with its own Host."""
    client = await proxy()
    for path in PAGES:
        r = await client.get(path, headers={"Host": "evil.example"})
        assert r.status == 403, path
    r = await client.post("/ui/cache/purge", data={"what": "age", "older_than": "0s"},
                          headers={"Host": "evil.example"})
    assert r.status == 403


def test_local_host_names() -> None:
    from r1proxy.config import ServerConfig

    s = ServerConfig()
    assert all(local_host(h, s) for h in ("localhost:4000", "127.0.0.1:4000", "[::1]:4000", "127.0.0.2", "LOCALHOST",
                                          "192.0.2.2:4000"))  # an IP literal cannot be rebound
    assert not any(local_host(h, s) for h in ("evil.example", "evil.example:4000", ""))
    assert local_host("r1proxy.lan:4000", ServerConfig(allowed_hosts=("r1proxy.lan",)))


async def test_admin_key_needs_bearer_or_login_even_on_loopback(proxy: Any) -> None:
    client = await proxy(server={"admin_key": "s3cret-admin"})
    for path in PAGES:
        r = await client.get(path)
        assert r.status == 401, path
        assert "s3cret" not in await r.text()
        r = await client.get(path, headers={"Authorization": "Bearer s3cret-admin"})
        assert r.status == 200, path
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
    login = await client.get("/ui/login")
    token = csrf_of(await login.text())
    r = await client.post("/ui/login", data={"admin_key": "nope", "csrf": token}, allow_redirects=False)
    assert r.status == 401
    r = await client.post("/ui/login", data={"admin_key": "s3cret-admin"}, allow_redirects=False)
    assert r.status == 403  # no CSRF token
    r = await client.post("/ui/login", data={"admin_key": "s3cret-admin", "csrf": token}, allow_redirects=False)
    assert r.status == 303
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
    assert (await client.get("/ui")).status == 200  # the session cookie now opens every page
    page = await (await client.get("/ui/cache")).text()
    r = await client.post("/ui/logout", data={"csrf": csrf_of(page)}, allow_redirects=False)
    assert r.status == 303
    assert (await client.get("/ui")).status == 401


async def test_a_forged_session_cookie_is_refused(proxy: Any) -> None:
    client = await proxy(server={"admin_key": "s3cret-admin"})
    client.session.cookie_jar.update_cookies({"r1proxy_ui": f"{int(time.time()) + 999}.{'0' * 64}"})
    assert (await client.get("/ui")).status == 401


async def test_actions_need_a_csrf_token_and_a_same_origin(proxy: Any) -> None:
    client = await proxy(keys=KEYS)
    await chat(client, "kept")
    await settled(client)
    page = await (await client.get("/ui/cache")).text()
    token = csrf_of(page)
    for data, headers in (({"what": "age", "older_than": "0s"}, {}),
                          ({"what": "age", "older_than": "0s", "csrf": "0" * 64}, {}),
                          ({"what": "age", "older_than": "0s", "csrf": token}, {"Origin": "http://evil.example"}),
                          ({"what": "age", "older_than": "0s", "csrf": token}, {"Sec-Fetch-Site": "cross-site"})):
        r = await client.post("/ui/cache/purge", data=data, headers=headers, allow_redirects=False)
        assert r.status == 403, (data, headers)
    assert (await client.app[STORE_KEY].cache.stats())[1].entries == 1  # nothing was purged
    r = await client.post("/ui/cache/purge", data={"what": "age", "older_than": "0s", "csrf": token},
                          allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (303, "/ui/cache?purged=1")
    assert [t.entries for t in await client.app[STORE_KEY].cache.stats()] == [0, 0]


async def test_purge_one_entry_makes_the_next_request_a_miss(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=KEYS)
    await chat(client, "purge me")
    assert (await chat(client, "purge me")).headers["X-Cache"] == "HIT"
    await settled(client)
    page = await (await client.get("/ui/cache")).text()
    key = re.search(r'data-key="([^"]+)"', page)
    assert key
    r = await client.post("/ui/cache/purge", data={"what": "one", "key": key.group(1), "csrf": csrf_of(page)},
                          allow_redirects=False)
    assert r.headers["Location"] == "/ui/cache?purged=1"
    assert (await chat(client, "purge me")).headers["X-Cache"] == "MISS"


async def test_bad_filters_are_a_400_page_not_an_error(proxy: Any) -> None:
    client = await proxy()
    for q in ("status=abc", "cache=MAYBE", "since=2y", "from=yesterday", "before=x", "n=lots"):
        r = await client.get(f"/ui/requests?{q}")
        assert r.status == 400, q
        assert "text/html" in r.headers["Content-Type"]
    assert (await client.get("/ui/requests/99999")).status == 404


async def test_overview_counts_match_the_request_log(proxy: Any) -> None:
    client = await proxy(keys=KEYS)
    for text in ("a", "b", "a", "a"):
        await chat(client, text)
    await settled(client)
    d = await (await client.get("/ui/api/overview")).json()
    t = d["today"]
    assert (t["requests"], t["hits"], t["by_outcome"]) == (4, 2, {"miss": 2, "memory": 2})
    assert t["cost_saved"] > 0 and t["cost"] > 0
    assert sum(d["hourly"]["requests"]) == 4 and len(d["hourly"]["t"]) == 48
    assert sum(d["daily"]["hits"]) == 2 and len(d["daily"]["t"]) == 30
    assert [(m["model"], m["requests"], m["hits"]) for m in d["models"]] == [("deepseek-r1", 4, 2)]
    assert [(k["key"], k["requests"]) for k in d["keys"]] == [("roo", 4)]
    assert d["keys"][0]["cost"] == pytest.approx(t["cost"])
    db = sqlite3.connect(client.app[STORE_KEY].db.path)
    prefix = db.execute("SELECT COALESCE(SUM(prefix_saved), 0) FROM requests").fetchone()[0]
    assert t["prefix_saved"] == pytest.approx(prefix)
    assert sum(d["daily"]["prefix_saved"]) == pytest.approx(prefix)
    day = db.execute("SELECT requests, hits, usd_saved, usd_spent FROM v_daily").fetchone()
    assert day == (t["requests"], t["hits"], pytest.approx(t["cost_saved"]), pytest.approx(t["cost"]))


def test_m050_backfills_the_hourly_table_from_an_existing_log(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    names = [fn.__name__ for fn in MIGRATIONS]
    applied(conn)
    for fn in MIGRATIONS[:names.index("m050_requests_hourly")]:
        fn(conn)
    rows = [(3600.0 * 10 + i, "r1", "HIT" if i % 2 else "MISS", "memory" if i % 2 else "", 200, 0.5, 10, 5, 0.125)
            for i in range(6)]
    conn.executemany("INSERT INTO requests (ts, alias, cache, tier, status, cost, prompt_tokens, completion_tokens,"
                     " prefix_saved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    for fn in MIGRATIONS[names.index("m050_requests_hourly"):]:
        fn(conn)
    got = conn.execute("SELECT hour, cache, requests, cost, prompt_tokens, prefix_saved FROM requests_hourly "
                       "ORDER BY cache").fetchall()
    assert got == [(36000, "HIT", 3, 1.5, 30, 0.375), (36000, "MISS", 3, 1.5, 30, 0.375)]
    insert_requests(conn, [row_values({"ts": 36001, "alias": "r1", "cache": "MISS", "tier": "", "status": 429})])
    assert conn.execute("SELECT requests, rate_limited FROM requests_hourly WHERE cache = 'MISS'").fetchone() == (4, 1)
    insert_requests(conn, [row_values({"ts": 36002})])  # every other column NULL: still logged and counted
    insert_requests(conn, [row_values({"alias": "no time"})])  # no ts: logged, not aggregated
    assert conn.execute("SELECT SUM(requests), SUM(errors) FROM requests_hourly").fetchone() == (8, 0)


async def test_request_browser_filters_and_keyset_pages(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    migrate(conn)
    rows = [(1000.0 + i, f"k{i % 2}", "r1" if i % 3 else "v3", "HIT" if i % 4 == 0 else "MISS",
             429 if i == 7 else 200) for i in range(25)]
    insert_requests(conn, [row_values(dict(zip(("ts", "key_name", "alias", "cache", "status"), r, strict=True)))
                           for r in rows])
    conn.close()
    data = UiData(tmp_path / "r.db")
    try:
        page, more = data.requests(RequestFilter(), None, 10)
        assert [r["id"] for r in page] == list(range(25, 15, -1)) and more
        page2, more2 = data.requests(RequestFilter(), page[-1]["id"], 10)
        assert [r["id"] for r in page2] == list(range(15, 5, -1)) and more2
        last, more3 = data.requests(RequestFilter(), page2[-1]["id"], 10)
        assert [r["id"] for r in last] == [5, 4, 3, 2, 1] and not more3
        want = [i + 1 for i in range(25) if i % 2 == 1 and i % 3 and i % 4]
        got, _ = data.requests(RequestFilter(key="k1", model="r1", cache="MISS"), None, 100)
        assert [r["id"] for r in got] == sorted(want, reverse=True)
        assert [r["id"] for r in data.requests(RequestFilter(status="4xx"), None, 100)[0]] == [8]
        assert [r["id"] for r in data.requests(RequestFilter(since=1010, until=1012), None, 100)[0]] == [12, 11]
    finally:
        await data.close()


async def test_cache_page_queries_read_an_index_not_the_whole_table(tmp_path: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Cache page at a million entries: its top entries (all, or one model's) and its model list
    must come from an index in order, never a scan of cache_entries or a sort of it (#17)."""
    conn = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    migrate(conn)
    rows = [(f"key{i:03d}", "m-big" if i % 10 else "m-small", 1000.0 + i, None if i % 3 else 2000.0 + i, i % 7)
            for i in range(200)]
    conn.executemany("INSERT INTO cache_entries (key, model, created_at, last_hit_at, hits) VALUES (?, ?, ?, ?, ?)",
                     rows)
    conn.close()
    data = UiData(tmp_path / "r.db")
    seen: list[str] = []
    try:
        await data.call(lambda: data._db().set_trace_callback(seen.append))
        want = sorted(rows, key=lambda r: (r[4], r[3] if r[3] is not None else r[2]), reverse=True)
        top = await data.call(data.cache_entries, 100)
        assert [e["key"] for e in top] == [r[0] for r in want[:100]]
        small = await data.call(data.cache_entries, 5, "m-small")
        assert [e["key"] for e in small] == [r[0] for r in want if r[1] == "m-small"][:5]
        models = await data.call(data.cache_models)
        assert models == [("m-big", 180), ("m-small", 20)]
        await data.call(lambda: data._db().set_trace_callback(None))
        monkeypatch.setattr(ui_data, "MODEL_COUNT_CAP", 50)  # past the cap: counted to cap + 1, no further
        assert await data.call(data.cache_models) == [("m-big", 51), ("m-small", 20)]
        plans = {sql: " | ".join(r[3] for r in await data.call(
            lambda q=sql: data._db().execute("EXPLAIN QUERY PLAN " + q, [None] * q.count("?")).fetchall()))
            for sql in seen if "cache_entries" in sql}
        assert len(plans) == 5, plans  # all, one model, the models, each model's count (values inlined)
        for sql, plan in plans.items():
            assert "TEMP B-TREE" not in plan, (sql, plan)
            assert all("INDEX" in step for step in plan.split(" | ") if "cache_entries" in step), (sql, plan)
    finally:
        await data.close()


def test_own_assets_stay_small_and_uplot_ships_with_its_licence() -> None:
    assert own_gzip_bytes() <= 40 * 1024
    assert {"ui.js", "ui.css", "favicon.svg", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"} <= set(ASSETS)
    assert b"MIT License" in ASSETS["uPlot.LICENSE"].body


async def test_purge_by_model_leaves_other_models_cached(proxy: Any) -> None:
    client = await proxy(keys=KEYS)
    await chat(client, "same question")
    await chat(client, "same question", model="deepseek-r1-free")
    await settled(client)
    page = await (await client.get("/ui/cache")).text()
    assert 'value="deepseek/deepseek-r1"' in page and 'value="deepseek/deepseek-r1:free"' in page
    r = await client.post("/ui/cache/purge", data={"what": "model", "model": "deepseek/deepseek-r1",
                                                   "csrf": csrf_of(page)}, allow_redirects=False)
    assert r.headers["Location"] == "/ui/cache?purged=1"
    assert (await chat(client, "same question")).headers["X-Cache"] == "MISS"
    assert (await chat(client, "same question", model="deepseek-r1-free")).headers["X-Cache"] == "HIT"


async def test_cache_page_with_the_cache_off(proxy: Any) -> None:
    client = await proxy(cache={"enabled": False})
    r = await client.get("/ui/cache")
    assert r.status == 200 and "cache is disabled" in await r.text()


async def test_why_did_this_miss_names_the_first_difference(proxy: Any) -> None:
    client = await proxy(keys=KEYS)
    await chat(client, "Add a --verbose flag to cli.py")
    await chat(client, "Add a --quiet flag to cli.py")
    await settled(client)
    rows = await (await client.get("/ui/requests")).text()
    newest = re.search(r'data-id="(\d+)"', rows)
    assert newest
    page = await (await client.get(f"/ui/requests/{newest.group(1)}")).text()
    assert f'href="/ui/requests/{newest.group(1)}/why"' in page
    why = await (await client.get(f"/ui/requests/{newest.group(1)}/why")).text()
    assert "first difference" in why and "--verbose" in why and "--quiet" in why


async def test_login_is_throttled_after_repeated_wrong_keys(proxy: Any) -> None:
    from r1proxy.ui.access import LOGIN_FAILURES

    client = await proxy(server={"admin_key": "s3cret-admin"})
    token = csrf_of(await (await client.get("/ui/login")).text())
    for _ in range(LOGIN_FAILURES):
        r = await client.post("/ui/login", data={"admin_key": "guess", "csrf": token}, allow_redirects=False)
        assert r.status == 401
    r = await client.post("/ui/login", data={"admin_key": "s3cret-admin", "csrf": token}, allow_redirects=False)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0  # even the right key waits out the window
    assert (await client.get("/ui", headers={"Authorization": "Bearer s3cret-admin"})).status == 200


def test_login_throttle_window_and_bounded_memory() -> None:
    from r1proxy.ui.access import _TRACKED, LOGIN_FAILURES, LOGIN_WINDOW_S, Access

    a = Access()
    for i in range(LOGIN_FAILURES):
        a.login_failed("10.0.0.1", now=100.0 + i)
    assert a.login_blocked("10.0.0.1", now=110.0) == pytest.approx(LOGIN_WINDOW_S - 10)
    assert a.login_blocked("10.0.0.2", now=110.0) == 0
    assert a.login_blocked("10.0.0.1", now=100.0 + LOGIN_WINDOW_S + 0.5) == 0  # the first failure aged out
    for i in range(_TRACKED + 5):
        a.login_failed(f"h{i}", now=1.0)
    assert len(a._failures) <= _TRACKED
