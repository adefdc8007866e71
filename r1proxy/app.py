"""Wiring and lifecycle: ``create_app(config)`` builds the application; ``serve(config)`` runs it.

Registers routes, each behind the browser guard and the error reply (edge.py), and one
``cleanup_ctx`` per resource in dependency order (HTTP session → database and cache →
gateway), so teardown runs in reverse: in-flight streams finish (bounded by
``server.shutdown_timeout``), flights end, the cache writer is flushed and the WAL
checkpointed. ``serve`` adds sd_notify readiness, the watchdog and status text (heartbeat.py),
SIGTERM/SIGINT drain under one deadline (shutdown.py) and SIGHUP reload of keys and limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import edge, guard, integrity, redact, sdnotify, semantic, shutdown, statelock
from .appkeys import CLOCK_KEY, CONFIG_KEY, GATEWAY_KEY, HTTP_SESSION_KEY, STORE_KEY
from .cache import CacheTier, MemoryTier, NullCache, TieredCache
from .cache.keys import KeyMaker
from .cache.notices import NoticeWatcher
from .cache.sqlite import SqliteTier
from .cache.zdict import Compression
from .clock import Clock
from .config import Config, ConfigError, load_config
from .db import Database, DatabaseUnavailable
from .errors import quiet_client_mistakes
from .gateway import Gateway
from .handlers import setup_routes
from .heartbeat import Heartbeat
from .proclimits import ProcessKeyLimiter, WorkerRole
from .reqlog import RequestLog
from .store import Store
from .ui import setup_ui

log = logging.getLogger("r1proxy")


WORKER_KEY = web.AppKey("r1proxy_worker", object)  # a WorkerRole when server.workers > 1, else None


def create_app(config: Config, clock: Clock | None = None, worker: WorkerRole | None = None) -> web.Application:
    redact.register(config.secrets())  # before anything can relay or log one
    quiet_client_mistakes()
    app = web.Application(client_max_size=config.server.max_request_bytes,
                          handler_args={"max_field_size": 65536})  # no middleware: see edge.py
    app[CONFIG_KEY] = config
    app[CLOCK_KEY] = clock or Clock()
    app[WORKER_KEY] = worker
    edge.setup(app, guard.Guard(config.server))
    setup_routes(app)
    setup_ui(app)
    edge.finish(app)  # the catch-all for unknown paths, and every route behind the guard
    app.cleanup_ctx.append(http_session_ctx)
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(gateway_ctx)
    return app


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession for the app's lifetime (aiohttp's advice), closed on cleanup.

    ``trust_env`` only when a proxy variable is set: it makes aiohttp read ~/.netrc in a thread
    on every request, which costs a miss about a millisecond for nothing."""
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300,
                                     enable_cleanup_closed=True)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                    trust_env=app[CONFIG_KEY].use_env_proxy,
                                    timeout=aiohttp.ClientTimeout(total=None),
                                    headers={"User-Agent": "r1proxy"}, raise_for_status=False)
    app[HTTP_SESSION_KEY] = session
    yield
    await session.close()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    path = config.db_path
    worker = app[WORKER_KEY]  # with workers the supervisor migrates and checks, once
    failed = worker is None and integrity.failed_before(path)  # the full check runs on the start path only then
    db = await Database.open(path, quick_check=failed)
    if failed:
        integrity.clear_failed(path)
    unclean = worker is None and integrity.mark_open(path)
    if db.recovered_from is not None:
        log.warning("the database was unreadable and was moved aside to %s; starting with an empty cache",
                    db.recovered_from)
    cache: TieredCache = NullCache()
    disk: SqliteTier | None = None
    team = None
    notices = None
    if config.cache.enabled:
        memory = MemoryTier(int(config.cache.memory_mb * 1024 * 1024)) if config.cache.memory_mb else None
        compression = Compression(db=db)
        await compression.load()  # the newest trained dictionary set, if any (`r1proxy cache train-dict`)
        disk = SqliteTier(db, max_bytes=int(config.cache.max_disk_mb * 1024 * 1024),
                          stale_if_error=config.cache.stale_if_error, compression=compression)
        disk.start()
        tiers: list[CacheTier] = [disk]
        if config.cache.redis.enabled:  # the shared tier, coalescing and limits across processes
            from .team import Team

            team = Team.open(config, compression, app[CLOCK_KEY].now)
            tiers.append(team.tier)
        cache = TieredCache(memory, tiers)
        if team is not None:
            team.listen(cache)
        notices = NoticeWatcher(db, cache, app[CLOCK_KEY].now)
        notices.start()
    app[STORE_KEY] = Store(db, cache, RequestLog(db), team.coalescer if team else None,
                           team.limits if team else None, notices)
    checking = None
    if unclean and not failed:
        off = disk.disable if disk is not None else (lambda why: None)
        checking = asyncio.get_running_loop().create_task(integrity.check_in_background(path, off))
    try:
        yield
    finally:
        if checking is not None:
            checking.cancel()
            await asyncio.gather(checking, return_exceptions=True)
        if notices is not None:
            await notices.close()
        if team is not None:
            await team.close()
        await cache.close()
        await db.close()
        if worker is None:
            integrity.mark_closed(path)


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    store = app[STORE_KEY]
    near = semantic.build(config, store.db, KeyMaker(config.cache.ignore_patterns, config.cache.namespace))
    worker = app[WORKER_KEY]
    limiter = (ProcessKeyLimiter(config.keys, worker.shared, worker.index)
               if isinstance(worker, WorkerRole) else None)
    gw = Gateway(config, app[HTTP_SESSION_KEY], cache=store.cache, reqlog=store.reqlog, clock=app[CLOCK_KEY],
                 shared=store.coalescer, shared_limits=store.limits, semantic=near, limiter=limiter)
    await gw.start()
    app[GATEWAY_KEY] = gw
    yield
    await gw.stop(shutdown.remaining(gw, config.server.shutdown_timeout))


def check_bind(config: Config) -> None:
    """Refuse an open gateway: no keys on a non-loopback bind is a config error, on loopback a warning."""
    if config.keys:
        return
    if not config.server.is_loopback:
        raise ConfigError(f"refusing to listen on {config.server.host} with no [[keys]] in "
                         f"{config.source}: anyone who can reach it could spend your OpenRouter credit. "
                         "Add a key (r1proxy keys new NAME) or bind to 127.0.0.1.")
    log.warning("no [[keys]] configured: accepting any bearer on loopback %s:%s",
                config.server.host, config.server.port)


async def serve(config: Config, config_path: str | None = None, worker: WorkerRole | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads keys and limits from the config file.

    As one of ``server.workers`` (``worker`` given): the supervisor holds the state directory's
    lock; bind with SO_REUSEPORT, report ready on the supervisor's pipe, and turn the disk tier off
    on SIGUSR1 (its integrity check failed)."""
    if worker is not None:
        await _serve_locked(config, config_path, worker)
        return
    try:  # first: a second server says one thing, that it is the second
        state_lock = statelock.acquire(config.state_path)
    except statelock.StateLocked as e:
        raise SystemExit(f"r1proxy: {e}") from None
    except OSError as e:
        raise SystemExit(f"r1proxy: cannot lock the state directory {config.state_path}: {e.strerror}") from None
    try:
        await _serve_locked(config, config_path)
    finally:
        state_lock.release()


async def _serve_locked(config: Config, config_path: str | None, worker: WorkerRole | None = None) -> None:
    check_bind(config)
    for up in config.upstreams.values():
        if not up.api_key and up.name == config.server.default_upstream:
            log.warning("upstream %s has no API key (set $%s or api_key_file); requests will fail upstream",
                        up.name, up.api_key_env or "…")
    app = create_app(config, worker=worker)
    # shutdown.drain() waits for in-flight requests itself, under the one deadline; aiohttp only
    # gets a short grace for the handlers it cancels once that deadline has passed.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown.CANCEL_GRACE_S)
    try:
        await runner.setup()
    except DatabaseUnavailable as e:
        raise SystemExit(f"r1proxy: {e}") from None
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_port=worker is not None or None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    gw = app[GATEWAY_KEY]
    store = app[STORE_KEY]
    beat = Heartbeat(gw.metrics.totals, lambda: gw.metrics.in_flight, lambda: store.db.write_errors,
                     degraded=store.cache.degraded)
    beat.extra = gw.costing.quota_text  # "free requests left today: N (resets 00:00 UTC)"

    def reload() -> None:
        sdnotify.reloading()
        try:
            new = load_config(config_path)
            redact.register(new.secrets())
            gw.reload(new)
            beat.reload_error = ""
        except ConfigError as e:
            log.warning("reload failed, keeping the running config: %s", e)
            beat.reload_error = str(e)
        sdnotify.ready()
        beat.beat()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    if worker is not None:
        for tier in store.cache.tiers:
            if isinstance(tier, SqliteTier):
                loop.add_signal_handler(signal.SIGUSR1, tier.disable, "quick_check failed, see the log")
        if worker.reload_at_start or signal.SIGHUP in worker.early_signals:
            reload()
        if worker.early_signals & {signal.SIGTERM, signal.SIGINT}:
            stop.set()  # asked to stop while starting: nothing is in flight, a clean stop
        os.write(worker.ready_fd, bytes([worker.index]))
    log.info("r1proxy listening on http://%s:%s (config: %s, database: %s)", config.server.host,
             config.server.port, config.source, config.db_path)
    sdnotify.ready()
    beat.start()
    try:
        await stop.wait()
    finally:
        sdnotify.stopping()
        beat.draining = True
        log.info("shutting down: finishing in-flight requests (up to %gs)", config.server.shutdown_timeout)
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the drain short
            loop.add_signal_handler(sig, log.info, "already shutting down")
        loop.remove_signal_handler(signal.SIGHUP)
        await shutdown.drain(runner, config.server.shutdown_timeout, beat.beat)
        await beat.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped")


def run(config: Config, config_path: str | None = None, worker: WorkerRole | None = None) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep serving without it
        asyncio.run(serve(config, config_path, worker))
        return
    uvloop.run(serve(config, config_path, worker))
