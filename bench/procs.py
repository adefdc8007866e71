"""Subprocess plumbing for the benchmarks: free ports, servers in their own process groups, probes.

``Servers`` starts each server (proxy, ceiling, fake upstream) with ``start_new_session=True``
and its output in a log file, waits until it answers HTTP, and kills every group it started on
``stop_all()`` (SIGTERM, then SIGKILL after a grace period). Use it as a context manager so the
servers die even when a measurement fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BenchError(RuntimeError):
    """A measurement that cannot be made; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of a live process in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return ""


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0,
            headers: dict[str, str] | None = None) -> Response:
    """One blocking HTTP/1.1 request to 127.0.0.1:port (a new connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Authorization": "Bearer bench"}
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, dict(r.getheaders()), data)
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float  # time.perf_counter() just before Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Servers:
    """Every server the benchmark started; ``stop_all`` kills their process groups."""

    workdir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    running: list[Server] = field(default_factory=list)

    def start(self, name: str, argv: list[str], port: int, health_path: str, timeout: float = 30.0,
              method: str = "GET") -> Server:
        log = self.workdir / f"{name}.log"
        started = time.perf_counter()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)
        server = Server(name, port, proc, log, started)
        self.running.append(server)
        wait_healthy(server, health_path, timeout, method)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        if server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGTERM)
            try:
                server.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(5)
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(reversed(self.running)):
            try:
                self.stop(server)
            except Exception as e:  # keep killing the others
                print(f"warning: could not stop {server.name} (pid {server.pid}): {e}")

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_healthy(server: Server, path: str, timeout: float, method: str = "GET") -> float:
    """Poll until ``path`` answers (any HTTP status < 500); returns seconds since the Popen."""
    deadline = time.perf_counter() + timeout
    while True:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with code {server.proc.returncode} while starting:\n"
                             f"{server.log_tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1.0)
            try:
                conn.request(method, path, body=b"{}" if method == "POST" else None)
                r = conn.getresponse()
                r.read()
                if r.status < 500:
                    return time.perf_counter() - server.started
            finally:
                conn.close()
        except OSError:
            pass
        if time.perf_counter() > deadline:
            raise BenchError(f"{server.name} did not answer {path} within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.005)
