"""The durable tier (spec L3): one small protocol, two real stores.

    DurableStore   the protocol (``_protocol.py``): per-shard record batches under an epoch,
                   fencing, loads with checksums, checkpoint blobs
    SQLiteStore    embedded, one WAL-mode file (``_sqlite.py``): the single-machine default
    RedisStore     Redis or Redis Cluster via redis-py, Lua-checked epochs (``_redis.py``)
    open_store     the store a ``DurableConfig`` names, for one system namespace

``erlmcp_ray.testing.check_store(factory)`` is the contract suite both pass (and yours can).
"""

from __future__ import annotations

import os
from pathlib import Path

from erlmcp_ray.config import DurableConfig, DurableKind
from erlmcp_ray.storage._protocol import DurableStore, ShardImage
from erlmcp_ray.storage._redis import RedisStore
from erlmcp_ray.storage._sqlite import SQLiteStore

__all__ = ["DurableStore", "RedisStore", "SQLiteStore", "ShardImage", "default_data_dir", "open_store"]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/erlmcp_ray``, else ``~/.local/share/erlmcp_ray``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "erlmcp_ray"


def open_store(config: DurableConfig, namespace: str) -> DurableStore | None:
    """The store ``config`` names for the system in ``namespace`` (None for ``kind = none``)."""
    if config.kind is DurableKind.NONE:
        return None
    if config.kind is DurableKind.REDIS:
        return RedisStore(config.redis_url, prefix=f"erlmcp:{namespace}")
    # "~" is the home of the process opening the store (each node's own, for a shard actor)
    path = Path(config.path) if config.path else Path(config.data_dir or default_data_dir()) / f"{namespace}.db"
    return SQLiteStore(path.expanduser())
