"""Configuration: the one reader of ``config.toml``, the environment and secret files.

``load_config()`` finds the file (``--config``, ``$R1PROXY_CONFIG``, ``./config.toml``,
``~/.config/r1proxy/config.toml``, ``/etc/r1proxy/config.toml``), validates every key and
returns frozen dataclasses. With no file, the built-in defaults serve. Nothing else in
r1proxy reads ``os.environ`` or the config file after this returns.

Each key is a field below; its type and metadata (``duration()``, ``Literal[...]``, …) are its
validation, read generically by ``confread.Reader``: adding a key is adding a field (and its
documented line in config.toml). ``build_config`` adds what one field cannot check alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .confread import (
    ABOVE_KEY,
    DERIVED_KEY,
    KNOWN_KEYS_KEY,
    MAX_KEY,
    MIN_KEY,
    PATTERN_KEY,
    PREPARE_KEY,
    REGEXES_KEY,
    SECRET_KEY,
    TABLE_NAME_KEY,
    Reader,
    default_state_dir,
    derived,
    duration,
    find_config,
    read_secret,
    read_toml,
    secret,
    shown,
)
from .confread import ConfigError as ConfigError  # re-exported: callers import it from here
from .confread import parse_duration as parse_duration

OPENROUTER_URL = "https://openrouter.ai/api/v1"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    max_request_mb: float = 64.0
    shutdown_timeout: float = duration(30.0)
    state_dir: str = ""
    default_upstream: str = "openrouter"
    allow_unknown_models: bool = True
    log_format: Literal["plain", "json"] = "plain"
    log_requests: bool = True
    log_prompts: bool = False
    log_retention: float = duration(30 * 86400.0)
    metrics_key: str = secret()
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    hit_usage: Literal["real", "cache-read"] = "real"
    admin_key: str = secret()
    workers: int = field(default=1, metadata={MIN_KEY: 1, MAX_KEY: 16})  # processes on the port (SO_REUSEPORT)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_SHA256 = r"[0-9a-f]{64}"


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    key_sha256: str = field(metadata={PATTERN_KEY: (_SHA256, "must be 64 hex digits (see `r1proxy keys new NAME`)"),
                                      SECRET_KEY: lambda v: v[:8] + "…"})
    models: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    max_parallel: int = 0
    daily_tokens: int = 0
    daily_usd: float = 0.0
    plain_key: str = field(default="", repr=False, compare=False,  # `key = "…"` given in plain text
                           metadata={DERIVED_KEY: True, SECRET_KEY: lambda v: None})


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str = field(metadata={TABLE_NAME_KEY: True})
    base_url: str = OPENROUTER_URL
    api_key_env: str = ""
    api_key_file: str = ""
    referer: str = "https://github.com/r1proxy/r1proxy"
    title: str = "r1proxy"
    connect_timeout: float = duration(10.0)
    first_byte_timeout: float = duration(600.0)
    idle_timeout: float = duration(300.0)
    total_timeout: float = duration(3600.0)
    kind: Literal["auto", "openrouter", "openai"] = "auto"  # "auto" is resolved by build_config
    session_ids: bool = True
    api_key: str = secret(derived=True, missing="(missing)")

    @property
    def is_openrouter(self) -> bool:
        return self.kind == "openrouter"


# OpenRouter's provider routing object (guides/routing/provider-selection.mdx), passed through per alias
PROVIDER_FIELDS = frozenset({"order", "allow_fallbacks", "require_parameters", "data_collection", "zdr", "only",
                             "ignore", "quantizations", "sort", "max_price", "preferred_min_throughput",
                             "preferred_max_latency"})


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One deployment of an alias; several entries with one name are load-balanced."""

    name: str
    upstream: str = "openrouter"
    model: str = ""
    reasoning: Literal["field", "think-tags", "drop"] = "field"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: Literal["keep", "merge-into-user"] = "keep"
    strip_reasoning_from_history: bool = True
    tools: Literal["pass", "strip"] = "pass"
    rpm: int = 0
    max_parallel: int = 0
    max_queue_s: float = duration(120.0)
    fallbacks: tuple[str, ...] = ()
    strategy: Literal["round-robin", "least-busy", "latency"] = "round-robin"
    weight: int = 1
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    cache_read_usd_per_mtok: float = 0.0
    provider: Mapping[str, Any] = field(default_factory=dict, metadata={KNOWN_KEYS_KEY: PROVIDER_FIELDS})


# Roo Code's <environment_details> carries a "# Current Time" section that changes every request
# (no leading ^: a pattern that starts with a literal is found by a fast scan, not tried at every offset)
ROO_CURRENT_TIME = r"# Current Time\n(?:.+\n?)*"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[cache.redis]``: the optional shared tier. Off while ``url`` is empty. The password comes from
    ``password_env``, ``password_file`` or systemd's credential ``redis``, never from the file itself."""

    url: str = ""
    password_env: str = "REDIS_PASSWORD"
    password_file: str = ""
    prefix: str = "r1p:v1:"
    ttl: float = duration(7 * 86400.0, at_least=1.0)  # every entry in Redis expires
    max_entry_mb: float = 8.0
    timeout: float = duration(0.1, above=0.0)  # a lookup needs a bound
    breaker_failures: int = field(default=5, metadata={MIN_KEY: 1})
    breaker_reset: float = duration(30.0)
    coalesce: bool = True
    lock_ttl: float = duration(10.0, at_least=1.0)  # a dead leader's lock expires after this
    password: str = secret(derived=True, missing="(none)")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class SemanticConfig:
    """``[cache.semantic]``: the opt-in near-duplicate tier (r1proxy/cache/semantic)."""

    enabled: bool = False
    threshold: float = field(default=0.95, metadata={ABOVE_KEY: 0.0, MAX_KEY: 1.0})  # a cosine similarity
    keys: tuple[str, ...] = ()
    model_dir: str = ""
    max_ram_mb: float = 64.0
    candidates: int = field(default=5, metadata={MIN_KEY: 1})


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    memory_mb: float = 256.0
    max_disk_mb: float = 2048.0
    ttl: float = duration(7 * 86400.0)
    stale_if_error: float = duration(86400.0)
    finish_on_disconnect: bool = True
    count_hits_in_rate_limit: bool = False
    ignore_patterns: tuple[str, ...] = field(default=(ROO_CURRENT_TIME,), metadata={REGEXES_KEY: True})
    namespace: str = ""
    share: Literal["all", "key"] = "all"
    finish_on_disconnect_max: float = duration(600.0)
    redis: RedisConfig = field(default_factory=RedisConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    early_headers_s: float = duration(10.0)
    keepalive_s: float = duration(15.0)
    max_event_mb: float = field(default=8.0, metadata={ABOVE_KEY: 0.0})

    @property
    def max_event_bytes(self) -> int:
        return int(self.max_event_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = field(default=3, metadata={MIN_KEY: 1})
    base_delay_s: float = duration(0.5)
    max_delay_s: float = duration(8.0)
    max_total_s: float = duration(30.0)
    max_retry_after_s: float = duration(20.0)
    cooldown_s: float = duration(30.0)
    failures_to_cooldown: int = 3


R1_OVERRIDES = {"temperature": 0.6, "top_p": 0.95}  # DeepSeek's recommendation; Roo sends 0


def _default_models() -> tuple[ModelConfig, ...]:
    return (
        ModelConfig(name="deepseek-r1", model="deepseek/deepseek-r1", overrides=R1_OVERRIDES,
                    system_prompt="merge-into-user"),
        ModelConfig(name="deepseek-r1-free", model="deepseek/deepseek-r1:free", rpm=20, overrides=R1_OVERRIDES,
                    system_prompt="merge-into-user"),
    )


def _default_upstreams() -> Mapping[str, UpstreamConfig]:
    return {"openrouter": UpstreamConfig(name="openrouter", api_key_env="OPENROUTER_API_KEY", kind="openrouter")}


def _hash_plain_key(r: Reader, body: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """A ``[[keys]]`` table as stored: ``key = "…"`` (plain text) becomes its lower-case sha256."""
    d = dict(body)
    plain = d.pop("key", None)
    if plain is not None:
        if not isinstance(plain, str) or not plain:
            r.fail(f"{where}.key", "must be a non-empty string")
        if "key_sha256" in d:
            r.fail(where, "give either key or key_sha256, not both")
        d["key_sha256"] = hashlib.sha256(plain.encode()).hexdigest()
    if isinstance(d.get("key_sha256"), str):
        d["key_sha256"] = d["key_sha256"].lower()
    return d, {"plain_key": plain or ""}


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    keys: tuple[KeyConfig, ...] = field(default=(), metadata={PREPARE_KEY: _hash_plain_key})
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=_default_upstreams)
    models: tuple[ModelConfig, ...] = field(default_factory=_default_models)
    cache: CacheConfig = field(default_factory=CacheConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    source: str = derived("(built-in defaults)")
    use_env_proxy: bool = derived(False)  # HTTP(S)_PROXY set: route upstream calls through it

    @property
    def state_path(self) -> Path:
        return Path(self.server.state_dir)

    @property
    def db_path(self) -> Path:
        return self.state_path / "r1proxy.db"

    def aliases(self) -> dict[str, list[ModelConfig]]:
        out: dict[str, list[ModelConfig]] = {}
        for m in self.models:
            out.setdefault(m.name, []).append(m)
        return out

    def secrets(self) -> list[str]:
        """Every configured secret, for the redaction registry (r1proxy.redact)."""
        out = [up.api_key for up in self.upstreams.values()] + [k.plain_key for k in self.keys]
        return [s for s in [*out, self.server.metrics_key, self.server.admin_key, self.cache.redis.password] if s]

    def redacted(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets replaced (fields declared with secret()), for ``check-config``."""
        d: dict[str, Any] = shown(self)
        return d


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve, read and validate the config. Raises ConfigError with file and key named."""
    env = os.environ if env is None else env
    found = find_config(path, env)
    if found is None:
        return build_config({}, source="(built-in defaults)", env=env)
    return build_config(read_toml(found), source=str(found), env=env)


def build_config(raw: Mapping[str, Any], *, source: str = "(in memory)",
                 env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document into a Config (tests build configs through this too)."""
    env = os.environ if env is None else env
    r = Reader(source)
    cfg = r.section(Config, raw, "")
    server = replace(cfg.server, state_dir=str(Path(cfg.server.state_dir or default_state_dir(env)).expanduser()))
    upstreams = {name: _upstream(r, up, env) for name, up in cfg.upstreams.items()}
    models = tuple(m if m.model else replace(m, model=m.name) for m in cfg.models)
    cache = replace(cfg.cache, redis=_redis(r, cfg.cache.redis, env))
    cfg = replace(cfg, server=server, upstreams=upstreams, models=models, cache=cache, source=source,
                  use_env_proxy=any(env.get(k) for k in _PROXY_VARS))
    _check_references(r, cfg)
    return cfg


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _upstream(r: Reader, up: UpstreamConfig, env: Mapping[str, str]) -> UpstreamConfig:
    kind = up.kind
    if kind == "auto":  # OpenRouter: its /models prices, /key quota and session_id stickiness
        kind = "openrouter" if up.name == "openrouter" or "openrouter.ai" in up.base_url else "openai"
    api_key = read_secret(r, env, file=up.api_key_file, credential=up.name, env_var=up.api_key_env,
                          where=f"upstreams.{up.name}.api_key_file")
    return replace(up, base_url=up.base_url.rstrip("/"), kind=kind, api_key=api_key)


def _check_references(r: Reader, cfg: Config) -> None:
    """Names that must point at something defined elsewhere in the file."""
    known = ", ".join(sorted(cfg.upstreams))
    aliases = {m.name for m in cfg.models}
    for i, m in enumerate(cfg.models):
        if m.upstream not in cfg.upstreams:
            r.fail(f"models[{i}].upstream", f"names no upstream {m.upstream!r} (known: {known})")
        for fb in m.fallbacks:
            if fb not in aliases:
                r.fail(f"models[{i}].fallbacks", f"names no model alias {fb!r}")
            if fb == m.name:
                r.fail(f"models[{i}].fallbacks", "an alias cannot fall back to itself")
    if cfg.server.default_upstream not in cfg.upstreams:
        r.fail("server.default_upstream", f"names no upstream {cfg.server.default_upstream!r}")
    if len({k.name for k in cfg.keys}) != len(cfg.keys):
        r.fail("keys", "two keys share a name")
    if cfg.server.workers > 1 and cfg.server.port == 0:
        r.fail("server.workers", "more than one worker needs a fixed server.port (each binds it with SO_REUSEPORT)")


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis(r: Reader, redis: RedisConfig, env: Mapping[str, str]) -> RedisConfig:
    """``[cache.redis]`` beyond its fields: a usable URL without a password in it, and the password."""
    if redis.url:
        if not redis.url.startswith(_REDIS_SCHEMES):
            r.fail("cache.redis.url", "must start with redis://, rediss:// or unix://")
        netloc = redis.url.split("://", 1)[1].split("/", 1)[0]
        if ("@" in netloc and ":" in netloc.rsplit("@", 1)[0]) or "password=" in redis.url:
            r.fail("cache.redis.url", "must not carry a password: set it in $REDIS_PASSWORD "
                                      "(cache.redis.password_env) or cache.redis.password_file")
    return replace(redis, password=read_secret(r, env, file=redis.password_file, credential="redis",
                                               env_var=redis.password_env, where="cache.redis.password_file"))
