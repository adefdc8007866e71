"""One rule for every real part the tests need (redis-server, Chromium, the semantic model).

Locally a missing part skips the tests that need it, with the install hint; on CI (``CI`` set, as
``.ci/run`` does after installing them) it is a failure, so a green CI always means the real parts ran.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(why: str, *, module: bool = False) -> NoReturn:
    """Skip (locally) or fail (on CI) because a real part is not installed."""
    if on_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=module)
