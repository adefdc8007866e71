"""Cache identity (``KeyMaker``): which requests count as "the same" and which never do."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from r1proxy.cache.keys import KeyMaker
from r1proxy.config import ROO_CURRENT_TIME, CacheConfig

UP = "openrouter"

TIME_ISO = ("<environment_details>\n# VSCode Visible Files\ncli.py\n\n"
            "# Current Time\nCurrent time in ISO 8601 UTC format: {iso}\nUser time zone: Europe/Berlin, UTC+2:00\n\n"
            "# Current Mode\n<slug>code</slug>\n</environment_details>")
TIME_PLAIN = "<environment_details>\n# Current Time\n{iso}\n</environment_details>"


def body(text: str = "Add a --verbose flag to cli.py", env: str = TIME_PLAIN.format(iso="2026-04-20T10:12:03+02:00"),
         **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "deepseek/deepseek-r1",
        "temperature": 0.6,
        "messages": [
            {"role": "system", "content": "You are Roo, a highly skilled software engineer."},
            {"role": "user", "content": [{"type": "text", "text": f"<task>\n{text}\n</task>"},
                                         {"type": "text", "text": env}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    b.update(extra)
    return b


def default_keys() -> KeyMaker:
    cfg = CacheConfig()
    return KeyMaker(cfg.ignore_patterns, cfg.namespace)


def key(b: dict[str, Any], km: KeyMaker | None = None, upstream: str = UP, namespace: str = "") -> str:
    return (km or default_keys()).cache_key(upstream, b, namespace)[0]


def test_default_pattern_is_roo_current_time() -> None:
    assert CacheConfig().ignore_patterns == (ROO_CURRENT_TIME,)


def test_key_shape_and_determinism() -> None:
    k = key(body())
    assert k.startswith("r1:") and len(k) == 3 + 32
    assert key(body()) == k
    assert KeyMaker([ROO_CURRENT_TIME]).cache_key(UP, body())[0] == k


def test_key_order_and_spacing_do_not_matter() -> None:
    b = body(tools=[{"type": "function", "function": {"name": "read_file", "parameters": {"a": 1, "b": 2}}}])
    shuffled = json.loads(json.dumps(dict(reversed(list(b.items()))), indent=3))
    shuffled["tools"][0]["function"]["parameters"] = {"b": 2, "a": 1}
    shuffled["messages"] = [dict(reversed(list(m.items()))) for m in shuffled["messages"]]
    assert list(shuffled) != list(b)
    assert key(shuffled) == key(b)


def test_one_text_part_equals_plain_string() -> None:
    parts = body()
    parts["messages"][1]["content"] = [{"type": "text", "text": "hello there"}]
    plain = body()
    plain["messages"][1]["content"] = "hello there"
    assert key(parts) == key(plain)
    # a prompt-cache mark does not change the output either
    marked = copy.deepcopy(parts)
    marked["messages"][1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert key(marked) == key(plain)
    # ...but different text is a different prompt
    other = copy.deepcopy(plain)
    other["messages"][1]["content"] = "hello there!"
    assert key(other) != key(plain)


def test_crlf_equals_lf() -> None:
    lf = body(text="line one\nline two")
    crlf = body(text="line one\r\nline two")
    assert key(lf) == key(crlf)
    crlf["messages"][0]["content"] = "You are Roo,\r\na highly skilled software engineer."
    lf["messages"][0]["content"] = "You are Roo,\na highly skilled software engineer."
    assert key(lf) == key(crlf)
    assert key(lf) != key(body(text="line one line two"))


@pytest.mark.parametrize("env", [TIME_PLAIN, TIME_ISO], ids=["plain", "iso-utc"])
def test_current_time_is_masked_by_default(env: str) -> None:
    a = body(env=env.format(iso="2026-04-20T10:12:03+02:00"))
    b = body(env=env.format(iso="2026-04-21T23:59:59.999Z"))
    assert a != b
    assert key(a) == key(b)
    # other text still counts, in the task and in the environment details around the time
    assert key(body(text="Add a --quiet flag to cli.py", env=env.format(iso="x"))) != key(a)
    if env is TIME_ISO:
        moved = body(env=env.format(iso="2026-04-20T10:12:03+02:00").replace("cli.py", "main.py"))
        assert key(moved) != key(a)
        mode = body(env=env.format(iso="2026-04-20T10:12:03+02:00").replace("<slug>code", "<slug>architect"))
        assert key(mode) != key(a)


def test_current_time_masked_in_plain_string_content_too() -> None:
    a, b = body(), body()
    a["messages"][1]["content"] = "task\n" + TIME_ISO.format(iso="2026-04-20T08:12:03.000Z")
    b["messages"][1]["content"] = "task\n" + TIME_ISO.format(iso="2026-05-01T00:00:00.000Z")
    assert key(a) == key(b)


def test_ignore_patterns_empty_switches_masking_off() -> None:
    km = KeyMaker([])
    a = body(env=TIME_ISO.format(iso="2026-04-20T10:12:03+02:00"))
    b = body(env=TIME_ISO.format(iso="2026-04-21T10:12:03+02:00"))
    assert key(a, km) != key(b, km)


def test_custom_ignore_pattern() -> None:
    km = KeyMaker([r"request-id: \w+"])
    assert key(body(text="request-id: abc1"), km) == key(body(text="request-id: zzz9"), km)
    assert key(body(text="request-id: abc1"), km) != key(body(text="request-ix: abc1"), km)


@pytest.mark.parametrize("field,value", [
    ("stream", False),
    ("stream", None),
    ("stream_options", {"include_usage": False}),
    ("user", "someone-else"),
    ("metadata", {"session": "abc"}),
    ("cache", {"no-cache": True}),
])
def test_non_output_fields_do_not_change_the_key(field: str, value: Any) -> None:
    changed = body()
    changed[field] = value
    assert key(changed) == key(body())
    dropped = body()
    dropped.pop(field, None)
    assert key(dropped) == key(body())


@pytest.mark.parametrize("field,value", [
    ("temperature", 0.3),
    ("max_tokens", 100),
    ("max_completion_tokens", 100),
    ("top_p", 0.5),
    ("seed", 7),
    ("tools", [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]),
    ("tool_choice", "none"),
    ("reasoning", {"effort": "low"}),
    ("some_unknown_field", True),
    ("model", "deepseek/deepseek-r1:free"),
])
def test_output_fields_change_the_key(field: str, value: Any) -> None:
    changed = body()
    changed[field] = value
    assert key(changed) != key(body())


def test_removing_an_output_field_changes_the_key() -> None:
    b = body()
    del b["temperature"]
    assert key(b) != key(body())


def test_one_word_in_messages_changes_the_key() -> None:
    assert key(body(text="Add a --verbose flag to cli.py")) != key(body(text="Add a --verbose flag to app.py"))
    sys_changed = body()
    sys_changed["messages"][0]["content"] = "You are Roo, a highly skilled software tester."
    assert key(sys_changed) != key(body())
    role_changed = body()
    role_changed["messages"][0]["role"] = "user"
    assert key(role_changed) != key(body())


def test_tool_call_history_changes_the_key() -> None:
    def with_call(args: str) -> dict[str, Any]:
        b = body()
        b["messages"] += [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1 | import argparse"},
        ]
        return b
    assert key(with_call('{"path":"cli.py"}')) != key(with_call('{"path":"app.py"}'))


def test_upstream_and_namespace_change_the_key() -> None:
    b = body()
    assert key(b, upstream="openrouter") != key(b, upstream="other")
    assert key(b, namespace="team-a") != key(b)
    assert key(b, namespace="team-a") != key(b, namespace="team-b")
    assert key(b, namespace="team-a") == key(b, namespace="team-a")
    configured = KeyMaker(CacheConfig().ignore_patterns, "team-a")
    assert key(b, configured) == key(b, namespace="team-a")
    assert key(b, configured) != key(b)


def test_canonical_request_is_kept_readable() -> None:
    canon = default_keys().cache_key(UP, body())[1]
    doc = json.loads(canon)
    assert doc["$r1proxy"] == {"upstream": UP}
    assert "stream" not in doc and "stream_options" not in doc
    assert "2026-04-20" not in canon.decode()
    assert "Add a --verbose flag" in canon.decode()


def test_body_is_not_modified() -> None:
    b = body(text="a\r\nb")
    before = copy.deepcopy(b)
    default_keys().cache_key(UP, b)
    assert b == before


ODD_VALUES: list[Any] = [0.6, 1e-05, 9.99e-05, 0.0001, 1e-10, 1e16, 1.5e300, 5e-324, -0.0, 1.0, 2**63, 2**64 - 1,
                         2**64, -2**63 - 1, 10**30, "0.00001 in a string", "\u2028\u2029\x7f\x00\x1f\"\\/é😀",
                         {"é": 1, "z": 2, "a": 3, "\uffff": 4, "😀": 5, "B": 6}, [None, True, False, [], {}]]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_the_canonical_form_is_json_dumps_byte_for_byte(value: Any) -> None:
    """Keys never move: the canonical bytes are what ``json.dumps(sort_keys=True)`` wrote before orjson."""
    b = body(temperature=value, extra={"nested": {"v": value, "k": [value]}})
    canonical = default_keys().canonical(UP, b)
    doc = json.loads(canonical)
    assert canonical == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_an_ordinary_body_is_canonicalised_without_the_standard_librarys_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss computes its key before its upstream call: orjson takes ~15 us where json took ~140 us for a
    20 KB Roo body (bench/ANALYSIS.md)."""
    want = default_keys().canonical(UP, body())
    import r1proxy.cache.keys as keys

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("json.dumps was used")

    monkeypatch.setattr(keys.json, "dumps", refuse)
    assert default_keys().canonical(UP, body()) == want
