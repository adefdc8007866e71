"""Dependency-free sd_notify(3): tell systemd (Type=notify) when r1proxy is ready, reloading or stopping.

Owns only the datagram protocol on ``$NOTIFY_SOCKET``. Every call is a no-op returning False
when the variable is unset (not under systemd, or in tests), and never raises: a lost
notification must not take the proxy down. The environment is passed in, not read globally.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(path: str) -> str | bytes | None:
    if path.startswith("@"):
        # Abstract namespace: the leading '@' stands for the NUL byte the kernel expects.
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None  # vsock: and relative paths are not ours to handle


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines); True if a datagram went out, never raises."""
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    addr = _address(path)
    if addr is None:
        log.debug("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", path)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", path, e)
        return False
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """READY=1: startup finished (listening socket bound); systemd's start job completes."""
    return notify("READY=1\nSTATUS=serving", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: graceful shutdown began (the drain runs until TimeoutStopSec)."""
    return notify("STOPPING=1\nSTATUS=draining", env)


def reloading(env: Mapping[str, str] | None = None, *, monotonic_usec: int | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC (required by Type=notify-reload, systemd ≥253); send ready() after."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 if monotonic_usec is None else monotonic_usec
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading", env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WatchdogSec=``), or None when systemd set no watchdog.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited the variables does not ping."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


def watchdog(text: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """WATCHDOG=1 (the loop is alive), with a STATUS= line when ``text`` is given."""
    if text is None:
        return notify("WATCHDOG=1", env)
    return notify("WATCHDOG=1\nSTATUS=" + " ".join(text.splitlines()), env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """STATUS=<text>, shown by ``systemctl status``; newlines are flattened so they cannot inject fields."""
    return notify("STATUS=" + " ".join(text.splitlines()), env)
