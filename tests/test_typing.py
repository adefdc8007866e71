"""The modules that own a concern since the wave-2 reshape pass ``mypy --strict``
(the whole package passes ``mypy r1proxy`` in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT = ["route.py", "rules.py", "clock.py", "usage.py", "reply.py", "routing.py", "store.py", "cache/freshness.py",
          "gateway.py", "accounting.py", "flight.py", "policy.py"]


def test_owner_modules_pass_mypy_strict() -> None:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.skip("mypy is not installed (it is part of the test extra)")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                          *(str(ROOT / "r1proxy" / m) for m in STRICT)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
