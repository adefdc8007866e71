"""The names of r1proxy's keys in Redis, under a configured prefix: one place for every user of them.

An entry is ``<prefix>e:{<cache key>}`` and its hit count ``<prefix>h:{<cache key>}``; the braces are a
Redis Cluster hash tag, so an entry and its count live on the same shard.
"""

from __future__ import annotations


def entry_key(prefix: str, key: str) -> str:
    return f"{prefix}e:{{{key}}}"


def hits_key(prefix: str, key: str) -> str:
    return f"{prefix}h:{{{key}}}"
