"""``r1proxy import-litellm``: a LiteLLM proxy ``litellm_config.yaml`` → an r1proxy ``config.toml``.

``convert(doc)`` maps what has an r1proxy meaning (``model_list`` → ``[[models]]`` and upstreams,
``litellm_settings.cache_params`` of type redis → ``[cache.redis]``, rate limits → pacing and a
local key, ``server_settings.port``) and reports everything else as dropped, with the reason.
Secrets are never carried: a literal ``api_key``, a Redis ``password`` or a ``master_key`` is named
by its field (never its value) with the environment variable or file to use instead, and makes
the result ``secrets_found``. LiteLLM's ``os.environ/NAME`` becomes "read the key from NAME".
The TOML is written by hand (strings JSON-escaped, a subset of TOML's) and checked by the real
config reader before anything is written. PyYAML (``pip install 'r1proxy[litellm]'``) reads the YAML.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .auth import new_key
from .config import OPENROUTER_URL, R1_OVERRIDES, build_config

ENV_PREFIX = "os.environ/"
FREE_RPM = 20  # OpenRouter's :free models: 20 requests a minute per account


class ImportError_(Exception):
    """A file that cannot be converted (one line for the operator)."""


@dataclass
class Result:
    toml: str
    notes: list[str] = field(default_factory=list)  # what was mapped, and how
    dropped: list[str] = field(default_factory=list)  # what was not, and why
    secrets: list[str] = field(default_factory=list)  # fields holding a literal secret (never their values)
    new_key: str = ""  # a fresh local key, shown to the operator once


def load_yaml(text: str) -> Any:
    try:  # imported by name: the optional extra ships no type stubs, and mypy need not know it
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        raise ImportError_("reading LiteLLM YAML needs PyYAML: pip install 'r1proxy[litellm]'") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # the message quotes the line, which may hold a key: give the position only
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ImportError_(f"not valid YAML{where}") from None


def _q(v: Any) -> str:
    """A TOML value: strings, numbers, booleans, lists and inline tables of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_q(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_q(x)}" for k, x in v.items()) + " }"
    raise ImportError_(f"cannot write {type(v).__name__} as TOML")


def _upstream_model(model: str, openrouter: bool, where: str, res: Result) -> str:
    out = model
    prefix = "openrouter/" if openrouter else "openai/"  # LiteLLM's provider prefix for that upstream
    if out.startswith(prefix):
        out = out[len(prefix):]
    if openrouter and out.endswith("-free") and ":" not in out:
        out = out[: -len("-free")] + ":free"
        res.notes.append(f"{where}: LiteLLM model {model!r} is not an OpenRouter id; using {out!r} "
                         "(check it against GET https://openrouter.ai/api/v1/models)")
    elif out != model:
        res.notes.append(f"{where}: LiteLLM model {model!r} → upstream model {out!r}")
    return out


def _key_source(value: Any, field_name: str, env_name: str, res: Result) -> str:
    """The env var to read a secret from; a literal is recorded as found and never copied."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX):]
    if value not in (None, ""):
        res.secrets.append(field_name)
    return env_name


def _models(doc: dict[str, Any], res: Result) -> tuple[list[str], dict[str, dict[str, Any]]]:
    model_list = doc.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise ImportError_("no model_list: this does not look like a LiteLLM proxy config")
    blocks: list[str] = []
    upstreams: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(model_list):
        where = f"model_list[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("model_name"), str):
            raise ImportError_(f"{where} has no model_name")
        params = m.get("litellm_params") or {}
        if not isinstance(params, dict) or not isinstance(params.get("model"), str):
            raise ImportError_(f"{where}.litellm_params has no model")
        base = str(params.get("api_base") or OPENROUTER_URL).rstrip("/")
        openrouter = urlsplit(base).hostname == "openrouter.ai" or params["model"].startswith("openrouter/")
        if openrouter:
            up_name, env_name = "openrouter", "OPENROUTER_API_KEY"
        else:
            labels = [x for x in (urlsplit(base).hostname or "").split(".") if x not in ("api", "www")]
            up_name = re.sub(r"[^a-z0-9_-]", "_", (labels[0] if labels else f"upstream{i}").lower())
            env_name = f"{up_name.upper().replace('-', '_')}_API_KEY"
        env_name = _key_source(params.get("api_key"), f"{where}.litellm_params.api_key", env_name, res)
        if up_name in upstreams and upstreams[up_name]["base_url"] != base:
            up_name = f"{up_name}{i}"
        upstreams.setdefault(up_name, {"base_url": base, "api_key_env": env_name})
        model = _upstream_model(params["model"], openrouter, where, res)
        lines = ["[[models]]", f"name = {_q(m['model_name'])}", f"upstream = {_q(up_name)}",
                 f"model = {_q(model)}"]
        if "deepseek-r1" in model.lower() or "deepseek/deepseek-r1" in model.lower():
            lines += [f"overrides = {_q(R1_OVERRIDES)}", 'system_prompt = "merge-into-user"']
        rpm = params.get("rpm") or m.get("rpm")
        if isinstance(rpm, int) and rpm > 0:
            lines.append(f"rpm = {rpm}")
        elif model.endswith(":free"):
            lines.append(f"rpm = {FREE_RPM}")
            res.notes.append(f"{where}: an OpenRouter :free model: paced at {FREE_RPM} requests/minute")
        for k in sorted(set(params) - {"model", "api_key", "api_base", "rpm"}):
            res.dropped.append(f"{where}.litellm_params.{k}: no r1proxy equivalent")
        blocks.append("\n".join(lines))
        res.notes.append(f"{where}: alias {m['model_name']!r} → upstream {up_name!r} ({base})")
    return blocks, upstreams


def _cache(settings: dict[str, Any], res: Result) -> list[str]:
    lines: list[str] = []
    cache_on = settings.get("cache")
    params = settings.get("cache_params") or {}
    if cache_on is False:
        lines += ["[cache]", "enabled = false"]
        res.notes.append("litellm_settings.cache: false → [cache] enabled = false")
        return lines
    if not isinstance(params, dict) or not params:
        return lines
    kind = str(params.get("type", "local"))
    if kind != "redis":
        res.dropped.append(f"litellm_settings.cache_params.type {kind!r}: r1proxy's own RAM + SQLite cache serves")
        return lines
    ttl = params.get("ttl")
    if isinstance(ttl, (int, float)) and ttl > 0:
        lines += ["[cache]", f"ttl = {_q(ttl)}"]
        res.notes.append(f"litellm_settings.cache_params.ttl {ttl}s kept; Roo Code re-runs tasks days later, "
                         'so consider ttl = "7d" (the r1proxy default)')
    url = params.get("url") or params.get("redis_url")
    if not isinstance(url, str) or not url:
        host, port, db = params.get("host", "localhost"), params.get("port", 6379), params.get("db", 0)
        url = f"redis://{host}:{port}/{db}"
    parts = urlsplit(url)
    if parts.password:  # a URL with a password: keep the URL, never the password
        res.secrets.append("litellm_settings.cache_params.url (password)")
        host = parts.netloc.rsplit("@", 1)[1]
        url = parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host).geturl()
    lines += ["", "[cache.redis]", f"url = {_q(url)}"]
    pw_env = _key_source(params.get("password"), "litellm_settings.cache_params.password", "", res)
    if pw_env:
        lines.append(f"password_env = {_q(pw_env)}")
    if isinstance(ttl, (int, float)) and ttl >= 1:
        lines.append(f"ttl = {_q(ttl)}")
    if isinstance(params.get("namespace"), str) and params["namespace"]:
        lines.append(f"prefix = {_q(params['namespace'] + ':r1p:v1:')}")
    res.notes.append(f"litellm_settings.cache_params (redis) → [cache.redis] url = {url} (the shared tier; the "
                     "local RAM + SQLite tiers stay in front of it)")
    for k in sorted(set(params) - {"type", "host", "port", "db", "password", "ttl", "url", "redis_url",
                                   "namespace"}):
        res.dropped.append(f"litellm_settings.cache_params.{k}: no r1proxy equivalent")
    return lines


def convert(doc: Any) -> Result:
    if not isinstance(doc, dict):
        raise ImportError_("the YAML document is not a mapping: not a LiteLLM config")
    res = Result(toml="")
    blocks, upstreams = _models(doc, res)
    settings = doc.get("litellm_settings") or {}
    server = doc.get("server_settings") or {}
    general = doc.get("general_settings") or {}
    out = ["# Imported from a LiteLLM config by `r1proxy import-litellm`. Everything not set here takes",
           "# r1proxy's documented defaults (see config.toml in the r1proxy repository).", ""]
    server_lines = ['host = "127.0.0.1"']
    if isinstance(server.get("port"), int):
        server_lines.append(f"port = {server['port']}")
        res.notes.append(f"server_settings.port → [server] port = {server['port']}")
    if server.get("host") not in (None, "127.0.0.1", "localhost"):
        res.dropped.append(f"server_settings.host {server['host']!r} not carried: r1proxy stays on 127.0.0.1 "
                         "until you set [server] host yourself (a non-loopback bind needs [[keys]])")
    out += ["[server]", *server_lines, ""]
    for name, up in upstreams.items():
        out += [f"[upstreams.{name}]", f"base_url = {_q(up['base_url'])}", f"api_key_env = {_q(up['api_key_env'])}",
                ""]
    out += ["\n\n".join(blocks), ""]
    out += [*_cache(settings, res), ""]
    rpm = settings.get("rate_limit_per_minute")
    if isinstance(rpm, int) and rpm > 0:
        key, digest = new_key()
        res.new_key = key
        out += ["[[keys]]", 'name = "roo"', f"key_sha256 = {_q(digest)}", f"rpm = {rpm}", ""]
        res.notes.append(f"litellm_settings.rate_limit_per_minute {rpm} → a local key 'roo' limited to {rpm} "
                         "requests/minute (Roo Code must now send the new key below)")
    _key_source(general.get("master_key"), "general_settings.master_key", "", res)
    for k in sorted(set(settings) - {"cache", "cache_params", "rate_limit_per_minute", "enable_rate_limiting"}):
        res.dropped.append(f"litellm_settings.{k}: no r1proxy equivalent")
    for k in sorted(set(server) - {"host", "port"}):
        res.dropped.append(f"server_settings.{k}: not needed by r1proxy")
    for k in sorted(set(general) - {"master_key"}):
        res.dropped.append(f"general_settings.{k}: no r1proxy equivalent")
    for k in sorted(set(doc) - {"model_list", "litellm_settings", "server_settings", "general_settings"}):
        res.dropped.append(f"{k}: not converted")
    res.toml = "\n".join(out).rstrip() + "\n"
    build_config(tomllib.loads(res.toml), source="(imported config)", env={})  # what we write must load
    return res


def report(res: Result, dest: str) -> str:
    lines = [f"wrote {dest}"] + [f"  mapped: {n}" for n in res.notes] + [f"  dropped: {d}" for d in res.dropped]
    for s in res.secrets:
        lines.append(f"  SECRET NOT COPIED: {s} holds a literal secret. Put it where r1proxy reads it "
                     "(the upstream key: $OPENROUTER_API_KEY, or api_key_file / systemd LoadCredential=; "
                     "a Redis password: $REDIS_PASSWORD or cache.redis.password_file), and rotate it if the "
                     "YAML file was ever shared or committed.")
    if res.new_key:
        lines.append(f"  new local key for Roo Code (shown once; set it as Roo's API key): {res.new_key}")
    return "\n".join(lines)
