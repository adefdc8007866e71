"""Command line: ``r1proxy serve | check-config | keys new``; errors are one line and an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1proxy", description="Local caching gateway for Roo Code → OpenRouter (R1).")
    p.add_argument("--config", metavar="PATH", help="config file (default: search $R1PROXY_CONFIG, ./config.toml, "
                                                    "~/.config/r1proxy/config.toml, /etc/r1proxy/config.toml)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--host", help="override server.host")
    s.add_argument("--port", type=int, help="override server.port")
    sub.add_parser("check-config", help="print the resolved config with secrets redacted")
    k = sub.add_parser("keys", help="local API keys")
    ksub = k.add_subparsers(dest="keys_cmd", metavar="ACTION")
    kn = ksub.add_parser("new", help="make a new key: prints it once, and the TOML holding its sha256")
    kn.add_argument("name")
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
        config = load_config(args.config)
        if args.cmd == "check-config":
            print(json.dumps(config.redacted(), indent=2, default=str))
            return 0
        if args.cmd == "serve":
            return _serve(args, config)
    except ConfigError as e:
        print(f"r1proxy: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
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
    try:
        run(config, args.config)
    except OSError as e:
        print(f"r1proxy: cannot listen on {config.server.host}:{config.server.port}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    return 0


def _keys(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    from .auth import new_key

    if args.keys_cmd != "new":
        p.parse_args(["keys", "--help"])
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
