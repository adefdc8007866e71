"""The "ceiling": a bare aiohttp + uvloop server that reads the request body and returns fixed bytes.

``python -m bench.ceiling --port P --route /json=FILE:application/json --route /sse=FILE:text/event-stream``

Each ``--route PATH=FILE:CONTENT_TYPE`` answers POST PATH with the bytes of FILE (captured from a
real r1proxy cache hit) and that content type. Nothing else happens per request: this is the
fastest an aiohttp server on this machine can serve the same bytes, the reference every hit
figure is divided by. Bodies up to 256 MB are accepted. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from aiohttp import web


def _handler(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    headers = {"Content-Type": content_type}  # verbatim, charset included

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)
    return handle


def make_app(routes: list[tuple[str, bytes, str]]) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    for path, body, ctype in routes:
        app.router.add_post(path, _handler(body, ctype))
    return app


def parse_route(spec: str) -> tuple[str, bytes, str]:
    path, _, rest = spec.partition("=")
    file, _, ctype = rest.rpartition(":")
    if not path.startswith("/") or not file or not ctype:
        raise argparse.ArgumentTypeError(f"expected PATH=FILE:CONTENT_TYPE, got {spec!r}")
    return path, Path(file).read_bytes(), ctype


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--route", type=parse_route, action="append", required=True,
                   help="PATH=FILE:CONTENT_TYPE (repeatable)")
    a = p.parse_args()
    uvloop.install()
    web.run_app(make_app(a.route), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
