"""Operator mistakes on the command line (#11): one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1proxy.cli import main
from r1proxy.db import Database


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n')
    asyncio.run(_create(tmp_path / "state" / "r1proxy.db"))
    return str(path)


async def _create(path: Path) -> None:
    db = await Database.open(path)
    await db.close()


MISTAKES = [
    ["cache", "ls", "-n", "10^23"],
    ["cache", "ls", "-n", "100000000000000000000000"],
    ["cache", "ls", "-n", "-5"],
    ["logs", "-n", "100000000000000000000000"],
    ["logs", "-n", "x"],
    ["cache", "backup", "/missing-dir/x.db"],
    ["cache", "show", "no-such-key"],
    ["cache", "purge", "--older-than", "yesterday"],
    ["cache", "train-dict", "--samples", "99999999999999999999999"],
    ["stats", "--watch", "nan"],
    ["stats", "--watch", "-1"],
    ["serve", "--port", "99999"],
    ["nonsense"],
    ["cache", "ls", "--bogus"],
]


@pytest.mark.parametrize("argv", MISTAKES, ids=[" ".join(a) for a in MISTAKES])
def test_an_operator_mistake_is_one_line(cfg: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["--config", cfg, *argv])
    except SystemExit as e:  # argparse's exit path
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, out.err
    assert lines[0].startswith("r1proxy") and "Traceback" not in out.err


def test_the_real_command_too(cfg: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "r1proxy", "--config", cfg, "cache", "backup",
                        str(tmp_path / "missing" / "x.db")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "missing" in r.stderr




def test_a_second_server_on_one_state_dir_refuses_in_one_line(tmp_path: Path) -> None:
    from r1proxy import statelock

    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nstate_dir = "{state}"\nport = 0\n')
    held = statelock.acquire(state)  # as a running server holds it
    try:
        r = subprocess.run([sys.executable, "-m", "r1proxy", "--config", str(cfg), "serve"],
                           capture_output=True, text=True, timeout=60)
    finally:
        held.release()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0
    assert len(lines) == 1 and "already serving" in lines[0] and str(os.getpid()) in lines[0], r.stderr
    again = statelock.acquire(state)  # released: the next server may start
    again.release()
