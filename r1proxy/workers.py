"""``server.workers = N``: a supervisor and N worker processes serving one port (SO_REUSEPORT).

The supervisor does what must happen once: migrations (it opens and closes the database before
forking), the integrity mark and, after an unclean stop, the background check (in a child
process; a failure sends the workers SIGUSR1, which turns their disk tier off), today's key
usage into the shared limits (proclimits.py). Then it forks the workers and owns the service's
face towards systemd: READY once every worker listens, WATCHDOG pings, SIGTERM/SIGINT forwarded
(STOPPING, then it waits for the workers' drains), SIGHUP re-read and, when valid, forwarded
(RELOADING … READY; each worker reloads its keys and limits). A worker that dies is started
again (at most 5 times a minute, then the supervisor stops everything and exits 1), with the keys
and limits of the last reload; a signal reaching a worker before its event loop serves is kept and
acted on once it does (a stop then is a clean stop).

Shared by the workers: the SQLite tier (one file, WAL) and the key limits. Per worker: the
memory tier, in-flight coalescing (without the Redis tier), metrics (/stats and /metrics show
the worker that answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sqlite3
import time
from collections import deque
from multiprocessing.process import BaseProcess
from pathlib import Path

from . import integrity, sdnotify, statelock
from .config import Config, ConfigError, load_config
from .db import Database
from .proclimits import ProcessLimits, WorkerRole
from .rules import utc_day

log = logging.getLogger("r1proxy")

_FORK = multiprocessing.get_context("fork")
RESTARTS_PER_MINUTE = 5
_SD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _worker_main(config: Config, config_path: str | None, role: WorkerRole) -> None:
    for var in _SD_VARS:  # only the supervisor speaks to systemd
        os.environ.pop(var, None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # until the event loop takes them over
        signal.signal(sig, lambda signum, frame: role.early_signals.add(signum))
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    from .app import run

    run(config, config_path, worker=role)


def _check_main(path: str) -> None:
    ok = asyncio.run(integrity.check_in_background(Path(path), lambda why: None))
    os._exit(0 if ok else 1)


async def _prepare(config: Config, failed: bool) -> None:
    db = await Database.open(config.db_path, quick_check=failed)  # migrations run here, once
    await db.close()


def _today_usage(config: Config) -> list[tuple[str, float, float, float]]:
    day = utc_day(time.time())
    try:
        with contextlib.closing(sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute("SELECT key_name, requests, tokens, usd FROM key_usage WHERE day = ?", (day,))
            return [(str(k), float(r or 0), float(t or 0), float(u or 0)) for k, r, t, u in rows]
    except sqlite3.Error as e:
        log.warning("could not read today's key usage for the shared limits: %s", e)
        return []


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.n = config.server.workers
        self.shared = ProcessLimits()
        self.reloaded = False  # a SIGHUP was applied: workers started from now on read the file again
        self.workers: dict[int, BaseProcess] = {}
        self.ready: set[int] = set()
        self.restarts: deque[float] = deque()
        self.flags: set[str] = set()
        self.checker: BaseProcess | None = None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)

    def start_worker(self, i: int) -> None:
        self.shared.clear_worker(i)
        role = WorkerRole(i, self.shared, self.write_fd, reload_at_start=self.reloaded)
        p = _FORK.Process(target=_worker_main, args=(self.config, self.config_path, role), name=f"r1proxy-worker-{i}")
        p.start()
        self.workers[i] = p

    def signal_all(self, sig: int) -> None:
        for p in self.workers.values():
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    def run(self) -> int:
        try:  # one server per state directory: the supervisor holds the lock for its workers
            state_lock = statelock.acquire(self.config.state_path)
        except statelock.StateLocked as e:
            raise SystemExit(f"r1proxy: {e}") from None
        except OSError as e:
            raise SystemExit(f"r1proxy: cannot lock the state directory {self.config.state_path}: "
                             f"{e.strerror}") from None
        try:
            return self._run()
        finally:
            state_lock.release()

    def _run(self) -> int:
        path = self.config.db_path
        failed = integrity.failed_before(path)
        asyncio.run(_prepare(self.config, failed))
        if failed:
            integrity.clear_failed(path)
        unclean = integrity.mark_open(path)
        self.shared.seed_usage(utc_day(time.time()), _today_usage(self.config))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        for i in range(self.n):
            self.start_worker(i)
        if unclean and not failed:
            self.checker = _FORK.Process(target=_check_main, args=(str(path),), name="r1proxy-check")
            self.checker.start()
        code = self._loop()
        if code == 0:
            integrity.mark_closed(path)
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        self.flags.add("reload" if signum == signal.SIGHUP else "stop")

    def _loop(self) -> int:
        watchdog = sdnotify.watchdog_interval()
        next_ping = time.monotonic()
        announced = False
        while True:
            self._read_ready()
            if not announced and len(self.ready) >= self.n:
                announced = True
                log.info("r1proxy listening on http://%s:%s with %d workers (config: %s, database: %s)",
                         self.config.server.host, self.config.server.port, self.n, self.config.source,
                         self.config.db_path)
                sdnotify.ready()
            if "stop" in self.flags:
                return self._stop()
            if "reload" in self.flags:
                self.flags.discard("reload")
                self._reload()
            self._reap_checker()
            if (code := self._reap_workers()) is not None:
                return code
            if watchdog is not None and time.monotonic() >= next_ping:
                sdnotify.watchdog(f"serving with {self.n} workers")
                next_ping = time.monotonic() + watchdog
            time.sleep(0.05)

    def _read_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self.read_fd, 1024)
            for b in data:
                self.ready.add(b)

    def _reload(self) -> None:
        sdnotify.reloading()
        try:
            load_config(self.config_path)  # validate here: a bad file must not reach the workers
        except ConfigError as e:
            log.warning("reload failed, keeping the running config: %s", e)
            sdnotify.status(f"degraded: reload rejected, running the previous config ({e})")
        else:
            self.reloaded = True
            self.signal_all(signal.SIGHUP)
        sdnotify.ready()

    def _reap_checker(self) -> None:
        if self.checker is not None and self.checker.exitcode is not None:
            if self.checker.exitcode != 0:
                self.signal_all(signal.SIGUSR1)  # the workers turn their disk tier off
            self.checker = None

    def _reap_workers(self) -> int | None:
        for i, p in list(self.workers.items()):
            if p.exitcode is None:
                continue
            log.error("worker %d (pid %s) exited with code %s; starting it again", i, p.pid, p.exitcode)
            self.ready.discard(i)
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - 60:
                self.restarts.popleft()
            if len(self.restarts) > RESTARTS_PER_MINUTE:
                log.error("workers keep dying (%d restarts in a minute): stopping", len(self.restarts))
                self._stop()
                return 1
            self.start_worker(i)
        return None

    def _stop(self) -> int:
        sdnotify.stopping()
        log.info("shutting down %d workers (each finishes its in-flight requests, up to %gs)", self.n,
                 self.config.server.shutdown_timeout)
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + 10
        for p in self.workers.values():
            p.join(max(0.1, deadline - time.monotonic()))
        clean = True
        for i, p in self.workers.items():
            if p.exitcode is None:
                log.error("worker %d (pid %s) did not stop in time: killing it", i, p.pid)
                clean = False
                p.kill()
                p.join(5)
            elif p.exitcode not in (0, -signal.SIGTERM):
                # -SIGTERM: the signal's default action, so the worker was not serving (before its
                # loop took signals over, or after its drain): nothing in flight was cut
                log.error("worker %d (pid %s) exited with code %s while stopping", i, p.pid, p.exitcode)
                clean = False
        if self.checker is not None:
            self.checker.kill()
            self.checker.join(5)
        log.info("stopped")
        return 0 if clean else 1


def serve_workers(config: Config, config_path: str | None = None) -> int:
    """Run N workers until SIGTERM/SIGINT; the exit code is 0 when every worker stopped cleanly."""
    return Supervisor(config, config_path).run()
