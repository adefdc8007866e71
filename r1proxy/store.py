"""The app's storage: the one SQLite database and what lives in it (cache tiers, request log)."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import TieredCache
from .db import Database
from .reqlog import RequestLog


@dataclass(slots=True)
class Store:
    db: Database
    cache: TieredCache  # a NullCache when caching is off
    reqlog: RequestLog
