"""Which shard holds a key: a stable hash (never Python's salted ``hash``)."""

from __future__ import annotations

import zlib

__all__ = ["shard_for"]


def shard_for(key: str, shards: int) -> int:
    """Shard index of ``key`` among ``shards``; the same in every process and run."""
    if shards == 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards
