"""The dashboard's static files, shipped inside the package (``r1proxy/ui/static``).

Read once at import, served from memory with their gzip form, under a URL carrying a content
hash (``/ui/static/ui.js?v=<hash>``) so browsers may keep them for a year. Nothing is fetched
from anywhere else: the pages work offline.

Vendored: uPlot 1.6.32 from npm (``npm pack uplot``; ``dist/uPlot.iife.min.js``,
``dist/uPlot.min.css``), MIT licence in ``uPlot.LICENSE``. Our own files are ``ui.js``,
``ui.css`` and ``favicon.svg``.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".svg": "image/svg+xml", ".LICENSE": "text/plain; charset=utf-8"}
VENDORED = frozenset({"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"})


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    gz: bytes
    ctype: str
    digest: str


def _load() -> dict[str, Asset]:
    out: dict[str, Asset] = {}
    for item in resources.files("r1proxy.ui").joinpath("static").iterdir():
        name = item.name
        ext = next((e for e in TYPES if name.endswith(e)), None)
        if ext is None or not item.is_file():
            continue
        body = item.read_bytes()
        out[name] = Asset(name, body, gzip.compress(body, 9, mtime=0), TYPES[ext],
                          hashlib.sha256(body).hexdigest()[:12])
    return out


ASSETS = _load()


def asset_url(name: str) -> str:
    return f"/ui/static/{name}?v={ASSETS[name].digest}"


def own_gzip_bytes() -> int:
    """Gzipped size of the dashboard's own assets (the vendored chart library excluded)."""
    return sum(len(a.gz) for a in ASSETS.values() if a.name not in VENDORED)


async def static(request: web.Request) -> web.StreamResponse:
    asset = ASSETS.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    headers = {"Content-Type": asset.ctype, "Cache-Control": "public, max-age=31536000, immutable",
               "ETag": f'"{asset.digest}"', "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if request.headers.get("If-None-Match") == f'"{asset.digest}"':
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gz, headers=headers)
    return web.Response(body=asset.body, headers=headers)
