"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser).

Each test runs the real proxy on a real socket, in front of the fake OpenRouter, and a fresh headless
Chromium. Every request the page makes is checked to stay on the proxy's own address (the pages
work offline), and any console error fails the test. Screenshots go to $R1PROXY_UI_SCREENSHOTS
(docs/screenshots when refreshed for the README) or to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from r1proxy.app import create_app
from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from tests.conftest import LOCAL_KEY
from tests.fake_upstream import Script
from tests.realparts import missing
from tests.roo import roo_body

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
KEYS = [{"name": "roo", "key": LOCAL_KEY}, {"name": "ci", "key": "ci-key-2"}]
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">"><b>bold?</b>'
WAIT_MS = 15000

if not os.path.exists(CHROMIUM):
    missing(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`; .ci/run does) "
            "to run the browser tests", module=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is in the [test] extra")
expect = playwright_api.expect


def shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("R1PROXY_UI_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


class Live:
    """The proxy on a socket, plus helpers to use it as Roo would."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.app = server.app
        self.base = str(server.make_url("")).rstrip("/")

    async def chat(self, text: str, key: str = LOCAL_KEY, **kw: Any) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as s, s.post(
                f"{self.base}/chat/completions", json=roo_body(text, stream=False, **kw),
                headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200, await r.text()
            await r.read()
            return r

    async def settle(self) -> None:
        self.app[GATEWAY_KEY].flush_accounting()
        await self.app[STORE_KEY].db.flush()

    async def api(self, path: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(self.base + path) as r:
            assert r.status == 200
            return await r.json()


@pytest.fixture
def live(aiohttp_server: Callable[..., Awaitable[Any]], make_config: Any) -> Callable[..., Awaitable[Live]]:
    async def start(host: str = "127.0.0.1", **sections: Any) -> Live:
        sections.setdefault("keys", KEYS)
        return Live(await aiohttp_server(create_app(make_config(**sections)), host=host))

    return start


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


class Tab:
    """A page that records console errors and any request leaving the proxy's origin."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.origin + "/"):
            await route.continue_()
        else:
            self.foreign.append(route.request.url)
            await route.abort()

    async def goto(self, path: str, status: int = 200) -> Any:
        resp = await self.page.goto(self.origin + path)
        assert resp is not None and resp.status == status, (path, resp and resp.status)
        return resp

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign


async def open_tab(browser: Any, origin: str, **ctx: Any) -> Tab:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, **ctx)
    context.set_default_timeout(WAIT_MS)
    tab = Tab(await context.new_page(), origin)
    await context.route("**/*", tab._route)
    return tab


async def test_every_page_loads_clean_and_charts_show_the_apis_points(live: Any, browser: Any,
                                                                      tmp_path: Path) -> None:
    srv = await live()
    for text in ("one", "two", "one", "three", "one"):
        await srv.chat(text)
    await srv.settle()
    tab = await open_tab(browser, srv.base)
    shots = shots_dir(tmp_path)
    await tab.goto("/ui")
    await tab.page.wait_for_selector("main[data-updates]", timeout=WAIT_MS)
    api = await srv.api("/ui/api/overview")
    for chart, series, first in (("#chart-hourly", "hourly", "requests"), ("#chart-daily", "daily", "cost")):
        el = tab.page.locator(chart)
        assert await el.get_attribute("data-points") == str(len(api[series]["t"]))
        assert float(await el.get_attribute("data-total") or "nan") == pytest.approx(sum(api[series][first]))
        painted = await tab.page.evaluate(
            """sel => { const c = document.querySelector(sel + ' canvas');
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i]) n++; } return n; }""", chart)
        assert painted > 500, (chart, painted)
    assert await tab.page.locator('[data-field="today.requests"]').first.inner_text() == "5"
    await tab.page.screenshot(path=str(shots / "overview.png"), full_page=True)
    for path, name in (("/ui/requests", "requests"), ("/ui/cache", "cache"), ("/ui/upstreams", "upstreams")):
        await tab.goto(path)
        if path == "/ui/upstreams":
            await tab.page.wait_for_selector("main[data-updates]", timeout=WAIT_MS)
            assert await tab.page.locator("#chart-latency").get_attribute("data-points") == "24"
        await tab.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    await tab.goto("/ui/requests")
    await tab.page.locator("table.requests tbody tr").first.locator("td").nth(2).click()  # a row, not its link
    await tab.page.wait_for_url(re.compile(r"/ui/requests/\d+$"), timeout=WAIT_MS)
    assert "Content" in await tab.page.locator("main").inner_text()
    await tab.page.screenshot(path=str(shots / "request.png"), full_page=True)
    tab.clean()


async def test_filters_and_keyset_pagination(live: Any, browser: Any) -> None:
    srv = await live()
    for i in range(5):
        await srv.chat(f"roo {i}")
    for i in range(3):
        await srv.chat(f"ci {i}", key="ci-key-2")
    await srv.settle()
    tab = await open_tab(browser, srv.base)
    await tab.goto("/ui/requests?n=3")
    rows = tab.page.locator("table.requests tbody tr")
    assert await rows.count() == 3
    await tab.page.select_option("select[name=key]", "roo")
    await tab.page.click("form.filters button[type=submit]")
    await tab.page.wait_for_url(re.compile(r"key=roo"), timeout=WAIT_MS)
    seen: list[str] = []
    for expected in (3, 2):
        assert await rows.count() == expected
        for i in range(expected):
            assert await rows.nth(i).locator("td").nth(1).inner_text() == "roo"
            seen.append(await rows.nth(i).get_attribute("data-id") or "")
        if expected == 3:
            await tab.page.click("a.older")
            await tab.page.wait_for_url(re.compile(r"before=\d+"), timeout=WAIT_MS)
    assert await tab.page.locator("a.older").count() == 0  # the last page
    assert len(set(seen)) == 5 and seen == sorted(seen, key=int, reverse=True)
    await tab.page.select_option("select[name=cache]", "HIT")
    await tab.page.click("form.filters button[type=submit]")
    await tab.page.wait_for_url(re.compile(r"cache=HIT"), timeout=WAIT_MS)
    assert "no requests match" in await tab.page.locator("table.requests").inner_text()
    tab.clean()


async def test_purge_from_the_page_makes_the_next_request_a_miss(live: Any, browser: Any) -> None:
    srv = await live()
    await srv.chat("purge this one")
    assert (await srv.chat("purge this one")).headers["X-Cache"] == "HIT"
    await srv.settle()
    tab = await open_tab(browser, srv.base)
    await tab.goto("/ui/cache")
    assert await tab.page.locator("table.entries tbody tr[data-key]").count() == 1
    await tab.page.locator("table.entries tbody tr[data-key] button").click()
    await tab.page.wait_for_selector("p.notice", timeout=WAIT_MS)
    assert await tab.page.locator("p.notice").inner_text() == "Purged 1 entry."
    assert await tab.page.locator("table.entries tbody tr[data-key]").count() == 0
    assert (await srv.chat("purge this one")).headers["X-Cache"] == "MISS"
    tab.clean()


async def test_the_overview_updates_itself_after_a_request(live: Any, browser: Any) -> None:
    srv = await live()
    await srv.chat("before")
    await srv.settle()
    tab = await open_tab(browser, srv.base)
    await tab.goto("/ui?poll_ms=300")
    cell = '[data-field="today.requests"]'
    assert await tab.page.locator(cell).first.inner_text() == "1"
    await tab.page.wait_for_selector("main[data-updates]", timeout=WAIT_MS)
    await srv.chat("after")  # not settled by hand: the page must pick it up by itself
    # expect() polls from Playwright's side: wait_for_function would need eval, which the CSP forbids
    await expect(tab.page.locator(cell).first).to_have_text("2", timeout=WAIT_MS)
    await expect(tab.page.locator("#chart-hourly")).to_have_attribute("data-total", "2", timeout=WAIT_MS)
    tab.clean()


async def test_an_xss_payload_in_prompt_and_answer_renders_as_text(live: Any, browser: Any, fake_server: Any) -> None:
    srv = await live(server={"log_prompts": True})
    fake_server.fake.script(Script(answer="answer " + XSS, reasoning="thinking " + XSS))
    await srv.chat(XSS)
    await srv.settle()
    tab = await open_tab(browser, srv.base)
    rid = (await srv.api("/ui/api/overview"))["today"]["requests"]
    await tab.goto(f"/ui/requests/{rid}")
    for sel, prefix in (("pre.prompt", ""), ("pre.content", "answer "), ("pre.reasoning", "thinking ")):
        assert prefix + XSS in await tab.page.locator(sel).inner_text(), sel
    await tab.goto("/ui/cache")
    assert "<script>" in await tab.page.locator("td.preview").first.inner_text()
    for path in ("/ui/cache", f"/ui/requests/{rid}"):
        await tab.goto(path)
        assert await tab.page.evaluate("window.__xss") is None
        assert await tab.page.locator("main img, main b, main script").count() == 0
    tab.clean()


def non_loopback_address() -> str | None:
    """One of this machine's own non-loopback IPv4 addresses (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


async def test_from_a_non_loopback_address_everything_is_refused_without_the_admin_key(
        live: Any, browser: Any, tmp_path: Path) -> None:
    """The proxy listens on the machine's real interface address and Chromium connects to it there:
    the server sees a genuinely non-loopback peer (the same path a LAN client's packets take)."""
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    srv = await live(host=addr)
    await srv.chat("kept")
    tab = await open_tab(browser, srv.base)
    for path in ("/ui", "/ui/requests", "/ui/requests/1", "/ui/cache", "/ui/upstreams", "/ui/api/overview",
                 "/ui/api/latency", "/ui/login"):
        resp = await tab.goto(path, status=403)
        assert "kept" not in await resp.text()
    for path, form in (("/ui/cache/purge", {"what": "age", "older_than": "0s"}), ("/ui/logout", {}),
                       ("/ui/login", {"admin_key": "x"})):
        r = await tab.page.request.post(srv.base + path, form=form)
        assert r.status == 403, path
    assert [t.entries for t in await srv.app[STORE_KEY].cache.stats()] == [1, 1]
    tab.errors.clear()  # the 403 documents are reported as failed loads, which is the point here
    tab.clean()

    keyed = await live(host=addr, server={"admin_key": "s3cret-admin"})
    tab = await open_tab(browser, keyed.base)
    await tab.goto("/ui/cache", status=401)
    await tab.page.fill("input[name=admin_key]", "s3cret-admin")
    await tab.page.click("form.login button")
    await tab.page.wait_for_selector("main[data-page=overview]", timeout=WAIT_MS)
    cookies = {c["name"]: c for c in await tab.page.context.cookies()}
    assert cookies["r1proxy_ui"]["httpOnly"] and cookies["r1proxy_ui"]["sameSite"] == "Strict"
    await tab.goto("/ui/cache")
    await tab.page.screenshot(path=str(shots_dir(tmp_path) / "cache-after-login.png"))
    tab.errors = [e for e in tab.errors if "401" not in e]
    tab.clean()

