"""Config loading: every error names the file and the exact dotted key; the documented
config.toml is the built-in defaults; secrets, keys and upstream merging resolve as documented."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_type_hints

import pytest

from r1proxy.config import Config, ConfigError, build_config, load_config, parse_duration
from r1proxy.confread import DERIVED_KEY, TABLE_NAME_KEY, Reader, duration

ROOT = Path(__file__).resolve().parent.parent
SRC = "my.toml"
HEX = "ab" * 32
ENV = {"R1PROXY_STATE_DIR": "/tmp/r1proxy-test-state", "OPENROUTER_API_KEY": "sk-test"}


def error(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(raw, source=SRC, env=ENV if env is None else env)
    return str(e.value)


def model(**kw: Any) -> dict[str, Any]:
    return {"models": [{"name": "a", **kw}]}


def key(**kw: Any) -> dict[str, Any]:
    return {"keys": [{"name": "a", "key": "local-secret", **kw}]}


# (raw document, the dotted key the message must name, a phrase of the reason)
CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"nope": 1}, "nope", "is not a known key (known: cache, keys, models, retry, server, stream, upstreams)"),
    ({"server": []}, "server", "must be a table"),
    ({"server": {"nope": 1}}, "server.nope", "is not a known key"),
    ({"server": {"port": "80"}}, "server.port", "must be a whole number ≥ 0, got '80'"),
    ({"server": {"port": -1}}, "server.port", "must be a whole number ≥ 0"),
    ({"server": {"port": True}}, "server.port", "must be a whole number ≥ 0"),
    ({"server": {"port": 80.0}}, "server.port", "must be a whole number ≥ 0"),
    ({"server": {"max_request_mb": "big"}}, "server.max_request_mb", "must be a number ≥ 0"),
    ({"server": {"max_request_mb": -1}}, "server.max_request_mb", "must be a number ≥ 0"),
    ({"server": {"max_request_mb": False}}, "server.max_request_mb", "must be a number ≥ 0"),
    ({"server": {"max_request_mb": "64s"}}, "server.max_request_mb", "must be a number ≥ 0"),  # not a duration
    ({"server": {"host": 1}}, "server.host", "must be a string, got 1"),
    ({"server": {"log_prompts": "yes"}}, "server.log_prompts", "must be true or false, got 'yes'"),
    ({"server": {"log_requests": 1}}, "server.log_requests", "must be true or false"),
    ({"server": {"shutdown_timeout": "soon"}}, "server.shutdown_timeout", 'expected a duration like 30, "15s"'),
    ({"server": {"shutdown_timeout": -1}}, "server.shutdown_timeout", "a duration cannot be negative"),
    ({"server": {"shutdown_timeout": True}}, "server.shutdown_timeout", "expected a duration"),
    ({"server": {"log_retention": "3w"}}, "server.log_retention", "expected a duration"),
    ({"server": {"log_format": "xml"}}, "server.log_format", 'must be "plain" or "json"'),
    ({"server": {"log_format": 1}}, "server.log_format", "must be"),
    ({"server": {"default_upstream": "nowhere"}}, "server.default_upstream", "names no upstream 'nowhere'"),
    ({"upstreams": []}, "upstreams", "must be a table"),
    ({"upstreams": {"x": 1}}, "upstreams.x", "must be a table"),
    ({"upstreams": {"x": {"name": "y"}}}, "upstreams.x.name", "is not a known key"),
    ({"upstreams": {"x": {"api_key": "sk-inline"}}}, "upstreams.x.api_key", "is not a known key"),
    ({"upstreams": {"openrouter": {"idle_timeout": "forever"}}}, "upstreams.openrouter.idle_timeout",
     "expected a duration"),
    ({"upstreams": {"openrouter": {"base_url": None}}}, "upstreams.openrouter.base_url", "must be a string"),
    ({"models": {}}, "models", "must be an array of tables ([[...]])"),
    ({"models": [1]}, "models[0]", "must be a table"),
    ({"models": [{}]}, "models[0].name", "is required"),
    (model(nope=1), "models[0].nope", "is not a known key"),
    (model(upstream="nowhere"), "models[0].upstream", "names no upstream 'nowhere' (known: openrouter)"),
    (model(reasoning="hidden"), "models[0].reasoning", 'must be "field", "think-tags" or "drop"'),
    (model(system_prompt="drop"), "models[0].system_prompt", 'must be "keep" or "merge-into-user"'),
    (model(tools="maybe"), "models[0].tools", 'must be "pass" or "strip"'),
    (model(strategy="random"), "models[0].strategy", 'must be "round-robin", "least-busy" or "latency"'),
    (model(fallbacks="b"), "models[0].fallbacks", "must be a list of strings"),
    (model(fallbacks=[1]), "models[0].fallbacks", "must be a list of strings"),
    (model(fallbacks=["b"]), "models[0].fallbacks", "names no model alias 'b'"),
    (model(fallbacks=["a"]), "models[0].fallbacks", "an alias cannot fall back to itself"),
    (model(defaults=[1]), "models[0].defaults", "must be a table"),
    (model(overrides="t=1"), "models[0].overrides", "must be a table"),
    (model(max_queue_s="1y"), "models[0].max_queue_s", "expected a duration"),
    (model(weight=1.5), "models[0].weight", "must be a whole number ≥ 0"),
    (model(strip_reasoning_from_history="no"), "models[0].strip_reasoning_from_history", "must be true or false"),
    ({"models": [{"name": "a"}, {"name": "b", "rpm": -1}]}, "models[1].rpm", "must be a whole number ≥ 0"),
    ({"keys": {}}, "keys", "must be an array of tables ([[...]])"),
    ({"keys": ["k"]}, "keys[0]", "must be a table"),
    ({"keys": [{"key": "s"}]}, "keys[0].name", "is required"),
    ({"keys": [{"name": "a"}]}, "keys[0].key_sha256", "is required"),
    (key(key=""), "keys[0].key", "must be a non-empty string"),
    (key(key=5), "keys[0].key", "must be a non-empty string"),
    (key(key_sha256=HEX), "keys[0]", "give either key or key_sha256, not both"),
    ({"keys": [{"name": "a", "key_sha256": "abc"}]}, "keys[0].key_sha256", "must be 64 hex digits"),
    ({"keys": [{"name": "a", "key_sha256": "g" * 64}]}, "keys[0].key_sha256", "must be 64 hex digits"),
    ({"keys": [{"name": "a", "key_sha256": 5}]}, "keys[0].key_sha256", "must be a string"),
    (key(rpm="x"), "keys[0].rpm", "must be a whole number ≥ 0"),
    (key(daily_usd="1$"), "keys[0].daily_usd", "must be a number ≥ 0"),
    (key(models="all"), "keys[0].models", "must be a list of strings"),
    (key(nope=1), "keys[0].nope", "is not a known key"),
    ({"keys": [{"name": "a", "key": "s"}, {"name": "a", "key": "t"}]}, "keys", "two keys share a name"),
    ({"cache": {"ignore_patterns": ["ok", "("]}}, "cache.ignore_patterns[1]", "is not a valid regex"),
    ({"cache": {"ignore_patterns": "x"}}, "cache.ignore_patterns", "must be a list of strings"),
    ({"cache": {"ttl": "7 days"}}, "cache.ttl", "expected a duration"),
    ({"cache": {"stale_if_error": -5}}, "cache.stale_if_error", "a duration cannot be negative"),
    ({"cache": {"enabled": "true"}}, "cache.enabled", "must be true or false"),
    ({"cache": {"memory_mb": "1GB"}}, "cache.memory_mb", "must be a number ≥ 0"),
    ({"cache": {"nope": 1}}, "cache.nope", "is not a known key"),
    (key(plain_key="s"), "keys[0].plain_key", "is not a known key"),
    ({"cache": {"redis": []}}, "cache.redis", "must be a table"),
    ({"cache": {"redis": {"nope": 1}}}, "cache.redis.nope", "is not a known key"),
    ({"cache": {"redis": {"password": "x"}}}, "cache.redis.password", "is not a known key"),
    ({"cache": {"redis": {"url": "http://x"}}}, "cache.redis.url", "must start with redis://"),
    ({"cache": {"redis": {"url": "redis://:pw@h"}}}, "cache.redis.url", "must not carry a password"),
    ({"cache": {"redis": {"timeout": 0}}}, "cache.redis.timeout", "must be more than 0"),
    ({"cache": {"redis": {"timeout": "1 minute"}}}, "cache.redis.timeout", "expected a duration"),
    ({"cache": {"redis": {"ttl": "0.5s"}}}, "cache.redis.ttl", "must be at least 1s"),
    ({"cache": {"redis": {"breaker_failures": 0}}}, "cache.redis.breaker_failures", "must be at least 1"),
    ({"cache": {"redis": {"breaker_reset": "later"}}}, "cache.redis.breaker_reset", "expected a duration"),
    ({"cache": {"redis": {"max_entry_mb": "8MB"}}}, "cache.redis.max_entry_mb", "must be a number ≥ 0"),
    ({"cache": {"redis": {"password_file": "/nonexistent/r1proxy-redis-pw"}}}, "cache.redis.password_file",
     "cannot be read (No such file or directory)"),
    ({"cache": {"redis": {"ttl": 0}}}, "cache.redis.ttl", "must be at least 1s, got 0.0"),
    ({"cache": {"share": "team"}}, "cache.share", 'must be "all" or "key", got \'team\''),
    ({"cache": {"finish_on_disconnect_max": "long"}}, "cache.finish_on_disconnect_max", "expected a duration"),
    ({"cache": {"semantic": {"threshold": 0}}}, "cache.semantic.threshold", "must be more than 0, got 0.0"),
    ({"cache": {"semantic": {"threshold": 1.5}}}, "cache.semantic.threshold", "must be at most 1, got 1.5"),
    ({"cache": {"semantic": {"candidates": 0}}}, "cache.semantic.candidates", "must be at least 1"),
    ({"cache": {"semantic": {"keys": "roo"}}}, "cache.semantic.keys", "must be a list of strings"),
    ({"cache": {"semantic": {"nope": 1}}}, "cache.semantic.nope", "is not a known key"),
    ({"server": {"allowed_hosts": "r1proxy.lan"}}, "server.allowed_hosts", "must be a list of strings"),
    ({"server": {"cors_origins": [1]}}, "server.cors_origins", "must be a list of strings"),
    ({"stream": {"max_event_mb": 0}}, "stream.max_event_mb", "must be more than 0"),
    ({"server": {"hit_usage": "free"}}, "server.hit_usage", 'must be "real" or "cache-read"'),
    ({"upstreams": {"openrouter": {"kind": "anthropic"}}}, "upstreams.openrouter.kind",
     'must be "auto", "openrouter" or "openai"'),
    ({"upstreams": {"openrouter": {"session_ids": 1}}}, "upstreams.openrouter.session_ids", "must be true or false"),
    (model(provider={"order": ["x"], "speed": 1}), "models[0].provider.speed", "is not a known key (known: allow_"),
    (model(provider=[]), "models[0].provider", "must be a table"),
    (model(cache_read_usd_per_mtok=-1), "models[0].cache_read_usd_per_mtok", "must be a number ≥ 0"),
    ({"server": {"workers": 0}}, "server.workers", "must be at least 1, got 0"),
    ({"server": {"workers": 17}}, "server.workers", "must be at most 16, got 17"),
    ({"server": {"workers": 2, "port": 0}}, "server.workers", "needs a fixed server.port"),
    ({"server": {"admin_key": 1}}, "server.admin_key", "must be a string"),
    ({"cache": {"redis": {"lock_ttl": "0.5s"}}}, "cache.redis.lock_ttl", "must be at least 1s"),
    ({"cache": {"redis": {"coalesce": "yes"}}}, "cache.redis.coalesce", "must be true or false"),
    ({"stream": 5}, "stream", "must be a table"),
    ({"stream": {"keepalive_s": "often"}}, "stream.keepalive_s", "expected a duration"),
    ({"retry": {"max_attempts": 0}}, "retry.max_attempts", "must be at least 1"),
    ({"retry": {"max_attempts": -1}}, "retry.max_attempts", "must be a whole number ≥ 0"),
    ({"retry": {"cooldown_s": []}}, "retry.cooldown_s", "expected a duration"),
    ({"retry": {"nope": 1}}, "retry.nope", "is not a known key"),
]


@pytest.mark.parametrize(("raw", "where", "reason"), CASES, ids=[c[1] + ":" + c[2][:24] for c in CASES])
def test_every_error_names_the_file_and_the_key(raw: dict[str, Any], where: str, reason: str) -> None:
    msg = error(raw)
    assert msg.startswith(f"{SRC}: {where} "), msg
    assert reason in msg, msg


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "openrouter.key"
    msg = error({"upstreams": {"openrouter": {"api_key_file": str(missing)}}})
    assert msg == f"{SRC}: upstreams.openrouter.api_key_file cannot be read (No such file or directory)"


@pytest.mark.parametrize(("content", "reason"), [
    (None, "no such config file"),
    (b"[server\nport = 1\n", "invalid TOML"),
    (b"[server]\nhost = \"\xff\xfe\"\n", "cannot read"),
])
def test_file_level_errors_name_the_file(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "r1.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(str(path), env=ENV)
    assert str(e.value).startswith(f"{path}: {reason}"), e.value


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path), env=ENV)
    assert str(e.value).startswith(f"{tmp_path}: cannot read"), e.value


def test_a_key_error_in_a_file_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "r1.toml"
    path.write_text("[retry]\nmax_delay_s = \"fast\"\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path), env=ENV)
    assert str(e.value).startswith(f"{path}: retry.max_delay_s expected a duration"), e.value


def test_documented_config_toml_equals_the_built_in_defaults() -> None:
    documented = load_config(str(ROOT / "config.toml"), env=ENV)
    assert replace(documented, source="x") == replace(build_config({}, env=ENV), source="x")


@pytest.mark.parametrize(("text", "seconds"), [
    (30, 30.0), (1.5, 1.5), ("500ms", 0.5), ("15s", 15.0), (" 30m ", 1800.0), ("12h", 43200.0),
    ("7d", 604800.0), ("0.5s", 0.5), ("45", 45.0),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds
    cfg = build_config({"cache": {"ttl": text}, "retry": {"cooldown_s": text}}, env=ENV)
    assert cfg.cache.ttl == seconds and cfg.retry.cooldown_s == seconds


def test_values_resolve_as_documented(tmp_path: Path) -> None:
    cfg = build_config({
        "server": {"state_dir": "~/r1state", "max_request_mb": 2},
        "upstreams": {"openrouter": {"base_url": "http://127.0.0.1:9/v1/"},
                      "local": {"base_url": "http://127.0.0.1:8/v1", "api_key_env": "LOCAL_KEY"}},
        "models": [{"name": "r1", "upstream": "local", "fallbacks": ["r1b"]}, {"name": "r1b", "model": "x/y"}],
        "keys": [{"name": "roo", "key": "local-secret"}, {"name": "ci", "key_sha256": HEX.upper()}],
    }, env={**ENV, "LOCAL_KEY": " sk-local \n", "https_proxy": "http://127.0.0.1:3128"})
    assert cfg.server.state_dir == str(Path("~/r1state").expanduser())
    assert cfg.server.max_request_mb == 2.0 and isinstance(cfg.server.max_request_mb, float)
    up = cfg.upstreams["openrouter"]
    assert up.base_url == "http://127.0.0.1:9/v1" and up.api_key_env == "OPENROUTER_API_KEY" and up.api_key == "sk-test"
    assert cfg.upstreams["local"].api_key == "sk-local" and cfg.upstreams["local"].name == "local"
    assert [m.model for m in cfg.models] == ["r1", "x/y"]
    assert cfg.keys[0].key_sha256 == hashlib.sha256(b"local-secret").hexdigest()
    assert cfg.keys[1].key_sha256 == HEX and cfg.use_env_proxy
    assert not build_config({}, env=ENV).use_env_proxy


def test_state_dir_from_the_environment() -> None:
    assert build_config({}, env={"STATE_DIRECTORY": "/var/lib/r1proxy:/other"}).server.state_dir == "/var/lib/r1proxy"
    assert build_config({}, env={"XDG_STATE_HOME": "/x"}).server.state_dir == "/x/r1proxy"


def test_secret_sources_in_order(tmp_path: Path) -> None:
    (tmp_path / "file.key").write_text("sk-from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openrouter").write_text("sk-from-credential\n")
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(creds)}
    with_file = {"upstreams": {"openrouter": {"api_key_file": str(tmp_path / "file.key")}}}
    assert build_config(with_file, env=env).upstreams["openrouter"].api_key == "sk-from-file"
    assert build_config({}, env=env).upstreams["openrouter"].api_key == "sk-from-credential"
    assert build_config({}, env=ENV).upstreams["openrouter"].api_key == "sk-test"
    assert build_config({}, env={}).upstreams["openrouter"].api_key == ""


def test_redacted_hides_secrets() -> None:
    cfg = build_config({"server": {"metrics_key": "m-secret", "admin_key": "a-secret"}, **key()}, env=ENV)
    for text in (repr(cfg.redacted()), repr(cfg)):
        assert "sk-test" not in text and "m-secret" not in text and "a-secret" not in text, text
        assert "local-secret" not in text
    assert hashlib.sha256(b"local-secret").hexdigest() not in repr(cfg.redacted())
    shown = cfg.redacted()
    assert shown["upstreams"]["openrouter"]["api_key"] == "(set)" and shown["server"]["admin_key"] == "(set)"
    assert shown["keys"][0]["key_sha256"] == hashlib.sha256(b"local-secret").hexdigest()[:8] + "…"
    assert "plain_key" not in shown["keys"][0] and shown["cache"]["redis"]["password"] == "(none)"
    assert build_config({}, env={}).redacted()["upstreams"]["openrouter"]["api_key"] == "(missing)"
    assert build_config({}, env={}).redacted()["server"]["metrics_key"] == ""


def test_every_secret_is_registered_for_redaction() -> None:
    cfg = build_config({"server": {"metrics_key": "m-secret", "admin_key": "a-secret"}, **key()},
                       env={**ENV, "REDIS_PASSWORD": "r-secret"})
    assert sorted(cfg.secrets()) == sorted(["sk-test", "local-secret", "m-secret", "a-secret", "r-secret"])


def test_models_replace_the_default_aliases() -> None:
    assert [m.name for m in build_config({}, env=ENV).models] == ["deepseek-r1", "deepseek-r1-free"]
    assert [m.name for m in build_config(model(), env=ENV).models] == ["a"]
    assert isinstance(build_config({}, env=ENV), Config)


def test_every_key_is_documented_in_config_toml() -> None:
    """A new field is a new key: config.toml must show it (commented out is fine) with its default."""
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    missing = []
    pending: list[type] = [Config]
    while pending:
        cls = pending.pop()
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            nested = [t for t in (hints[f.name], *getattr(hints[f.name], "__args__", ()))
                      if dataclasses.is_dataclass(t)]
            if nested:
                pending.extend(nested)  # type: ignore[arg-type]
            elif not (f.metadata.get(DERIVED_KEY) or f.metadata.get(TABLE_NAME_KEY)) \
                    and not re.search(rf"^#? ?{f.name} *=", text, re.M):
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"not in config.toml: {missing}"


@dataclass(frozen=True)
class Inner:
    url: str = "redis://127.0.0.1"
    wait_s: float = 1.0  # named like a duration, but without the metadata it is a plain number
    timeout: float = duration(2.0)


@dataclass(frozen=True)
class Named:
    name: str = field(metadata={TABLE_NAME_KEY: True})
    weight: int = 1


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    secret: str = field(default="", metadata={DERIVED_KEY: True})


def test_a_new_section_is_read_from_its_fields_alone() -> None:
    r = Reader("t.toml")
    out = r.section(Outer, {"inner": {"timeout": "3s", "wait_s": 2}, "mode": "b"}, "")
    assert out == Outer(inner=Inner(wait_s=2.0, timeout=3.0), mode="b")
    for raw, msg in [
        ({"inner": {"wait_s": "2s"}}, "t.toml: inner.wait_s must be a number ≥ 0, got '2s'"),
        ({"inner": {"timeout": "2 weeks"}}, "t.toml: inner.timeout expected a duration"),
        ({"inner": {"nope": 1}}, "t.toml: inner.nope is not a known key (known: timeout, url, wait_s)"),
        ({"mode": "c"}, "t.toml: mode must be \"a\" or \"b\", got 'c'"),
        ({"secret": "x"}, "t.toml: secret is not a known key"),
        ({"inner": []}, "t.toml: inner must be a table"),
    ]:
        with pytest.raises(ConfigError) as e:
            r.section(Outer, raw, "")
        assert str(e.value).startswith(msg), e.value


def test_named_tables_merge_onto_their_defaults() -> None:
    @dataclass(frozen=True)
    class Holder:
        tables: dict[str, Named] = field(default_factory=lambda: {"a": Named(name="a", weight=5)})

    f = dataclasses.fields(Holder)[0]
    got = Reader("t.toml").value({"a": {}, "b": {"weight": 2}}, Mapping[str, Named], f, "tables")
    assert got == {"a": Named(name="a", weight=5), "b": Named(name="b", weight=2)}


def test_a_field_type_without_a_reader_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Odd:
        xs: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="xs: no config reader"):
        Reader("t.toml").value([1], list[int], dataclasses.fields(Odd)[0], "xs")
