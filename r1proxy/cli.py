"""Command line: ``r1proxy serve | check-config | keys new | stats | cache … | logs | import-litellm``.

Argument parsing and dispatch only; every error is one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .config import ConfigError, load_config

# sysexits.h EX_CONFIG ("78/CONFIG" in systemctl status): the systemd units name it in
# RestartPreventExitStatus=, so a config error ends in "failed" at once instead of a restart loop.
EXIT_CONFIG = 78


class _ArgParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"r1proxy: {self.prog.removeprefix('r1proxy').strip() or 'error'}: {message} (see --help)\n")


def _bounded(kind: type, lo: float, hi: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (lo <= v <= hi):  # also false for NaN
            raise argparse.ArgumentTypeError(f"{text} is out of range ({lo:g} to {hi:g})")
        return v
    return parse


_COUNT = _bounded(int, 1, 1_000_000)


def _parser() -> argparse.ArgumentParser:
    p = _ArgParser(prog="r1proxy", description="Local caching gateway for Roo Code → OpenRouter (R1).")
    p.add_argument("--config", metavar="PATH", help="config file (default: search $R1PROXY_CONFIG, ./config.toml, "
                                                    "~/.config/r1proxy/config.toml, /etc/r1proxy/config.toml)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--host", help="override server.host")
    s.add_argument("--port", type=_bounded(int, 0, 65535), help="override server.port")
    sub.add_parser("check-config", help="print the resolved config with secrets redacted")
    k = sub.add_parser("keys", help="local API keys")
    ksub = k.add_subparsers(dest="keys_cmd", metavar="ACTION")
    kn = ksub.add_parser("new", help="make a new key: prints it once, and the TOML holding its sha256")
    kn.add_argument("name")
    st = sub.add_parser("stats", help="hit rate, savings, cache sizes (live when the server is up)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--watch", nargs="?", type=_bounded(float, 0.1, 86400), const=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2): a live monitor")
    c = sub.add_parser("cache", help="inspect and manage the cache database")
    csub = c.add_subparsers(dest="cache_cmd", metavar="ACTION")
    ls = csub.add_parser("ls", help="most recently used entries")
    ls.add_argument("--model", help="only this upstream model")
    ls.add_argument("-n", type=_COUNT, default=50, help="how many (default 50)")
    show = csub.add_parser("show", help="one entry: the canonical request and the stored answer")
    show.add_argument("key")
    pg = csub.add_parser("purge", help="delete entries (one by key, by model, by age, or all)")
    pg.add_argument("--key", help="one entry, e.g. a wrong semantic source (its X-Cache-Source-Key header)")
    pg.add_argument("--model", help="only this upstream model")
    pg.add_argument("--older-than", metavar="AGE", help='created before AGE ago, e.g. "7d", "12h"')
    pg.add_argument("--all", action="store_true", help="every entry")
    pg.add_argument("--tier", choices=("sqlite", "redis", "all"), default="sqlite",
                    help="sqlite (default): this machine's database; redis: the shared tier and every "
                         "process's copies; all: both. With [cache.redis], running servers drop memory copies")
    ex = csub.add_parser("explain", help="why did a request miss: the nearest stored request and the first "
                                         "difference (a request body on stdin, or --last / --request-id)")
    ex.add_argument("--last", action="store_true", help="the last logged miss whose request is stored")
    ex.add_argument("--request-id", metavar="ID", help="a logged request (its X-Request-Id)")
    ex.add_argument("--json", action="store_true", help="machine-readable output (what the dashboard shows)")
    csub.add_parser("vacuum", help="reclaim free space in the database file")
    td = csub.add_parser("train-dict", help="train a zstd dictionary from stored entries (new entries use it "
                                            "after the server restarts; old ones stay readable)")
    td.add_argument("--samples", type=_COUNT, default=2000, help="entries to learn from (default 2000)")
    csub.add_parser("path", help="print the database path (for sqlite3)")
    ck = csub.add_parser("check", help="check the database file (PRAGMA quick_check; read-only, safe while serving)")
    ck.add_argument("--full", action="store_true", help="PRAGMA integrity_check: slower, also checks indexes")
    bk = csub.add_parser("backup", help="copy the database to PATH (VACUUM INTO; safe while serving)")
    bk.add_argument("dest", metavar="PATH")
    il = sub.add_parser("import-litellm", help="convert a LiteLLM proxy litellm_config.yaml into a config.toml "
                                               "(secrets are never copied)")
    il.add_argument("yaml", metavar="LITELLM_CONFIG_YAML")
    il.add_argument("-o", "--output", default="config.toml", help="where to write (default ./config.toml; "
                                                                  "'-' for stdout)")
    il.add_argument("--force", action="store_true", help="overwrite an existing output file")
    lg = sub.add_parser("logs", help="the request log (no prompts)")
    lg.add_argument("-n", type=_COUNT, default=20, help="how many rows (default 20)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new requests")
    lg.add_argument("--errors", action="store_true", help="only failed requests")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 2
    try:
        if args.cmd == "keys":
            return _keys(args, p)
        if args.cmd == "import-litellm":
            return _import_litellm(args)
        config = load_config(args.config)
        from . import redact

        redact.register(config.secrets())
        if args.cmd == "check-config":
            print(json.dumps(config.redacted(), indent=2, default=str))
            return 0
        if args.cmd == "serve":
            return _serve(args, config)
        from . import ops

        if args.cmd == "stats":
            return ops.stats(config, args.json, args.watch)
        if args.cmd == "logs":
            return ops.logs(config, args.n, args.follow, args.errors)
        if args.cmd == "cache":
            if args.cache_cmd is None:
                print("r1proxy: cache needs an action: ls, show, explain, purge, vacuum, train-dict, path, backup or "
                      "check (see --help)",
                      file=sys.stderr)
                return 2
            if args.cache_cmd == "purge" and not (args.model or args.older_than or args.all or args.key):
                print("r1proxy: purge needs --model, --older-than or --all (or --key KEY)", file=sys.stderr)
                return 2
            if args.cache_cmd == "purge" and args.key and (args.model or args.older_than or args.all):
                print("r1proxy: purge --key takes no other filter", file=sys.stderr)
                return 2
            if args.cache_cmd == "explain":
                return ops.explain(config, args.last, args.request_id, args.json)
            kw = {k: getattr(args, k) for k in ("model", "older_than", "all", "key", "dest", "samples", "full",
                                      "tier")
                  if hasattr(args, k)}
            if args.cache_cmd == "ls":
                kw["limit"] = args.n
            return ops.cache(config, args.cache_cmd, **kw)
    except ConfigError as e:
        _error(f"r1proxy: config error: {e}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the operator, never a traceback
        from .db import DatabaseUnavailable
        from .ops import OpsError

        if isinstance(e, (OpsError, DatabaseUnavailable, OSError)):
            _error(f"r1proxy: {e}")
            return 1
        text = " ".join(str(e).split())[:300]
        _error(f"r1proxy: {args.cmd} failed: {type(e).__name__}: {text}")
        return 1
    p.print_help()
    return 2


def _serve(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from .app import run
    from .logsetup import setup_logging

    server = config.server
    if args.host:
        server = replace(server, host=args.host)
    if args.port is not None:
        server = replace(server, port=args.port)
    config = replace(config, server=server)
    setup_logging(config.server.log_format)
    if config.server.workers > 1:
        from .workers import serve_workers

        return serve_workers(config, args.config)
    try:
        run(config, args.config)
    except OSError as e:
        _error(f"r1proxy: cannot listen on {config.server.host}:{config.server.port}: {e.strerror or e}")
        return 1
    except SystemExit as e:  # serve's one-line refusals (state dir locked, database unusable)
        if not isinstance(e.code, str):
            raise
        _error(e.code)
        return 1
    return 0


def _error(line: str) -> None:
    """One operator error line on stderr; at priority err when stderr is the journal (logsetup)."""
    from .logsetup import journal_prefix, on_journal

    print((journal_prefix(logging.ERROR) if on_journal(sys.stderr) else "") + line, file=sys.stderr)


def _import_litellm(args: argparse.Namespace) -> int:
    """0: converted; 3: converted, but the YAML held literal secrets (not copied; see the report); 2: not."""
    from pathlib import Path

    from .litellm_import import ImportError_, convert, load_yaml, report

    try:
        res = convert(load_yaml(Path(args.yaml).read_text(encoding="utf-8")))
    except ImportError_ as e:
        print(f"r1proxy: {args.yaml}: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:  # the converted config would not load: a bug here, said plainly
        print(f"r1proxy: {args.yaml}: the converted config does not load ({e})", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(res.toml)
    else:
        dest = Path(args.output)
        if dest.exists() and not args.force:
            print(f"r1proxy: {dest} already exists (use --force to overwrite, or -o PATH)", file=sys.stderr)
            return 2
        dest.write_text(res.toml, encoding="utf-8")
    print(report(res, args.output if args.output != "-" else "(stdout)"), file=sys.stderr)
    return 3 if res.secrets else 0


def _keys(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    from .auth import new_key

    if args.keys_cmd != "new":
        print("r1proxy: keys needs an action: new NAME (see --help)", file=sys.stderr)
        return 2
    name = args.name
    if not name or any(c in name for c in "\"\\\n"):
        print("r1proxy: a key name must be non-empty and must not contain quotes, backslashes or newlines",
              file=sys.stderr)
        return 2
    key, digest = new_key()
    print(f"# your new key for {name!r} (shown once; give it to Roo Code as the API key):")
    print(f"#   {key}")
    print("# add this to config.toml:")
    print(f'[[keys]]\nname = "{name}"\nkey_sha256 = "{digest}"')
    return 0
