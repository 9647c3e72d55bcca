"""The client: ``MemoryClient`` and the parts it is composed of.

Each part owns its state and its lock, and does one job; the facade owns them all:

    _facade.py        MemoryClient: checks arguments, serves cache hits inline, delegates
    _validate.py      argument checks made before anything is sent
    _settings.py      ClientSettings (typed knobs), DomainRoute (one domain as routed)
    _cache.py         LocalCache: L0 hot map + L1 policy cache per domain, invalidation-safe
    _reads.py         ReadPath: own buffered writes, replica or owner, single-flight fetches
    _write_behind.py  WriteBehind: buffer, batches in flight, confirmation, resend after restarts
    _group_commit.py  GroupCommit: concurrent strong writes to one shard share a round trip
    _coherence.py     Coherence: the coordinator long poll, trust window, subscriptions
    _poll_hub.py      PollHub: one long poll for every client of this process on one system
    _coordinator.py   CacheCoordinator (``client.coordinator``) and InvalidationResult
    _selector.py      Selector (``client.selector``): the persistence selector's switch and report
    _recovery.py      Recovery (``client.recovery``): checkpoints
    _transport.py     Transport protocol, RayTransport (the only Ray calls), Retry (the one policy)
    _stats.py         thread-safe counters and latency samples

``connect_client`` builds a client for a running system; ``_attach`` is how a pickled client
comes back to life in a task or actor (one shared client per process and namespace).
"""

from __future__ import annotations

import threading

from erlmcp_ray.client._coordinator import CacheCoordinator, InvalidationResult
from erlmcp_ray.client._direct_transport import DirectTransport, default_transport
from erlmcp_ray.client._facade import MemoryClient
from erlmcp_ray.client._transport import COORDINATOR, Copy, RayTransport, Retry, Transport
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.entry import Subscription
from erlmcp_ray.core.layout import Layout

__all__ = [
    "COORDINATOR", "CacheCoordinator", "Copy", "DirectTransport", "InvalidationResult", "MemoryClient", "RayTransport",
    "Retry",
    "Subscription", "Transport", "connect_client", "release_shared",
]

_shared: dict[str, MemoryClient] = {}
_shared_lock = threading.Lock()


def connect_client(namespace: str, *, transport: Transport | None = None, poll_hook=None) -> MemoryClient:
    """A new client of the system running in ``namespace`` (its config read from the coordinator)."""
    base = transport or RayTransport(namespace)
    config = MemoryConfig.load(base.call(COORDINATOR, "get_config", timeout=30.0))
    layout = Layout.decode(base.call(COORDINATOR, "get_layout", timeout=30.0))
    if transport is None:
        transport = default_transport(namespace, config, base)
    return MemoryClient(namespace, config, transport=transport, poll_hook=poll_hook, layout=layout)


def _attach(namespace: str) -> MemoryClient:
    """Unpickling a client: one shared client per process and namespace (its own caches)."""
    with _shared_lock:
        client = _shared.get(namespace)
        if client is None or client.closed:
            client = _shared[namespace] = connect_client(namespace)
        return client


def release_shared(namespace: str) -> None:
    """Stop this process's shared client of ``namespace`` without flushing (the system is going away)."""
    with _shared_lock:
        client = _shared.pop(namespace, None)
    if client is not None:
        client._abandon()
