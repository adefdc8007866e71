"""How configuration is read: where the file is, TOML into typed dataclasses, durations, secrets.

The one place that knows how a TOML value becomes a config value, so adding a config key is adding
a field (the fields themselves live in r1proxy.config). Types: ``bool``; ``int`` and ``float``
(never negative); ``str``; ``Literal[...]`` (one of those strings); ``tuple[str, ...]``;
``Mapping[str, Any]`` (a free-form table); a dataclass (a sub-table); ``tuple[D, ...]`` (an array
of tables); ``Mapping[str, D]`` (named tables, merged onto the default by name). Field metadata
says what a type cannot (the ``*_KEY`` names below); a float is a duration only when its field
says so. Errors name the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, cast, get_args, get_origin, get_type_hints

DURATION_KEY = "duration"  # True: seconds, from a number or a string such as "15s"
MIN_KEY = "min"  # a number's (or duration's) lower bound, inclusive (every number is >= 0 anyway)
ABOVE_KEY = "above"  # ... exclusive lower bound
MAX_KEY = "max"  # ... upper bound, inclusive
PATTERN_KEY = "pattern"  # (regex, reason): a str field must fully match it
KNOWN_KEYS_KEY = "known_keys"  # on a Mapping[str, Any]: the keys it may have
REGEXES_KEY = "regexes"  # True: every string of a tuple[str, ...] must compile as a regex
DERIVED_KEY = "derived"  # True: set by the loader, never a key in the file
TABLE_NAME_KEY = "table_name"  # True: in Mapping[str, D], this field holds the table's name
SECRET_KEY = "secret"  # (value) -> what check-config shows instead (None: leave the field out); see shown()
PREPARE_KEY = "prepare"  # on a tuple[D, ...]: (reader, table, where) -> (table, derived values), before reading

T = TypeVar("T")


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


def duration(default: float, *, at_least: float | None = None, above: float | None = None) -> float:
    """A float field read as a duration (seconds, or ``"500ms"``, ``"15s"``, ``"30m"``, ``"12h"``, ``"7d"``)."""
    bounds = {k: v for k, v in ((MIN_KEY, at_least), (ABOVE_KEY, above)) if v is not None}
    return dataclasses.field(default=default, metadata={DURATION_KEY: True, **bounds})


def derived(default: Any, **kw: Any) -> Any:
    """A field the loader fills in (a secret, the source path); the file cannot set it."""
    return dataclasses.field(default=default, metadata={DERIVED_KEY: True}, **kw)


def secret(default: str = "", *, derived: bool = False, missing: str = "") -> Any:
    """A secret str field: never in repr; ``shown()`` prints "(set)" (or ``missing`` when empty)."""
    return dataclasses.field(default=default, repr=False, metadata={
        SECRET_KEY: lambda v: "(set)" if v else missing, DERIVED_KEY: derived})


def shown(obj: Any) -> Any:
    """A config as plain data (dicts, lists, scalars) with every secret field replaced as its
    metadata says: what ``check-config`` prints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if SECRET_KEY in f.metadata:
                v = f.metadata[SECRET_KEY](v)
                if v is None:
                    continue
            out[f.name] = shown(v)
        return out
    if isinstance(obj, Mapping):
        return {k: shown(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [shown(v) for v in obj]
    return obj


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


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; a ConfigError naming it when it is missing, unreadable or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def default_state_dir(env: Mapping[str, str]) -> str:
    if env.get("R1PROXY_STATE_DIR"):
        return env["R1PROXY_STATE_DIR"]
    if env.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return str(Path(base) / "r1proxy")


def read_secret(r: Reader, env: Mapping[str, str], *, file: str, credential: str, env_var: str, where: str) -> str:
    """A secret from, in order: ``file``, systemd's credential ``credential`` (LoadCredential=), the
    environment variable ``env_var``; "" when none is set. An unreadable ``file`` fails at ``where``."""
    if file:
        try:
            return Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as e:
            r.fail(where, f"cannot be read ({e.strerror})")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return (Path(cred_dir) / credential).read_text(encoding="utf-8").strip()
    return env.get(env_var, "").strip() if env_var else ""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _choices(values: tuple[Any, ...]) -> str:
    quoted = [f'"{v}"' for v in values]
    return " or ".join(quoted) if len(quoted) < 3 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Reader:
    """Reads sections of one config source; every failure is a ConfigError naming source and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, reason: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {where} {reason}")

    def table(self, v: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(v, Mapping):
            self.fail(where, "must be a table")
        return v

    def array(self, v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            self.fail(where, "must be an array of tables ([[...]])")
        return v

    def section(self, cls: type[T], body: Any, where: str, base: T | None = None, **given: Any) -> T:
        """``cls`` from one table: unknown keys, missing required keys and wrong types fail.

        With ``base``, the table's keys replace those of ``base``; ``given`` sets derived fields."""
        body = self.table(body, where)
        readable = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                    if not f.metadata.get(DERIVED_KEY) and not f.metadata.get(TABLE_NAME_KEY)}
        self._check_keys(body, readable, where, required=base is None)
        hints = get_type_hints(cls)
        values = {name: self.value(body[name], hints[name], f, _join(where, name))
                  for name, f in readable.items() if name in body}
        values.update(given)
        if base is not None:
            return dataclasses.replace(base, **values)  # type: ignore[type-var]
        return cls(**values)

    def _check_keys(self, body: Mapping[str, Any], readable: Collection[str] | Mapping[str, dataclasses.Field[Any]],
                    where: str, *, required: bool) -> None:
        for k in body:
            if k not in readable:
                self.fail(_join(where, k), f"is not a known key (known: {', '.join(sorted(readable))})")
        for name, f in readable.items() if required and isinstance(readable, Mapping) else ():
            if name not in body and f.default is f.default_factory is dataclasses.MISSING:
                self.fail(_join(where, name), "is required")

    def value(self, v: Any, hint: Any, f: dataclasses.Field[Any], where: str) -> Any:
        """One TOML value as the field's type says (see the module docstring)."""
        meta = f.metadata
        if meta.get(DURATION_KEY):
            try:
                return self._bounded(parse_duration(v), meta, where, "s")
            except ValueError as e:
                self.fail(where, str(e))
        if hint in (int, float):
            return self._number(v, hint, meta, where)
        if hint in (bool, str):
            return self._scalar(v, hint, meta, where)
        if get_origin(hint) is Literal:
            if not isinstance(v, str) or v not in get_args(hint):
                self.fail(where, f"must be {_choices(get_args(hint))}, got {v!r}")
            return v
        return self._compound(v, hint, f, where)

    def _compound(self, v: Any, hint: Any, f: dataclasses.Field[Any], where: str) -> Any:
        origin, args, meta = get_origin(hint), get_args(hint), f.metadata
        if dataclasses.is_dataclass(hint):
            return self.section(cast(type, hint), v, where, base=_default(f))
        if origin is tuple and dataclasses.is_dataclass(args[0]):
            return self._tables(v, cast(type, args[0]), meta.get(PREPARE_KEY), where)
        if origin is tuple and args[0] is str:
            return self._strings(v, meta, where)
        if origin is Mapping and dataclasses.is_dataclass(args[1]):
            return self._named_tables(v, cast(type, args[1]), _default(f), where)
        if origin is Mapping:
            table = self.table(v, where)
            if KNOWN_KEYS_KEY in meta:
                self._check_keys(table, meta[KNOWN_KEYS_KEY], where, required=False)
            return dict(table)
        raise TypeError(f"{where}: no config reader for the type {hint!r}")

    def _number(self, v: Any, hint: type[float], meta: Mapping[str, Any], where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float) if hint is float else int) or v < 0:
            kind = "a number" if hint is float else "a whole number"
            self.fail(where, f"must be {kind} ≥ 0, got {v!r}")
        return self._bounded(hint(v), meta, where, "")

    def _bounded(self, v: float, meta: Mapping[str, Any], where: str, unit: str) -> float:
        for key, out_of_bounds, words in ((MIN_KEY, float.__lt__, "at least"), (ABOVE_KEY, float.__le__, "more than"),
                                          (MAX_KEY, float.__gt__, "at most")):
            if key in meta and out_of_bounds(float(v), float(meta[key])):
                self.fail(where, f"must be {words} {meta[key]:g}{unit}, got {v!r}")
        return v

    def _scalar(self, v: Any, hint: type, meta: Mapping[str, Any], where: str) -> Any:
        if hint is bool and not isinstance(v, bool):
            self.fail(where, f"must be true or false, got {v!r}")
        if hint is str and not isinstance(v, str):
            self.fail(where, f"must be a string, got {v!r}")
        pattern = meta.get(PATTERN_KEY)
        if pattern and not re.fullmatch(pattern[0], v):
            self.fail(where, pattern[1])
        return v

    def _strings(self, v: Any, meta: Mapping[str, Any], where: str) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(where, "must be a list of strings")
        if meta.get(REGEXES_KEY):
            for i, pattern in enumerate(v):
                try:
                    re.compile(pattern)
                except re.error as e:
                    self.fail(f"{where}[{i}]", f"is not a valid regex: {e}")
        return tuple(v)

    def _tables(self, v: Any, cls: type, prepare: Callable[..., tuple[Mapping[str, Any], dict[str, Any]]] | None,
                where: str) -> tuple[Any, ...]:
        out: list[Any] = []
        for i, body in enumerate(self.array(v, where)):
            at = f"{where}[{i}]"
            body, given = prepare(self, self.table(body, at), at) if prepare else (body, {})
            out.append(self.section(cls, body, at, **given))
        return tuple(out)

    def _named_tables(self, v: Any, cls: type, defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
        name_field = next(f.name for f in dataclasses.fields(cls) if f.metadata.get(TABLE_NAME_KEY))
        merged = dict(defaults)
        for name, body in self.table(v, where).items():
            merged[name] = self.section(cls, body, f"{where}.{name}", base=merged.get(name), **{name_field: name})
        return merged
