"""Configuration: the one reader of ``config.toml``, the environment and secret files.

``load_config()`` finds the file (``--config``, ``$R1PROXY_CONFIG``, ``./config.toml``,
``~/.config/r1proxy/config.toml``, ``/etc/r1proxy/config.toml``), validates every key and
returns frozen dataclasses. With no file, the built-in defaults serve. Nothing else in
r1proxy reads ``os.environ`` or the config file after this returns.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

OPENROUTER_URL = "https://openrouter.ai/api/v1"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"15s"``, ``"30m"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 30, \"15s\", \"30m\" or \"7d\", got {value!r}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    max_request_mb: float = 64.0
    shutdown_timeout: float = 30.0
    state_dir: str = ""
    default_upstream: str = "openrouter"
    allow_unknown_models: bool = True
    log_format: str = "plain"
    log_requests: bool = True
    log_prompts: bool = False
    log_retention: float = 30 * 86400.0
    metrics_key: str = ""
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    hit_usage: str = "real"

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


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    key_sha256: str
    models: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    max_parallel: int = 0
    daily_tokens: int = 0
    daily_usd: float = 0.0
    plain_key: str = field(default="", repr=False, compare=False)  # `key = "…"` given in plain text


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    base_url: str = OPENROUTER_URL
    api_key_env: str = ""
    api_key_file: str = ""
    referer: str = "https://github.com/r1proxy/r1proxy"
    title: str = "r1proxy"
    connect_timeout: float = 10.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    total_timeout: float = 3600.0
    kind: str = "auto"
    session_ids: bool = True
    api_key: str = field(default="", repr=False)

    @property
    def is_openrouter(self) -> bool:
        return self.kind == "openrouter"

    def redacted(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        d["api_key"] = "(set)" if self.api_key else "(missing)"
        return d


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One deployment of an alias; several entries with one name are load-balanced."""

    name: str
    upstream: str = "openrouter"
    model: str = ""
    reasoning: str = "field"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: str = "keep"
    strip_reasoning_from_history: bool = True
    tools: str = "pass"
    rpm: int = 0
    max_parallel: int = 0
    max_queue_s: float = 120.0
    fallbacks: tuple[str, ...] = ()
    strategy: str = "round-robin"
    weight: int = 1
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    cache_read_usd_per_mtok: float = 0.0
    provider: Mapping[str, Any] = field(default_factory=dict)


# OpenRouter's provider routing object (guides/routing/provider-selection.mdx), passed through per alias
PROVIDER_FIELDS = frozenset({"order", "allow_fallbacks", "require_parameters", "data_collection", "zdr", "only",
                             "ignore", "quantizations", "sort", "max_price", "preferred_min_throughput",
                             "preferred_max_latency"})


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
    ttl: float = 7 * 86400.0
    max_entry_mb: float = 8.0
    timeout: float = 0.1
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    password: str = field(default="", repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class SemanticConfig:
    """``[cache.semantic]``: the opt-in near-duplicate tier (r1proxy/cache/semantic)."""

    enabled: bool = False
    threshold: float = 0.95
    keys: tuple[str, ...] = ()
    model_dir: str = ""
    max_ram_mb: float = 64.0
    candidates: int = 5


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    memory_mb: float = 256.0
    max_disk_mb: float = 2048.0
    ttl: float = 7 * 86400.0
    stale_if_error: float = 86400.0
    finish_on_disconnect: bool = True
    count_hits_in_rate_limit: bool = False
    ignore_patterns: tuple[str, ...] = (ROO_CURRENT_TIME,)
    namespace: str = ""
    share: str = "all"
    finish_on_disconnect_max: float = 600.0
    redis: RedisConfig = field(default_factory=RedisConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    early_headers_s: float = 10.0
    keepalive_s: float = 15.0
    max_event_mb: float = 8.0

    @property
    def max_event_bytes(self) -> int:
        return int(self.max_event_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_total_s: float = 30.0
    max_retry_after_s: float = 20.0
    cooldown_s: float = 30.0
    failures_to_cooldown: int = 3


R1_OVERRIDES = {"temperature": 0.6, "top_p": 0.95}  # DeepSeek's recommendation; Roo sends 0


def _default_models() -> tuple[ModelConfig, ...]:
    r1 = {"overrides": R1_OVERRIDES, "system_prompt": "merge-into-user"}
    return (
        ModelConfig(name="deepseek-r1", model="deepseek/deepseek-r1", **r1),  # type: ignore[arg-type]
        ModelConfig(name="deepseek-r1-free", model="deepseek/deepseek-r1:free", rpm=20, **r1),  # type: ignore[arg-type]
    )


def _default_upstreams() -> Mapping[str, UpstreamConfig]:
    return {"openrouter": UpstreamConfig(name="openrouter", api_key_env="OPENROUTER_API_KEY", kind="openrouter")}


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    keys: tuple[KeyConfig, ...] = ()
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=_default_upstreams)
    models: tuple[ModelConfig, ...] = field(default_factory=_default_models)
    cache: CacheConfig = field(default_factory=CacheConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    source: str = "(built-in defaults)"
    use_env_proxy: bool = False  # HTTP(S)_PROXY set: route upstream calls through it

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
        return [s for s in [*out, self.server.metrics_key, self.cache.redis.password] if s]

    def redacted(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets replaced, for ``check-config``."""

        def plain(obj: Any) -> Any:
            if isinstance(obj, UpstreamConfig):
                return obj.redacted()
            if isinstance(obj, KeyConfig):
                d = {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
                d["key_sha256"] = d["key_sha256"][:8] + "…"
                d.pop("plain_key", None)
                return d
            if hasattr(obj, "__dataclass_fields__"):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            if isinstance(obj, Mapping):
                return {k: plain(v) for k, v in obj.items()}
            if isinstance(obj, tuple):
                return [plain(v) for v in obj]
            return obj

        d = plain(self)
        d["cache"]["redis"]["password"] = "(set)" if self.cache.redis.password else "(none)"
        if self.server.metrics_key:
            d["server"]["metrics_key"] = "(set)"
        return d


CANDIDATES = (
    Path("config.toml"),
    Path("~/.config/r1proxy/config.toml"),
    Path("/etc/r1proxy/config.toml"),
)


def find_config(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read, or None for the built-in defaults."""
    if explicit:
        return Path(explicit)
    if env.get("R1PROXY_CONFIG"):
        return Path(env["R1PROXY_CONFIG"])
    for p in CANDIDATES:
        p = p.expanduser()
        if p.is_file():
            return p
    return None


def default_state_dir(env: Mapping[str, str]) -> str:
    if env.get("R1PROXY_STATE_DIR"):
        return env["R1PROXY_STATE_DIR"]
    if env.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return str(Path(base) / "r1proxy")


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve, read and validate the config. Raises ConfigError with file and key named."""
    env = os.environ if env is None else env
    found = find_config(path, env)
    raw: dict[str, Any] = {}
    source = "(built-in defaults)"
    if found is not None:
        source = str(found)
        try:
            raw = tomllib.loads(found.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{found}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{found}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{found}: invalid TOML: {e}") from None
    return build_config(raw, source=source, env=env)


def build_config(raw: Mapping[str, Any], *, source: str = "(in memory)",
                 env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document into a Config (tests build configs through this too)."""
    env = os.environ if env is None else env
    p = _Parser(source)
    p.keys_only(raw, "", {"server", "keys", "upstreams", "models", "cache", "stream", "retry"})
    server = p.section(ServerConfig, raw.get("server", {}), "server")
    if not server.state_dir:
        server = replace(server, state_dir=default_state_dir(env))
    server = replace(server, state_dir=str(Path(server.state_dir).expanduser()))
    if server.log_format not in ("plain", "json"):
        p.fail("server.log_format", 'must be "plain" or "json"')
    if server.hit_usage not in ("real", "cache-read"):
        p.fail("server.hit_usage", 'must be "real" or "cache-read"')

    upstreams = dict(_default_upstreams())
    for name, body in p.table(raw.get("upstreams", {}), "upstreams").items():
        base = upstreams.get(name, UpstreamConfig(name=name))
        up = p.section(UpstreamConfig, body, f"upstreams.{name}", base=base, skip={"name", "api_key"})
        if up.kind not in ("auto", "openrouter", "openai"):
            p.fail(f"upstreams.{name}.kind", 'must be "auto", "openrouter" or "openai"')
        upstreams[name] = up
    resolved = {}
    for name, up in upstreams.items():
        kind = up.kind
        if kind == "auto":  # OpenRouter: its /models prices, /key quota and session_id stickiness
            kind = "openrouter" if name == "openrouter" or "openrouter.ai" in up.base_url else "openai"
        resolved[name] = replace(up, api_key=_read_secret(up, env, p), base_url=up.base_url.rstrip("/"), kind=kind)

    models = _default_models() if "models" not in raw else tuple(
        p.section(ModelConfig, m, f"models[{i}]", required={"name"})
        for i, m in enumerate(p.array(raw["models"], "models"))
    )
    aliases: dict[str, ModelConfig] = {}
    for i, m in enumerate(models):
        where = f"models[{i}]"
        if m.upstream not in resolved:
            p.fail(f"{where}.upstream", f"names no upstream {m.upstream!r} (known: {', '.join(sorted(resolved))})")
        if m.reasoning not in ("field", "think-tags", "drop"):
            p.fail(f"{where}.reasoning", 'must be "field", "think-tags" or "drop"')
        if m.system_prompt not in ("keep", "merge-into-user"):
            p.fail(f"{where}.system_prompt", 'must be "keep" or "merge-into-user"')
        if m.tools not in ("pass", "strip"):
            p.fail(f"{where}.tools", 'must be "pass" or "strip"')
        if m.strategy not in ("round-robin", "least-busy", "latency"):
            p.fail(f"{where}.strategy", 'must be "round-robin", "least-busy" or "latency"')
        for k in m.provider:
            if k not in PROVIDER_FIELDS:
                p.fail(f"{where}.provider.{k}", f"is not an OpenRouter provider field "
                                                f"(known: {', '.join(sorted(PROVIDER_FIELDS))})")
        if not m.model:
            models = tuple(replace(x, model=x.name) if x is m else x for x in models)
        aliases.setdefault(m.name, m)
    for i, m in enumerate(models):
        for fb in m.fallbacks:
            if fb not in aliases:
                p.fail(f"models[{i}].fallbacks", f"names no model alias {fb!r}")
            if fb == m.name:
                p.fail(f"models[{i}].fallbacks", "an alias cannot fall back to itself")
    if server.default_upstream not in resolved:
        p.fail("server.default_upstream", f"names no upstream {server.default_upstream!r}")

    keys = tuple(_key(p, k, i) for i, k in enumerate(p.array(raw.get("keys", []), "keys")))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        p.fail("keys", "two keys share a name")

    cache_raw = dict(p.table(raw.get("cache", {}), "cache"))
    semantic = p.section(SemanticConfig, cache_raw.pop("semantic", {}), "cache.semantic")
    if not 0.0 < semantic.threshold <= 1.0:
        p.fail("cache.semantic.threshold", f"must be a cosine similarity in (0, 1], got {semantic.threshold!r}")
    if semantic.candidates < 1:
        p.fail("cache.semantic.candidates", "must be at least 1")
    cache = p.section(CacheConfig, {k: v for k, v in cache_raw.items() if k != "redis"}, "cache",
                      skip={"redis", "semantic"})
    cache = replace(cache, semantic=semantic)
    if "redis" in cache_raw:
        cache = replace(cache, redis=_redis(p, cache_raw["redis"], env))
    for i, pat in enumerate(cache.ignore_patterns):
        try:
            re.compile(pat)
        except re.error as e:
            p.fail(f"cache.ignore_patterns[{i}]", f"is not a valid regex: {e}")
    if cache.share not in ("all", "key"):
        p.fail("cache.share", 'must be "all" or "key"')
    stream = p.section(StreamConfig, raw.get("stream", {}), "stream")
    if stream.max_event_mb <= 0:
        p.fail("stream.max_event_mb", "must be more than 0")
    retry = p.section(RetryConfig, raw.get("retry", {}), "retry")
    if retry.max_attempts < 1:
        p.fail("retry.max_attempts", "must be at least 1")
    env_proxy = any(env.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                         "ALL_PROXY", "all_proxy"))
    return Config(server=server, keys=keys, upstreams=resolved, models=models, cache=cache,
                  stream=stream, retry=retry, source=source, use_env_proxy=env_proxy)


def _key(p: _Parser, body: Any, i: int) -> KeyConfig:
    where = f"keys[{i}]"
    d = dict(p.table(body, where))
    plain = d.pop("key", None)
    if plain is not None:
        if not isinstance(plain, str) or not plain:
            p.fail(f"{where}.key", "must be a non-empty string")
        if "key_sha256" in d:
            p.fail(where, "give either key or key_sha256, not both")
        d["key_sha256"] = hashlib.sha256(plain.encode()).hexdigest()
    k = p.section(KeyConfig, d, where, required={"name", "key_sha256"}, skip={"plain_key"})
    if not re.fullmatch(r"[0-9a-f]{64}", k.key_sha256.lower()):
        p.fail(f"{where}.key_sha256", "must be 64 hex digits (see `r1proxy keys new NAME`)")
    return replace(k, key_sha256=k.key_sha256.lower(), plain_key=plain or "")


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis(p: _Parser, body: Any, env: Mapping[str, str]) -> RedisConfig:
    r = p.section(RedisConfig, body, "cache.redis", skip={"password"})
    if r.url:
        if not r.url.startswith(_REDIS_SCHEMES):
            p.fail("cache.redis.url", "must start with redis://, rediss:// or unix://")
        netloc = r.url.split("://", 1)[1].split("/", 1)[0]
        if ("@" in netloc and ":" in netloc.rsplit("@", 1)[0]) or "password=" in r.url:
            p.fail("cache.redis.url", "must not carry a password: set it in $REDIS_PASSWORD "
                                      "(cache.redis.password_env) or cache.redis.password_file")
    if r.timeout <= 0:
        p.fail("cache.redis.timeout", "must be more than 0 (a lookup needs a bound)")
    if r.ttl < 1:
        p.fail("cache.redis.ttl", "must be at least 1s (every entry in Redis expires)")
    if r.breaker_failures < 1:
        p.fail("cache.redis.breaker_failures", "must be at least 1")
    password = ""
    if r.password_file:
        try:
            password = Path(r.password_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as e:
            p.fail("cache.redis.password_file", f"cannot be read ({e.strerror})")
    elif env.get("CREDENTIALS_DIRECTORY") and (Path(env["CREDENTIALS_DIRECTORY"]) / "redis").is_file():
        password = (Path(env["CREDENTIALS_DIRECTORY"]) / "redis").read_text(encoding="utf-8").strip()
    elif r.password_env:
        password = env.get(r.password_env, "").strip()
    return replace(r, password=password)


def _read_secret(up: UpstreamConfig, env: Mapping[str, str], p: _Parser) -> str:
    if up.api_key_file:
        path = Path(up.api_key_file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as e:
            p.fail(f"upstreams.{up.name}.api_key_file", f"cannot be read ({e.strerror})")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")  # systemd LoadCredential=
    if cred_dir:
        cred = Path(cred_dir) / up.name
        if cred.is_file():
            return cred.read_text(encoding="utf-8").strip()
    if up.api_key_env:
        return env.get(up.api_key_env, "").strip()
    return ""


class _Parser:
    """Typed field-by-field validation that names the file and dotted key on error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> None:
        raise ConfigError(f"{self.source}: {key} {msg}")

    def table(self, v: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(v, Mapping):
            self.fail(where, "must be a table")
        return v

    def array(self, v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            self.fail(where, "must be an array of tables ([[...]])")
        return v

    def keys_only(self, v: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for k in v:
            if k not in allowed:
                dotted = f"{where}.{k}" if where else k
                self.fail(dotted, f"is not a known key (known: {', '.join(sorted(allowed))})")

    def section(self, cls: type, body: Any, where: str, *, base: Any = None,
                required: set[str] = frozenset(), skip: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
        body = self.table(body, where)
        known = {f.name: f for f in fields(cls) if f.name not in skip and f.name != "api_key"}
        self.keys_only(body, where, set(known))
        for r in required:
            if r not in body:
                self.fail(f"{where}.{r}", "is required")
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name not in body:
                continue
            values[name] = self.value(body[name], f, f"{where}.{name}")
        if base is not None:
            return replace(base, **values)
        return cls(**values)

    def value(self, v: Any, f: Any, where: str) -> Any:
        t = str(f.type)
        default = f.default
        if t == "float" and (where.endswith(("ttl", "stale_if_error", "_s", "timeout", "retention"))
                             or f.name in ("shutdown_timeout", "breaker_reset", "finish_on_disconnect_max")):
            try:
                return parse_duration(v)
            except ValueError as e:
                self.fail(where, str(e))
        if t == "bool":
            if not isinstance(v, bool):
                self.fail(where, f"must be true or false, got {v!r}")
            return v
        if t == "int":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                self.fail(where, f"must be a whole number ≥ 0, got {v!r}")
            return v
        if t == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                self.fail(where, f"must be a number ≥ 0, got {v!r}")
            return float(v)
        if t == "str":
            if not isinstance(v, str):
                self.fail(where, f"must be a string, got {v!r}")
            return v
        if t.startswith("tuple"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                self.fail(where, "must be a list of strings")
            return tuple(v)
        if t.startswith("Mapping"):
            if not isinstance(v, Mapping):
                self.fail(where, "must be a table")
            return dict(v)
        raise AssertionError(f"unhandled config type {t} for {where} (default {default!r})")
