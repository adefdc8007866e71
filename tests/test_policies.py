"""Policies through the real proxy and the fake OpenRouter (issue 5): local keys and their limits,
retries, fallbacks, upstream pacing and load balancing. (Stale-if-error is the cache suite's.)"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import tomllib
from typing import Any

import openai
import pytest

import r1proxy.flight
from r1proxy.appkeys import GATEWAY_KEY
from r1proxy.cli import main as cli_main
from r1proxy.pacing import UpstreamPacer
from tests.conftest import LOCAL_KEY, UPSTREAM_KEY, sdk
from tests.fake_upstream import Script, unused_port
from tests.helpers import AUTH, post, until

OTHER_KEY = "another-local-key"
R1 = "deepseek/deepseek-r1"
R1_FREE = "deepseek/deepseek-r1:free"


def body(text: str = "hello", model: str = "deepseek-r1", stream: bool = False, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "temperature": 0,
                           "messages": [{"role": "system", "content": "You are Roo."},
                                        {"role": "user", "content": [{"type": "text", "text": text}]}]}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    out.update(extra)
    return out


def key(**limits: Any) -> list[dict[str, Any]]:
    return [{"name": "roo", "key": LOCAL_KEY, **limits}]


def gateway(client: Any) -> Any:
    return client.server.app[GATEWAY_KEY]


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every upstream attempt the flights make, by upstream name (counts even refused connections)."""
    seen: list[str] = []
    real = r1proxy.flight.open_response

    async def counting(session: Any, up: Any, data: bytes, headers: Any) -> Any:
        seen.append(up.name)
        return await real(session, up, data, headers)

    monkeypatch.setattr(r1proxy.flight, "open_response", counting)
    return seen


# ---------------------------------------------------------------------------------------------
# local keys


async def test_key_rpm_fourth_request_gets_openai_shaped_429(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(rpm=3))
    for i in range(3):
        r = await post(client, body(f"q{i}"))
        assert r.status == 200
    r = await client.post("/chat/completions", json=body("q3"), headers=AUTH)
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "3"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["x-ratelimit-reset"]) > 0
    err = (await r.json())["error"]
    assert err["type"] == "rate_limit_error" and "roo" in err["message"] and "rpm" in err["message"]
    assert err["code"] == "rate_limit_exceeded"
    assert len(fake_server.calls) == 3
    # and through the SDK (as Roo sees it)
    api = sdk(client)
    with pytest.raises(openai.RateLimitError):
        await api.chat.completions.create(**body("q4"))
    await api.close()


async def test_cache_hits_do_not_count_by_default(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(rpm=3))
    for _ in range(6):
        assert (await post(client, body("same"))).status == 200
    assert len(fake_server.calls) == 1
    assert (await post(client, body("other 1"))).status == 200
    assert (await post(client, body("other 2"))).status == 200
    assert (await post(client, body("other 3"))).status == 429


async def test_cache_hits_count_when_configured(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(rpm=3), cache={"count_hits_in_rate_limit": True})
    statuses = [(await post(client, body("same"))).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert len(fake_server.calls) == 1


async def test_rpm_is_per_key(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=[{"name": "roo", "key": LOCAL_KEY, "rpm": 1}, {"name": "ci", "key": OTHER_KEY}],
                         cache={"enabled": False})
    assert (await post(client, body("a"))).status == 200
    assert (await post(client, body("b"))).status == 429
    for i in range(3):
        assert (await post(client, body(f"c{i}"), {"Authorization": f"Bearer {OTHER_KEY}"})).status == 200


async def test_model_allow_list(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(models=["deepseek-r1"]))
    assert (await post(client, body(model="deepseek-r1"))).status == 200
    for other in ("deepseek-r1-free", "openai/gpt-4o"):
        r = await client.post("/chat/completions", json=body(model=other), headers=AUTH)
        assert r.status == 403
        err = (await r.json())["error"]
        assert other in err["message"] and err["param"] == "model"
    assert len(fake_server.calls) == 1
    r = await client.get("/models", headers=AUTH)
    assert [m["id"] for m in (await r.json())["data"]] == ["deepseek-r1"]


async def test_key_max_parallel(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(max_parallel=1))
    slow = asyncio.create_task(post(client, body("slow [[fake delay_first_byte=0.5]]")))
    await until(lambda: fake_server.calls, "the slow request upstream")
    r = await client.post("/chat/completions", json=body("fast"), headers=AUTH)
    assert r.status == 429
    assert "parallel" in (await r.json())["error"]["message"]
    assert "Retry-After" in r.headers
    assert (await slow).status == 200
    assert (await post(client, body("after"))).status == 200  # the slot was given back
    # a streamed request gives its slot back too
    assert (await post(client, body("streamed", stream=True))).status == 200
    assert (await post(client, body("after stream"))).status == 200


async def test_daily_token_budget(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(daily_tokens=30))
    r = await post(client, body("spend some tokens", stream=True))
    assert r.status == 200
    r = await client.post("/chat/completions", json=body("more"), headers=AUTH)
    assert r.status == 429
    assert r.headers["x-should-retry"] == "false"
    assert 0 < int(r.headers["Retry-After"]) <= 86400
    err = (await r.json())["error"]
    assert "budget" in err["message"] and err["code"] == "budget_exceeded"
    assert len(fake_server.calls) == 1
    # a cache hit costs nothing and is still served
    assert (await post(client, body("spend some tokens", stream=True))).status == 200


async def test_daily_usd_budget(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(daily_usd=0.000001))
    assert (await post(client, body("costly"))).status == 200  # the fake's usage.cost is ~1e-5
    r = await client.post("/chat/completions", json=body("more"), headers=AUTH)
    assert r.status == 429 and r.headers["x-should-retry"] == "false"
    assert "usd" in (await r.json())["error"]["message"]


async def test_key_tpm_counts_upstream_usage(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(tpm=30), cache={"enabled": False})
    assert (await post(client, body("first uses more than thirty tokens", stream=True))).status == 200
    r = await client.post("/chat/completions", json=body("second"), headers=AUTH)
    assert r.status == 429
    assert "tpm" in (await r.json())["error"]["message"]
    assert r.headers["x-ratelimit-limit"] == "30"
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("limits,settles", [({}, False), ({"rpm": 100, "max_parallel": 4}, False),
                                             ({"tpm": 100_000}, True), ({"daily_tokens": 100_000}, True),
                                             ({"daily_usd": 10.0}, True)])
async def test_admission_settles_earlier_requests_only_for_usage_limits(
        proxy: Any, fake_server: Any, monkeypatch: pytest.MonkeyPatch, limits: dict[str, Any],
        settles: bool) -> None:
    """tpm and daily budgets judge usage, so a miss's admission settles the accounting of finished
    requests first; other keys leave it to the batch (the access line and log row stay off a miss's path)."""
    import r1proxy.accounting

    monkeypatch.setattr(r1proxy.accounting, "DELAY_S", 60.0)  # no timer flush during the test
    client = await proxy(keys=key(**limits))
    acct = gateway(client).accounting
    settled: list[int] = []
    real = acct.flush

    def flush() -> None:
        settled.append(len(acct._pending))
        real()

    monkeypatch.setattr(acct, "flush", flush)
    assert (await post(client, body("first"))).status == 200
    await until(lambda: acct._pending, "the first request's record")
    assert (await post(client, body("second"))).status == 200
    assert settled == ([0, 1] if settles else [])  # pending records at each admission


async def test_daily_budget_survives_restart(aiohttp_client: Any, make_config: Any, fake_server: Any) -> None:
    from r1proxy.app import create_app

    config = make_config(keys=key(daily_tokens=30))
    first = await aiohttp_client(create_app(config))
    assert (await post(first, body("spend"))).status == 200
    await first.close()  # flushes the database writer
    second = await aiohttp_client(create_app(config))
    r = await second.post("/chat/completions", json=body("after restart"), headers=AUTH)
    assert r.status == 429
    assert r.headers["x-should-retry"] == "false"
    assert len(fake_server.calls) == 1


async def test_x_api_key_header(proxy: Any, fake_server: Any) -> None:
    client = await proxy(keys=key(rpm=1), cache={"enabled": False})
    assert (await post(client, body("a"), {"x-api-key": LOCAL_KEY}, auth={})).status == 200
    assert (await post(client, body("b"), {"x-api-key": "wrong"}, auth={})).status == 401
    # the same key, however presented, shares its limits
    assert (await post(client, body("c"), AUTH)).status == 429


async def test_keys_new_prints_a_working_config(capsys: pytest.CaptureFixture[str], proxy: Any,
                                                fake_server: Any) -> None:
    assert cli_main(["keys", "new", "roo"]) == 0
    out = capsys.readouterr().out
    keys_found = re.findall(r"^#\s+(\S+)$", out, re.M)
    assert len(keys_found) == 1
    new = keys_found[0]
    snippet = out[out.index("[[keys]]"):]
    doc = tomllib.loads(snippet)
    assert doc["keys"][0]["name"] == "roo"
    assert doc["keys"][0]["key_sha256"] == hashlib.sha256(new.encode()).hexdigest()
    assert new not in snippet  # only the digest goes into config.toml
    client = await proxy(keys=doc["keys"])
    assert (await post(client, body(), {"Authorization": f"Bearer {new}"})).status == 200
    assert (await post(client, body(), AUTH)).status == 401


# ---------------------------------------------------------------------------------------------
# retries


@pytest.mark.parametrize("stream", [False, True])
async def test_503_then_success_is_retried(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy()
    fake_server.script(Script(status=503), Script(answer="fine"))
    r = await client.post("/chat/completions", json=body(stream=stream), headers=AUTH)
    assert r.status == 200
    assert "fine" in await r.text()
    assert len(fake_server.calls) == 2


async def test_429_with_short_retry_after_is_retried(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    fake_server.script(Script(status=429, retry_after="0.3"), Script(answer="fine"))
    t0 = time.monotonic()
    r = await post(client, body())
    assert r.status == 200
    assert len(fake_server.calls) == 2
    assert fake_server.calls[1].time - fake_server.calls[0].time >= 0.25  # it waited Retry-After
    assert time.monotonic() - t0 < 5


async def test_429_with_long_retry_after_is_not_waited_for(proxy: Any, fake_server: Any) -> None:
    client = await proxy(retry={"max_retry_after_s": 1})
    fake_server.script(Script(status=429, retry_after="30"))
    t0 = time.monotonic()
    r = await client.post("/chat/completions", json=body(), headers=AUTH)
    assert r.status == 429
    assert r.headers["Retry-After"] == "30"
    assert len(fake_server.calls) == 1
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("status", [400, 401, 402, 403, 413])
async def test_client_errors_never_retried(proxy: Any, fake_server: Any, status: int) -> None:
    client = await proxy()
    fake_server.script(Script(status=status, message=f"nope {status}"))
    r = await client.post("/chat/completions", json=body(), headers=AUTH)
    assert r.status == status
    assert (await r.json())["error"]["message"] == f"nope {status}"
    assert len(fake_server.calls) == 1


async def test_connection_refused_retried_then_502(proxy: Any, attempts: list[str]) -> None:
    client = await proxy(upstreams={"openrouter": {"base_url": f"http://127.0.0.1:{unused_port()}/api/v1"}},
                         retry={"max_attempts": 3})
    r = await client.post("/chat/completions", json=body(), headers=AUTH)
    assert r.status == 502
    assert "openrouter" in (await r.json())["error"]["message"]
    assert attempts == ["openrouter"] * 3


async def test_exhausted_retries_relay_the_last_error(proxy: Any, fake_server: Any) -> None:
    client = await proxy(retry={"max_attempts": 2})
    fake_server.script(Script(status=503), Script(status=502, message="Provider returned error"))
    r = await client.post("/chat/completions", json=body(), headers=AUTH)
    assert r.status == 502
    assert (await r.json())["error"]["message"] == "Provider returned error"
    assert len(fake_server.calls) == 2


async def test_never_retry_after_bytes_reached_the_client(proxy: Any, fake_server: Any) -> None:
    client = await proxy(retry={"max_attempts": 3})
    fake_server.script(Script(drop_after=2))
    api = sdk(client)
    stream = await api.chat.completions.create(**body(stream=True))
    got = 0
    with pytest.raises(openai.APIError):
        async for _ in stream:
            got += 1
    await api.close()
    assert got == 2
    assert len(fake_server.calls) == 1
    fake_server.script(Script(drop_after=2))
    r = await client.post("/chat/completions", json=body("raw", stream=True), headers=AUTH)
    text = await r.text()
    assert '"error"' in text.strip().splitlines()[-1]
    assert "data: [DONE]" not in text
    assert len(fake_server.calls) == 2


# ---------------------------------------------------------------------------------------------
# fallbacks

FALLBACK_MODELS = [{"name": "a", "model": R1, "fallbacks": ["b"]}, {"name": "b", "model": R1_FREE}]


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_when_primary_fails(proxy: Any, fake_server: Any, stream: bool) -> None:
    client = await proxy(models=FALLBACK_MODELS, retry={"max_attempts": 2})
    fake_server.script(Script(status=503), Script(status=503), Script(answer="from b"))
    r = await client.post("/chat/completions", json=body(model="a", stream=stream), headers=AUTH)
    assert r.status == 200
    assert "from b" in await r.text()
    assert [c.json["model"] for c in fake_server.calls] == [R1, R1, R1_FREE]
    assert r.headers["X-R1proxy-Route"] == f"openrouter/{R1_FREE}"


async def test_fallback_to_another_upstream_sends_that_upstreams_key(proxy: Any, fake_server: Any,
                                                                    tmp_path: Any) -> None:
    """A fallback to, say, DeepSeek's own API or a local Ollama must never receive the OpenRouter key."""
    other_key = tmp_path / "other.key"
    other_key.write_text("sk-other-upstream-key-000000\n")
    models = [{"name": "a", "model": R1, "fallbacks": ["b"]},
              {"name": "b", "upstream": "other", "model": "deepseek-reasoner"}]
    client = await proxy(models=models, retry={"max_attempts": 1},
                         upstreams={"other": {"api_key_file": str(other_key), "title": "r1proxy-other"}})
    fake_server.script(Script(status=503), Script(answer="from other"))
    r = await client.post("/chat/completions", json=body(model="a", stream=False), headers=AUTH)
    assert r.status == 200 and "from other" in await r.text()
    first, second = fake_server.calls
    assert first.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert second.headers["Authorization"] == "Bearer sk-other-upstream-key-000000"
    assert second.headers["X-Title"] == "r1proxy-other" and second.json["model"] == "deepseek-reasoner"
    assert r.headers["X-R1proxy-Route"] == "other/deepseek-reasoner"


async def test_route_header_names_the_primary_when_it_answers(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=FALLBACK_MODELS)
    for stream in (False, True):
        r = await client.post("/chat/completions", json=body(f"s{stream}", model="a", stream=stream), headers=AUTH)
        await r.read()
        assert r.headers["X-R1proxy-Route"] == f"openrouter/{R1}"


async def test_no_fallback_for_the_clients_own_mistake(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=FALLBACK_MODELS)
    fake_server.script(Script(status=400, message="bad param"))
    r = await client.post("/chat/completions", json=body(model="a"), headers=AUTH)
    assert r.status == 400
    assert len(fake_server.calls) == 1


async def test_daily_quota_on_primary_falls_back_at_once(proxy: Any, fake_server: Any) -> None:
    models = [{"name": "free", "model": R1_FREE, "fallbacks": ["paid"]}, {"name": "paid", "model": R1}]
    client = await proxy(models=models, retry={"max_attempts": 3})
    fake_server.script(Script(daily_quota=True))
    r = await post(client, body("one", model="free"))
    assert r.status == 200
    assert [c.json["model"] for c in fake_server.calls] == [R1_FREE, R1]
    assert r.headers["X-R1proxy-Route"] == f"openrouter/{R1}"
    # the quota is known to be gone: the next request goes straight to the fallback
    r = await post(client, body("two", model="free"))
    assert r.status == 200
    assert [c.json["model"] for c in fake_server.calls] == [R1_FREE, R1, R1]


async def test_daily_quota_without_fallback_fails_fast(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "free", "model": R1_FREE}])
    fake_server.script(Script(daily_quota=True))
    r = await client.post("/chat/completions", json=body("one", model="free"), headers=AUTH)
    assert r.status == 429 and r.headers["x-should-retry"] == "false"
    r = await client.post("/chat/completions", json=body("two", model="free"), headers=AUTH)
    assert r.status == 429 and r.headers["x-should-retry"] == "false"
    assert "daily" in (await r.json())["error"]["message"]
    assert len(fake_server.calls) == 1  # known exhausted: not asked again


# ---------------------------------------------------------------------------------------------
# upstream pacing


def short_window(client: Any, alias: str, window_s: float) -> UpstreamPacer:
    """Swap the alias's first deployment's pacer for one with a short rpm window (config has 60 s)."""
    gw = gateway(client)
    dep = gw.aliases[alias][0]
    pacer = UpstreamPacer(dep.rpm, dep.max_parallel, window_s=window_s, name="test")
    gw.policy.pacers[id(dep)] = pacer
    return pacer


async def test_rpm_burst_is_queued_not_failed(proxy: Any, fake_server: Any) -> None:
    n = 2
    client = await proxy(models=[{"name": "r1", "model": R1_FREE, "rpm": n}], cache={"enabled": False})
    short_window(client, "r1", 0.5)
    results = await asyncio.gather(*(post(client, body(f"q{i}", model="r1")) for i in range(2 * n)))
    assert [r.status for r in results] == [200] * (2 * n)
    times = sorted(c.time for c in fake_server.calls)
    assert len(times) == 2 * n
    # at most n calls in any 0.5 s window: the second pair waited for the first to age out
    assert times[n] - times[0] >= 0.45


async def test_rpm_pacer_from_config_queues(proxy: Any, fake_server: Any) -> None:
    """The configured (60 s) pacer really gates: with rpm 2, a third request waits in the queue."""
    client = await proxy(models=[{"name": "r1", "model": R1_FREE, "rpm": 2, "max_queue_s": 0.3}],
                         cache={"enabled": False})
    assert (await post(client, body("a", model="r1"))).status == 200
    assert (await post(client, body("b", model="r1"))).status == 200
    t0 = time.monotonic()
    r = await client.post("/chat/completions", json=body("c", model="r1"), headers=AUTH)
    assert time.monotonic() - t0 >= 0.25  # queued up to max_queue_s before giving up
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "queue" in (await r.json())["error"]["message"]
    assert len(fake_server.calls) == 2


async def test_max_parallel_bounds_upstream_concurrency(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "r1", "model": R1, "max_parallel": 2}])
    results = await asyncio.gather(*(
        post(client, body(f"q{i} [[fake delay_first_byte=0.15 gap=0.01]]", model="r1", stream=i % 2 == 0))
        for i in range(6)))
    assert [r.status for r in results] == [200] * 6
    assert len(fake_server.calls) == 6
    assert fake_server.fake.max_in_flight == 2


async def test_upstream_429_cools_down_and_queued_requests_wait(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=[{"name": "r1", "model": R1}], retry={"max_attempts": 2})
    fake_server.script(Script(status=429, retry_after="0.6"))
    first = asyncio.create_task(post(client, body("first", model="r1")))
    await until(lambda: any(p["cooling_s"] for p in gateway(client).policy.state()), "the 429's cool-down")
    t429 = fake_server.calls[0].time
    others = await asyncio.gather(*(post(client, body(f"other {i}", model="r1")) for i in range(3)))
    assert (await first).status == 200
    assert [r.status for r in others] == [200] * 3
    later = fake_server.calls[1:]
    assert len(later) == 4
    assert all(c.time - t429 >= 0.55 for c in later), [round(c.time - t429, 3) for c in later]


# ---------------------------------------------------------------------------------------------
# load balancing

TWO_DEPLOYMENTS = [{"name": "r1", "model": R1}, {"name": "r1", "model": R1_FREE}]


async def test_round_robin_alternates(proxy: Any, fake_server: Any) -> None:
    client = await proxy(models=TWO_DEPLOYMENTS, cache={"enabled": False})
    routes = []
    for i in range(6):
        r = await post(client, body(f"q{i}", model="r1"))
        assert r.status == 200
        routes.append(r.headers["X-R1proxy-Route"])
    models = [c.json["model"] for c in fake_server.calls]
    assert models == [models[0], models[1]] * 3 and models[0] != models[1]
    assert routes == [f"openrouter/{m}" for m in models]


async def test_failing_deployment_is_cooled_down_and_skipped(proxy: Any, fake_server: Any,
                                                            attempts: list[str]) -> None:
    dead = f"http://127.0.0.1:{unused_port()}/api/v1"
    client = await proxy(upstreams={"dead": {"base_url": dead}},
                         models=[{"name": "r1", "upstream": "dead", "model": R1},
                                 {"name": "r1", "model": R1_FREE}],
                         retry={"max_attempts": 1, "failures_to_cooldown": 2, "cooldown_s": 60},
                         cache={"enabled": False})
    for i in range(4):
        assert (await post(client, body(f"warm {i}", model="r1"))).status == 200
    assert attempts.count("dead") == 2  # round robin tried it twice, failed over to the other each time
    gw = gateway(client)
    assert gw.policy.balancers["r1"].is_cooling(gw.aliases["r1"][0])
    for i in range(6):
        r = await post(client, body(f"cool {i}", model="r1"))
        assert r.status == 200
        assert r.headers["X-R1proxy-Route"] == f"openrouter/{R1_FREE}"
    assert attempts.count("dead") == 2  # cooling: not tried at all
    assert len(fake_server.calls) == 10
