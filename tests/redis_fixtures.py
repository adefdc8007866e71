"""A real ``redis-server`` for the shared-tier tests (Debian's package; ``.ci/run`` installs it).

``redis_server`` (session): one server on a free loopback port, no persistence, in a temp dir.
``own_redis`` (function): a private server a test may SIGSTOP or kill. Both skip, with a message
saying what to install, only when there is no ``redis-server`` binary (CI always has one).
``redis_prefix``: a fresh key prefix per test, so tests sharing the session server never meet.
Use from conftest.py with ``from tests.redis_fixtures import *``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realparts import missing

__all__ = ["own_redis", "redis_prefix", "redis_server"]

BINARY = shutil.which("redis-server") or shutil.which("valkey-server")
SKIP = "no redis-server binary (apt-get install redis-server; .ci/run installs it)"


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop_signal(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont_signal(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(extra: tuple[str, ...] = ()) -> RedisServer:
    """Start a redis-server on a free port (a few tries: another process may take the port first)."""
    if BINARY is None:
        missing(SKIP)
    last = ""
    for _ in range(5):
        port = _free_port()
        d = Path(tempfile.mkdtemp(prefix="r1proxy-redis-"))
        with open(d / "out.log", "wb") as out:
            proc = subprocess.Popen(
                [BINARY, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(d), "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
                 *extra], stdout=out, stderr=subprocess.STDOUT)
        for _ in range(500):  # up to ~10 s on a loaded machine
            if proc.poll() is not None:
                break
            if _answers_ping(port):
                return RedisServer(proc, port, d)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        last = (d / "out.log").read_text(errors="replace")[-500:]
        shutil.rmtree(d, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start: {last}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.shutdown()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.shutdown()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis_prefix() -> str:
    return f"r1t:{uuid.uuid4().hex[:12]}:"
