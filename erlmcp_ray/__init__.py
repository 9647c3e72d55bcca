"""erlmcp_ray: cross-agent memory for AI agents on Ray.

A Python port of the erlmcp v3 distributed memory design (spec in
``shared/spec``). Layout:

    config.py        MemoryConfig: the spec's sys.config as one pydantic tree
    errors.py        the exception tree (drawn in its docstring)
    core/            pure logic, no Ray: codec, versions (vclock, hlc), records, op-log,
                     shard state, shard copy (owner/replica rules), wire messages,
                     invalidation log, Entry/Version, auto_select + layout (the selector at
                     work), checkpoint (manifests, shard images), recovery (plans, status)
    actors/          thin Ray shells: shard, coordinator, supervisor (selection, checkpoints,
                     recovery runs, verify/sync); options.py builds all actor options
    _ray.py          Ray waits with timeouts and error translation
    client/          MemoryClient composed of small parts (cache, read path, write-behind,
                     group commit, coherence, client.coordinator, client.selector,
                     client.recovery) over one Transport seam
    storage/         durable stores (spec L3): protocol, SQLiteStore, RedisStore
    persistence_selector.py  the spec's backend selection tree
    system.py        start / connect / shutdown
    testing.py       contract suites, FakeTransport, HistoryRecorder / check_linearizable
    eviction/        LRU, LFU, TTL, FIFO, ARC, Random, W-TinyLFU; recommend/benchmark policies
    memory_guard.py  the spec's per-process guards (context / tool / transport)
    cli.py           the ``erlmcp-ray`` command (demo.py: its ``demo``)

Importing this package does not import Ray: ``start``, ``connect``, ``shutdown``,
``MemoryClient``, ``MemorySystem``, ``CacheCoordinator`` and ``InvalidationResult`` load it on
first use.
"""

from typing import Any

from erlmcp_ray import errors, memory_guard
from erlmcp_ray.config import (
    Backend,
    CoherenceLevel,
    Consistency,
    DomainConfig,
    EvictionPolicyName,
    MemoryConfig,
)
from erlmcp_ray.core.entry import CacheInvalidated, Entry, MemoryConflict, MemoryUpdate, Subscription, Version
from erlmcp_ray.core.vclock import Ordering, VersionVector
from erlmcp_ray.errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptDataError,
    ErlmcpRayError,
    InvalidConsistencyError,
    InvalidKeyError,
    InvalidValueError,
    MemoryPressureError,
    OperationTimeoutError,
    RemoteError,
    ReplicationError,
    StaleEpochError,
    UnavailableError,
    UnknownDomainError,
)

__version__ = "0.1.0"

_LAZY = {
    "start": "erlmcp_ray.system",
    "connect": "erlmcp_ray.system",
    "shutdown": "erlmcp_ray.system",
    "MemorySystem": "erlmcp_ray.system",
    "MemoryClient": "erlmcp_ray.client",
    "InvalidationResult": "erlmcp_ray.client",
    "CacheCoordinator": "erlmcp_ray.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'erlmcp_ray' has no attribute {name!r}")

__all__ = [
    "Backend",
    "CacheCoordinator",
    "CacheInvalidated",
    "CheckpointNotFoundError",
    "CoherenceLevel",
    "ConfigError",
    "Consistency",
    "CorruptDataError",
    "DomainConfig",
    "Entry",
    "ErlmcpRayError",
    "EvictionPolicyName",
    "InvalidConsistencyError",
    "InvalidKeyError",
    "InvalidValueError",
    "InvalidationResult",
    "MemoryClient",
    "MemoryConfig",
    "MemoryConflict",
    "MemoryPressureError",
    "MemorySystem",
    "MemoryUpdate",
    "OperationTimeoutError",
    "Ordering",
    "RemoteError",
    "ReplicationError",
    "StaleEpochError",
    "Subscription",
    "UnavailableError",
    "UnknownDomainError",
    "Version",
    "VersionVector",
    "connect",
    "errors",
    "memory_guard",
    "shutdown",
    "start",
]
