"""Operator commands behind the CLI: stats (live or from the database), cache admin, logs.

Each function takes the resolved Config and returns an exit code; output goes to stdout,
one-line errors to stderr. The database is opened the same way the server opens it, so
migrations and the schema stay in their one place.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import integrity
from .cache import notices
from .cache.purge import PurgeFilter
from .cache.sqlite import SqliteTier
from .config import Config, parse_duration
from .costing import Costing
from .db import Database
from .reqlog import RequestLog

# said after a purge of this state dir: the servers on it apply the notice (cache/notices.py)
_RUNNING = f" (running servers on this state dir drop their memory copies within {notices.POLL_S:g} s)"


class OpsError(Exception):
    """A one-line error for the CLI."""


async def _open(config: Config) -> Database:
    if not config.db_path.exists():
        raise OpsError(f"no database at {config.db_path} yet (start `r1proxy serve` once, or check state_dir)")
    return await Database.open(config.db_path, check=False)


async def live_stats(config: Config, timeout: float = 0.5) -> dict[str, Any] | None:
    """The running server's /stats, or None when it is not up."""
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
    headers = {"Authorization": f"Bearer {config.server.metrics_key}"} if config.server.metrics_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(f"http://{host}:{config.server.port}/stats", headers=headers) as r:
            if r.status == 200:
                return await r.json()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return None


async def gather_stats(config: Config) -> dict[str, Any]:
    db = await _open(config)
    try:
        summary = await RequestLog(db).summary()
        disk = await SqliteTier(db).stats()
        costing = Costing(config, None, db)  # the free quota as the database knows it (server down)
        await costing.start()
        free = costing.free_quota()
    finally:
        await db.close()
    out: dict[str, Any] = {"database": str(config.db_path), **summary,
                           "disk": {"entries": disk.entries, "stored_bytes": disk.bytes, "raw_bytes": disk.raw_bytes},
                           "server": "down", "free_quota": free}
    live = await live_stats(config)
    if live is not None:
        out["server"] = "up"
        out["live"] = live
        out["free_quota"] = live.get("free_quota", free)
        out["memory"] = {"entries": live.get("l1_cache_size", 0), "bytes": live.get("l1_cache_bytes", 0)}
    return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_stats(s: dict[str, Any]) -> str:
    o, t, d = s["overall"], s["today"], s["disk"]
    lines = [
        f"r1proxy stats — {s['database']} (server {s['server']})",
        f"  requests      today {t['requests']:>8}   all time {o['requests']:>8}",
        f"  hit rate      today {t['hit_rate']:>8.1%}   all time {o['hit_rate']:>8.1%}",
        f"  tokens saved  today {t['tokens_saved']:>8}   all time {o['tokens_saved']:>8}",
        f"  $ spent       today {t['usd_spent']:>8.6f}   all time {o['usd_spent']:>8.6f}",
        f"  $ saved       today {t['usd_saved']:>8.6f}   all time {o['usd_saved']:>8.6f}   (local cache)",
        f"  $ saved       today {t.get('usd_prefix_saved', 0):>8.6f}   all time {o.get('usd_prefix_saved', 0):>8.6f}"
        "   (upstream prompt cache)",
        f"  upstream errs today {t['upstream_errors']:>8}   all time {o['upstream_errors']:>8}",
        f"  disk cache    {d['entries']} entries, {_human(d['stored_bytes'])} stored "
        f"({_human(d['raw_bytes'])} raw)",
    ]
    if "memory" in s:
        m = s["memory"]
        live = s.get("live", {})
        lines.append(f"  memory cache  {m['entries']} entries, {_human(m['bytes'])}")
        lines.append(f"  live          {live.get('in_flight', 0)} in flight, up {live.get('uptime_s', 0):.0f}s, "
                     f"session hit rate {live.get('overall_hit_rate', 0):.1%}")
        redis = live.get("tier_reports", {}).get("redis")
        if redis is not None:
            tiers = live.get("cache_tiers", {}).get("redis", {})
            lines.append(f"  redis tier    {redis['state']}, {tiers.get('entries', 0)} entries, "
                         f"{_human(tiers.get('bytes', 0))}; hits {redis['hits']}, misses {redis['misses']}, "
                         f"errors {redis['errors']}, dropped writes {redis['dropped_writes']}")
        for d in live.get("degraded", []):
            lines.append(f"  degraded: {d}")
    for up, q in sorted((s.get("free_quota") or {}).items()):
        lines.append(f"  free quota    {up}: free requests left today: {q['left_today']} of {q['limit_today']} "
                     f"(resets {q['resets']})")
    if s["top_models"]:
        lines.append("  top models    " + ", ".join(f"{m['model']} ({m['requests']})" for m in s["top_models"]))
    return "\n".join(lines)


def stats(config: Config, as_json: bool, watch: float | None) -> int:
    while True:
        s = asyncio.run(gather_stats(config))
        text = json.dumps(s, indent=2) if as_json else format_stats(s)
        if watch is None:
            print(text)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + text + f"\n\n(refreshing every {watch:g}s; Ctrl-C to quit)\n")
        sys.stdout.flush()
        time.sleep(watch)


async def _cache(config: Config, action: str, **kw: Any) -> int:
    db = await _open(config)
    try:
        tier = SqliteTier(db)
        if action == "ls":
            rows = await tier.list_entries(limit=kw.get("limit", 50), model=kw.get("model"))
            for r in rows:
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("created_at") or 0))
                print(f"{r['key']}  {created}  hits={r.get('hits') or 0:<4} {r.get('model') or '':<28} "
                      f"{(r.get('preview_answer') or '')[:60]!r}")
            if not rows:
                print("(cache is empty)")
        elif action == "show":
            entry = await tier.get_full(kw["key"])
            if entry is None:
                raise OpsError(f"no cache entry {kw['key']}")
            try:
                request = json.loads(entry.request) if entry.request else None
            except ValueError:
                request = entry.request.decode("utf-8", "replace")
            print(json.dumps({"key": entry.key, "model": entry.model, "created_at": entry.created_at,
                              "expires_at": entry.expires_at, "hits": entry.hits, "request": request,
                              "completion": entry.completion}, indent=2, ensure_ascii=False))
        elif action == "purge" and kw.get("key"):
            # the entry and (by trigger) its semantic vector: a wrong semantic source never matches again
            f = PurgeFilter(key=kw["key"], shared=config.cache.redis.enabled)
            found = await tier.delete(kw["key"])
            if config.cache.redis.enabled:
                found = await _purge_shared(config, f) > 0 or found
            if not found:
                raise OpsError(f"no cache entry {kw['key']}")
            await notices.post(db, f, time.time())
            print(f"purged {kw['key']}" + _RUNNING)
        elif action == "purge":
            older = kw.get("older_than")
            older_s = parse_duration(older) if older else None
            where = kw.get("tier") or "sqlite"
            if where != "sqlite" and not config.cache.redis.enabled:
                raise OpsError("there is no shared tier to purge: cache.redis.url is not set")
            now = time.time()
            f = PurgeFilter(model=kw.get("model"), before=None if older_s is None else now - older_s,
                            all=bool(kw.get("all")), shared=where != "sqlite")
            if where in ("sqlite", "all"):
                try:
                    n = await tier.purge(model=f.model, older_than_s=older_s, all=f.all, now=now)
                except ValueError as e:
                    raise OpsError(str(e)) from None
                await notices.post(db, f, now)
                print(f"purged {n} entr{'y' if n == 1 else 'ies'} from {config.db_path}" + _RUNNING)
            if config.cache.redis.enabled:
                await _purge_shared(config, f)
        elif action == "train-dict":
            await _train_dict(db, kw.get("samples", 2000))
        elif action == "vacuum":
            await db.flush()
            before = config.db_path.stat().st_size
            await db.execute("VACUUM")
            print(f"vacuumed {config.db_path}: {_human(before)} → {_human(config.db_path.stat().st_size)}")
        elif action == "backup":
            dest = Path(kw["dest"]).expanduser()
            if dest.exists():
                raise OpsError(f"{dest} already exists; choose a new file")
            if not dest.parent.is_dir():
                raise OpsError(f"cannot back up to {dest}: directory {dest.parent} does not exist")
            await db.execute("VACUUM INTO ?", (str(dest),))
            print(f"backed up {config.db_path} to {dest}")
        return 0
    finally:
        await db.close()


async def _purge_shared(config: Config, f: PurgeFilter) -> int:
    """``f.shared``: purge the Redis tier and have every process purge its own SQLite too; always: every
    running r1proxy on this Redis drops its memory copies (a pub/sub broadcast). Returns the Redis count."""
    from .cache.purge import broadcast, purge_redis
    from .cache.redistier import connect

    rcfg = config.cache.redis
    client = connect(rcfg, max_connections=4, socket_timeout=max(5.0, rcfg.timeout))
    n = 0
    try:
        if f.shared:
            n = await purge_redis(client, rcfg.prefix, f)
            print(f"purged {n} entr{'y' if n == 1 else 'ies'} from the shared Redis tier")
        told = await broadcast(client, rcfg.prefix, f)
        print(f"told {told} running r1proxy process{'' if told == 1 else 'es'} to drop their copies"
              + (" (memory and SQLite)" if f.shared else " (memory)"))
    except Exception as e:
        raise OpsError(f"cannot reach Redis for the purge: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        await client.aclose()
    return n


async def _train_dict(db: Database, samples: int) -> None:
    from .cache.zdict import Compression, measure, recent_raw, train

    comp = Compression(db=db)
    await comp.load()
    try:
        dict_id, n = await train(db, comp, samples=samples)
    except ValueError as e:
        raise OpsError(str(e)) from None
    print(f"trained zstd dictionary {dict_id} from {n} entries; restart the server to write with it "
          "(entries compressed before stay readable)")
    for name, m in measure(comp, dict_id, *await recent_raw(db, comp, samples)).items():
        if m["n"]:
            print(f"  {name:<9} {m['n']} sampled: {_human(m['raw'])} raw → {_human(m['plain'])} plain zstd "
                  f"({m['raw'] / max(1, m['plain']):.1f}×) → {_human(m['dict'])} with the dictionary "
                  f"({m['raw'] / max(1, m['dict']):.1f}×; measured on the entries it learnt from)")


def explain(config: Config, last: bool, request_id: str | None, as_json: bool) -> int:
    """``r1proxy cache explain``: why a request missed (ops_explain.py)."""
    from .ops_explain import ExplainError, run

    async def go() -> int:
        db = await _open(config)
        try:
            return await run(config, db, last=last, request_id=request_id, as_json=as_json)
        except ExplainError as e:
            raise OpsError(str(e)) from None
        finally:
            await db.close()

    return asyncio.run(go())


def cache(config: Config, action: str, **kw: Any) -> int:
    if action == "path":
        print(config.db_path)
        return 0
    if action == "check":
        return check(config, kw.get("full", False))
    return asyncio.run(_cache(config, action, **kw))


def check(config: Config, full: bool) -> int:
    """Exit 0 when the database file is sound, 1 with what is wrong otherwise."""
    if not config.db_path.exists():
        raise OpsError(f"no database at {config.db_path} yet")
    t0 = time.monotonic()
    found = integrity.problems(config.db_path, full=full)
    what = "integrity_check" if full else "quick_check"
    if found:
        print(f"{config.db_path}: {what} FAILED:", *found[:20], sep="\n  ")
        print("stop the server and move the file aside (or restore a backup); a server finding this in its "
              "background check moves it aside at its next start")
        return 1
    print(f"{config.db_path}: {what} ok ({time.monotonic() - t0:.1f} s)")
    return 0


_LOG_COLUMNS = ("id", "ts", "key_name", "alias", "cache", "tier", "status", "error_type", "latency_ms", "ttfb_ms",
                "prompt_tokens", "completion_tokens", "cost", "cost_saved", "route")


def _log_line(d: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["ts"] or 0))
    return (f"{when} {d['status']} {d['cache'] or '':<9} {d['tier'] or '':<6} {d['alias'] or '':<18} "
            f"{d['latency_ms'] or 0:>9.1f}ms tok={d['prompt_tokens'] or 0}/{d['completion_tokens'] or 0}"
            f" key={d['key_name'] or ''}" + (f" err={d['error_type']}" if d["error_type"] else "")
            + (f" route={d['route']}" if d["route"] else ""))


def logs(config: Config, n: int, follow: bool, errors: bool) -> int:
    """The last n request-log rows (no prompts are logged); --follow polls for new ones."""
    if not config.db_path.exists():
        raise OpsError(f"no database at {config.db_path} yet")
    conn = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True, timeout=5)
    cond = "(status >= 400 OR COALESCE(error_type, '') != '')" if errors else "1"
    cols = ", ".join(_LOG_COLUMNS)
    try:
        rows = conn.execute(f"SELECT {cols} FROM requests WHERE {cond} ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]
        for r in reversed(rows):
            print(_log_line(dict(zip(_LOG_COLUMNS, r, strict=True))))
        while follow:
            sys.stdout.flush()
            time.sleep(1.0)
            for r in conn.execute(f"SELECT {cols} FROM requests WHERE id > ? AND {cond} ORDER BY id",
                                  (last,)).fetchall():
                d = dict(zip(_LOG_COLUMNS, r, strict=True))
                last = max(last, d["id"])
                print(_log_line(d))
        return 0
    except sqlite3.Error as e:
        raise OpsError(f"cannot read {config.db_path}: {e}") from None
    finally:
        conn.close()
