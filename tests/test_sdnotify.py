"""sd_notify against real AF_UNIX datagram sockets (filesystem path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r1proxy import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_noop_without_socket() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.ready({"NOTIFY_SOCKET": ""}) is False


def test_ready_stopping_status(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert sdnotify.ready(env) is True
    assert recv(sock).split("\n")[0] == "READY=1"
    assert sdnotify.stopping(env) is True
    assert recv(sock).split("\n")[0] == "STOPPING=1"
    assert sdnotify.status("cache: 3 entries\nINJECTED=1", env) is True
    assert recv(sock) == "STATUS=cache: 3 entries INJECTED=1"


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(env) is True
    fields = dict(line.split("=", 1) for line in recv(sock).split("\n"))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert sdnotify.reloading(env, monotonic_usec=42)
    assert "MONOTONIC_USEC=42" in recv(sock)


@pytest.mark.skipif(sys.platform != "linux", reason="abstract unix sockets are Linux-only")
def test_abstract_namespace() -> None:
    name = f"r1proxy-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    with sock:
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert recv(sock) == "READY=1"


def test_unreachable_socket_returns_false(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing.sock")}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_defaults_to_os_environ(listener: tuple[socket.socket, dict[str, str]],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.ready() is True
    assert recv(sock).startswith("READY=1")
