"""The shipped systemd units: ``systemd-analyze verify`` is clean and the system unit's exposure is ≤ 2.0.

``verify`` checks that ExecStart= exists, and the venv is not installed here, so each unit is
verified as a copy whose ExecStart= points at a stub. ``verify`` also exits 0 on unknown keys
and unparsable values (it only warns), so any diagnostic naming the unit fails the test too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = UNITS / "r1proxy.service"
USER_UNIT = UNITS / "r1proxy-user.service"
SYSTEM_EXEC = "/opt/r1proxy/.venv/bin/r1proxy"
USER_EXEC = "%h/.local/share/r1proxy/venv/bin/r1proxy"
MAX_EXPOSURE = 2.0
# A user manager cannot apply namespace or capability sandboxing, so this only guards regressions.
MAX_USER_EXPOSURE = 7.0

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None,
                                reason="systemd-analyze not installed (Debian package: systemd)")


def systemd_version() -> int:
    assert ANALYZE
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.match(r"systemd (\d+)", out)
    assert m, out
    return int(m.group(1))


def needs_offline_security() -> None:
    if systemd_version() < 250:  # --offline= and --threshold= arrived in systemd 250
        pytest.skip("systemd-analyze security --offline needs systemd ≥ 250")


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def stubbed_copy(unit: Path, exec_path: str, tmp_path: Path) -> Path:
    stub = tmp_path / "r1proxy-stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = unit.read_text()
    assert text.count(f"ExecStart={exec_path} ") == 1, f"{unit.name}: expected ExecStart={exec_path} serve"
    copy = tmp_path / unit.name
    copy.write_text(text.replace(f"ExecStart={exec_path} ", f"ExecStart={stub} "))
    return copy


def verify(unit: Path, tmp_path: Path, *, user: bool) -> tuple[int, list[str]]:
    env = {}
    args = ["verify", "--man=no", str(unit)]
    if user:
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)  # the user manager refuses to start without one
        args.insert(0, "--user")
    proc = analyze(*args, env=env)
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if unit.name in line or "r1proxy" in line]


@pytest.mark.parametrize(("unit", "exec_path", "user"), [
    (SYSTEM_UNIT, SYSTEM_EXEC, False),
    (USER_UNIT, USER_EXEC, True),
], ids=["system", "user"])
def test_verify_clean(unit: Path, exec_path: str, user: bool, tmp_path: Path) -> None:
    rc, problems = verify(stubbed_copy(unit, exec_path, tmp_path), tmp_path, user=user)
    assert rc == 0 and not problems, "\n".join(problems)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    copy = stubbed_copy(SYSTEM_UNIT, SYSTEM_EXEC, tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=sideways\nNoSuchKey=1"))
    _, problems = verify(copy, tmp_path, user=False)
    assert any("sideways" in p or "protect system" in p.lower() for p in problems), problems
    assert any("NoSuchKey" in p for p in problems), problems


def test_verify_reports_the_missing_binary(tmp_path: Path) -> None:
    """Unstubbed, the unit fails verify only for the absent venv: proof that verify reads ExecStart."""
    if Path(SYSTEM_EXEC).exists():
        pytest.skip(f"{SYSTEM_EXEC} is installed on this machine")
    rc, problems = verify(SYSTEM_UNIT, tmp_path, user=False)
    assert rc != 0
    assert any(SYSTEM_EXEC in p for p in problems), problems


def exposure(unit: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    proc = analyze(*extra, "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit),
                   env=env)
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out
    return proc.returncode, float(m.group(1)), out


def test_system_unit_exposure() -> None:
    needs_offline_security()
    rc, score, out = exposure(SYSTEM_UNIT)
    failed = "\n".join(line for line in out.splitlines() if line.startswith("✗"))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{failed}"
    assert rc == 0, out  # --threshold=20 makes systemd-analyze itself fail above 2.0


def test_user_unit_exposure(tmp_path: Path) -> None:
    needs_offline_security()
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    _, score, out = exposure(USER_UNIT, "--user", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert score <= MAX_USER_EXPOSURE, out


def unit_values(unit: Path, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|min)?", value.strip())
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_config_error_ends_in_failed_and_a_crash_restarts(unit: Path) -> None:
    """A config error exits EXIT_CONFIG, which the unit will not restart; the start limit can trip."""
    from r1proxy.cli import EXIT_CONFIG

    assert unit_values(unit, "Restart") == ["on-failure"]  # a crash (SIGKILL, exit 1) restarts
    assert unit_values(unit, "RestartPreventExitStatus") == [str(EXIT_CONFIG)]
    restart = seconds(unit_values(unit, "RestartSec")[0])
    interval = seconds(unit_values(unit, "StartLimitIntervalSec")[0])
    burst = int(unit_values(unit, "StartLimitBurst")[0])
    # each start of a crash loop costs at least RestartSec: the burst must fit inside the window
    assert burst * restart < interval, (burst, restart, interval)


def test_stop_timeout_covers_the_one_shutdown_deadline() -> None:
    """TimeoutStopSec = server.shutdown_timeout (the drain, one total deadline) + the margin for the flush."""
    from r1proxy.config import ServerConfig
    from r1proxy.shutdown import FLUSH_MARGIN_S

    for unit in (SYSTEM_UNIT, USER_UNIT):
        (stop,) = unit_values(unit, "TimeoutStopSec")
        assert seconds(stop) == ServerConfig().shutdown_timeout + FLUSH_MARGIN_S, unit.name


def test_user_unit_state_dir_does_not_depend_on_the_systemd_version(tmp_path: Path) -> None:
    """Before systemd 254 a user unit's StateDirectory=/%S is ~/.config: the cache must not go there."""
    from r1proxy.config import load_config

    settings = [line for line in USER_UNIT.read_text().splitlines() if not line.startswith("#")]
    assert not unit_values(USER_UNIT, "StateDirectory") and not any("%S" in line for line in settings)
    env = dict(v.split("=", 1) for line in unit_values(USER_UNIT, "Environment") for v in line.split())
    home = tmp_path / "home"
    state = env["R1PROXY_STATE_DIR"].replace("%h", str(home))
    cfg = load_config(None, env={"HOME": str(home), "R1PROXY_STATE_DIR": state})
    assert cfg.db_path == home / ".local" / "state" / "r1proxy" / "r1proxy.db"
