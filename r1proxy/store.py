"""The app's storage: the one SQLite database and what lives in it (cache tiers, request log)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cache import TieredCache
from .db import Database
from .reqlog import RequestLog

if TYPE_CHECKING:
    from .cache.notices import NoticeWatcher
    from .coalesce import Coalescer
    from .sharedlimits import SharedLimits


@dataclass(slots=True)
class Store:
    db: Database
    cache: TieredCache  # a NullCache when caching is off
    reqlog: RequestLog
    coalescer: Coalescer | None = None  # with [cache.redis]: one upstream call across processes
    limits: SharedLimits | None = None  # with [cache.redis]: key limits and pacing across processes
    notices: NoticeWatcher | None = None  # with a cache: purges done elsewhere reach this memory tier
