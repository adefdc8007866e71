"""Upstream prompt caching through OpenRouter: a stable session_id per Roo conversation, provider
preferences passed through (no provider.order of our own), and byte-stable upstream bodies across turns."""

from __future__ import annotations

import itertools
import json
from typing import Any

from r1proxy.config import UpstreamConfig
from r1proxy.session import derive, with_session_id
from tests.conftest import LOCAL_KEY
from tests.roo import roo_body

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
SYSTEM = "You are Roo, a highly skilled software engineer. " * 50


def conversation(turns: int, model: str = "deepseek-r1") -> list[dict[str, Any]]:
    """Roo's request bodies for turns 1..turns of one task: each repeats the history and appends the
    assistant's answer (with reasoning, which Roo sometimes sends back) and a tool round-trip or a user
    message with a fresh <environment_details>."""
    first = roo_body("Add a --verbose flag to cli.py", model=model, when="2026-04-20T10:12:03+02:00")
    first["messages"][0]["content"] = SYSTEM
    bodies = [first]
    for n in range(1, turns):
        prev = json.loads(json.dumps(bodies[-1]))
        msgs = prev["messages"]
        if n % 2:
            call = {"id": f"call_{n}", "type": "function",
                    "function": {"name": "read_file", "arguments": json.dumps({"path": "cli.py"})}}
            msgs.append({"role": "assistant", "content": f"Reading file {n}.", "reasoning_content": "I should look.",
                         "tool_calls": [call]})
            msgs.append({"role": "tool", "tool_call_id": f"call_{n}", "content": f"contents of cli.py, turn {n}"})
            msgs.append({"role": "user", "content": [
                {"type": "text", "text": f"<environment_details>\n# Current Time\n2026-04-20T10:{12 + n}:00+02:00\n"
                                         "</environment_details>"}]})
        else:
            msgs.append({"role": "assistant", "content": f"<think>hmm {n}</think>Done step {n}."})
            msgs.append({"role": "user", "content": [{"type": "text", "text": f"<feedback>\nnow step {n}\n</feedback>"},
                                                     {"type": "text", "text": "<environment_details>\n# Current Time\n"
                                                      f"2026-04-20T10:{12 + n}:30+02:00\n</environment_details>"}]})
        bodies.append(prev)
    return bodies


def messages_bytes(raw: bytes) -> bytes:
    """The `messages` array exactly as it was sent (bytes), found without re-serialising."""
    start = raw.index(b'"messages":') + len(b'"messages":')
    _, end = json.JSONDecoder().raw_decode(raw.decode(), start)  # character offsets == byte offsets only if ASCII
    assert raw.isascii()
    return raw[start:end]


async def test_turn_n_extends_turn_n_minus_1_byte_for_byte_with_one_session_id(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    bodies = conversation(6)
    for body in bodies:
        r = await client.post("/chat/completions", json=body, headers=AUTH)
        assert r.status == 200
        await r.read()
    calls = [c for c in fake_server.calls if c.path.endswith("/chat/completions")]
    assert len(calls) == len(bodies)
    sids = {c.json["session_id"] for c in calls}
    assert len(sids) == 1 and next(iter(sids)).startswith("r1p-")  # one conversation, one id, from turn 1
    for before, after in itertools.pairwise(calls):
        a, b = messages_bytes(before.raw), messages_bytes(after.raw)
        assert b.startswith(a[:-1] + b","), (a[-200:], b[:len(a) + 50][-250:])  # every earlier message unchanged
        assert "provider" not in after.json  # no provider.order (or anything) of r1proxy's own
    # the templates really ran: no system role, no reasoning sent back
    assert all(m["role"] != "system" for c in calls for m in c.json["messages"])
    assert not any("reasoning_content" in m for c in calls for m in c.json["messages"])


async def test_a_new_conversation_gets_another_id_and_a_clients_own_is_kept(proxy: Any, fake_server: Any) -> None:
    client = await proxy()
    for body in (roo_body("task one", stream=False), roo_body("task two", stream=False),
                 roo_body("task three", stream=False, session_id="mine")):
        r = await client.post("/chat/completions", json=body, headers=AUTH)
        assert r.status == 200
    s1, s2, s3 = (c.json["session_id"] for c in fake_server.calls)
    assert s1 != s2 and s3 == "mine"


async def test_session_ids_can_be_switched_off_and_other_upstreams_get_none(proxy: Any, fake_server: Any) -> None:
    client = await proxy(upstreams={"openrouter": {"session_ids": False}, "local": {"api_key_env": ""}},
                         models=[{"name": "r1", "model": "deepseek/deepseek-r1"},
                                 {"name": "loc", "upstream": "local", "model": "deepseek/deepseek-r1"}])
    for model in ("r1", "loc"):
        r = await client.post("/chat/completions", json=roo_body(model=model, stream=False), headers=AUTH)
        assert r.status == 200
    assert all("session_id" not in c.json for c in fake_server.calls)


def test_session_id_ignores_part_shape_and_cache_control_marks() -> None:
    up = UpstreamConfig(name="openrouter", kind="openrouter")
    plain = {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}
    marked = {"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "later turns do not matter"}]}
    assert derive(plain) == derive(marked) and with_session_id(plain, up)["session_id"] == derive(plain)
    assert derive({**plain, "model": "other"}) != derive(plain)
    assert derive({"model": "m", "messages": []}) is None
    assert with_session_id(plain, UpstreamConfig(name="x", kind="openai")) is plain


async def test_alias_provider_preferences_are_passed_through(proxy: Any, fake_server: Any) -> None:
    prefs = {"sort": "price", "allow_fallbacks": True, "data_collection": "deny", "only": ["deepseek"],
             "ignore": ["chutes"], "quantizations": ["fp8"], "max_price": {"prompt": 1, "completion": 3},
             "order": ["deepseek"]}
    client = await proxy(models=[{"name": "pinned", "model": "deepseek/deepseek-r1", "provider": prefs}])
    body = roo_body(model="pinned", stream=False, provider={"require_parameters": True, "sort": "latency"})
    r = await client.post("/chat/completions", json=body, headers=AUTH)
    assert r.status == 200
    sent = fake_server.calls[-1].json["provider"]
    assert sent == {"require_parameters": True, **prefs}  # the alias's preferences win over the client's


def test_unknown_provider_field_is_a_config_error() -> None:
    import pytest

    from r1proxy.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"models\[0\]\.provider\.orderr is not a known key"):
        build_config({"models": [{"name": "a", "provider": {"orderr": ["x"]}}]}, env={})


def _reference(payload: dict[str, Any]) -> str:
    """The id as json.dumps spelled its seed (ids must not move: OpenRouter's sticky routing keys on them)."""
    import xxhash

    from r1proxy.session import SYSTEM_ROLES, _text
    messages = [m for m in payload["messages"] if isinstance(m, dict)]
    system = next((m for m in messages if m.get("role") in SYSTEM_ROLES), None)
    first = next((m for m in messages if m.get("role") not in SYSTEM_ROLES), None)
    seed = [payload.get("model"), None if system is None else _text(system.get("content")),
            None if first is None else [first.get("role"), _text(first.get("content"))]]
    return "r1p-" + xxhash.xxh3_64_hexdigest(json.dumps(seed, sort_keys=True, ensure_ascii=False).encode())


def test_the_id_is_the_same_as_json_spelled_it() -> None:
    odd = "\u2028\x00\x1f\"\\/é😀 \t\n"
    bodies = [roo_body(), roo_body(odd), {"model": "m", "messages": [{"role": "user", "content": odd}]},
              {"model": "m", "messages": [{"role": "system", "content": None}, {"role": "user", "content": []}]},
              {"model": "m", "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}]},
              {"model": "m", "messages": [{"role": "developer", "content": 7}, {"role": "user", "content": 1.5}]}]
    for b in bodies:
        assert derive(b) == _reference(b)


def test_a_roo_body_gets_its_id_without_the_standard_librarys_json(monkeypatch: Any) -> None:
    """Derived on a miss's way to the upstream call: ~70 us with json for a 20 KB system prompt."""
    import r1proxy.session as session
    b = roo_body()
    want = derive(b)

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("json.dumps was used")

    monkeypatch.setattr(session.json, "dumps", refuse)
    assert derive(b) == want
