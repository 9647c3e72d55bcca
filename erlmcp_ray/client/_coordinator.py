"""``client.coordinator``: the cache coordination protocols (spec ``erlmcp_cache_coordinator``).

* ``invalidate`` — synchronous: returns once every live client that caches the domain
  dropped its copy (acknowledged by polling past the message), or at
  ``cache_coordinator.invalidation_timeout``, naming who acked and who is missing. A missing
  client has stopped serving its cache by then (its trust window is shorter than the timeout).
* ``broadcast_invalidation`` — asynchronous, fire and forget.
* ``invalidate_local`` — this client's L0/L1 only.
* ``invalidate_tag`` / ``invalidate_pattern`` — every entry carrying a tag given at ``put``, or
  whose key matches a glob; synchronous when the coherence level is strong, else broadcast.
* ``subscribe_invalidation`` — ``CacheInvalidated`` events to a callable or an actor handle.

What an invalidation removes: the cached copies in every client's L0/L1, always. For domains that
cache an outside source (``invalidate_source``, on for ``cache`` and ``ephemeral`` by default) also
the entry in the domain's shards, so the next read goes back to the source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from erlmcp_ray.client import _validate
from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.client._coherence import Coherence
from erlmcp_ray.client._settings import ClientSettings, DomainRoute
from erlmcp_ray.client._topology import Topology
from erlmcp_ray.client._transport import COORDINATOR, Retry, Transport
from erlmcp_ray.client._write_behind import WriteBehind
from erlmcp_ray.config import CoherenceLevel
from erlmcp_ray.core.entry import CacheInvalidated, Subscription
from erlmcp_ray.core.invalidation import INVALIDATE, PATTERN, TAG
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import write_op
from erlmcp_ray.errors import InvalidValueError

__all__ = ["CacheCoordinator", "CacheInvalidated", "InvalidationResult"]


@dataclass(frozen=True, slots=True)
class InvalidationResult:
    """What a synchronous invalidation achieved."""

    seq: int  # the coordinator's sequence number of the (last) invalidation message
    acked: tuple[str, ...]  # client ids that dropped their copies
    missing: tuple[str, ...]  # live clients that did not answer in time
    entries: int = 1

    @property
    def complete(self) -> bool:
        return not self.missing


class CacheCoordinator:
    """``client.coordinator``; built by the client from its parts."""

    def __init__(self, *, domain: Callable[[Any], DomainRoute], routes: dict[str, DomainRoute], cache: LocalCache,
                 transport: Transport, retry: Retry, write_behind: WriteBehind, coherence: Coherence,
                 settings: ClientSettings, client_id: str, next_seq: Callable[[], int],
                 check_open: Callable[[], None], topology: Topology) -> None:
        self._domain, self._routes, self._cache = domain, routes, cache
        self._topology = topology
        self._transport, self._retry, self._wb, self._coherence = transport, retry, write_behind, coherence
        self._settings, self._client_id, self._next_seq = settings, client_id, next_seq
        self._check_open = check_open

    # ------------------------------------------------------------- clients
    def client_reports(self) -> dict[str, dict[str, Any]]:
        """Every live client's counters, as each last sent them with a poll (at most a second old):
        ``{client_id: {node, l0_hits, l1_hits, misses, evictions, l0_size, l1_size, l1_bytes,
        buffered, in_flight_batches, write_errors, writes_stashed}}``."""
        self._check_open()
        return self._retry.run(lambda: self._transport.call(COORDINATOR, "client_reports",
                                                            timeout=self._settings.call_timeout_s))

    # ------------------------------------------------------------- protocols
    def invalidate(self, domain: str, key: str, *, timeout: float | None = None) -> InvalidationResult:
        """Drop ``key`` from every client's cache (and, for source caches, from the shards); wait for acks."""
        d = self._domain(domain)
        key = _validate.key(key)
        timeout = _validate.timeout(timeout)
        self._check_open()
        self._remove_from_source(d, [key])
        self._cache.drop(d.name, key)
        return self.invalidate_sync([(d.name, key, None, INVALIDATE)], timeout)

    def broadcast_invalidation(self, domain: str, key: str) -> None:
        """Like ``invalidate`` but returns at once, without waiting for any client."""
        d = self._domain(domain)
        key = _validate.key(key)
        self._check_open()
        self._remove_from_source(d, [key])
        self._cache.drop(d.name, key)
        self._transport.submit(COORDINATOR, "invalidate", [(d.name, key, None, INVALIDATE)], False, 0.0)

    def invalidate_local(self, domain: str, key: str) -> None:
        """Drop ``key`` from this client's L0/L1 only."""
        d = self._domain(domain)
        self._cache.drop(d.name, _validate.key(key))

    def invalidate_tag(self, tag: str, domain: str | None = None) -> int:
        """Invalidate every live entry carrying ``tag`` (in ``domain``, or in every domain)."""
        if not isinstance(tag, str) or not tag:
            raise InvalidValueError("a tag is a non-empty str", where="tag")
        return self._invalidate_found(TAG, domain, tag=tag)

    def invalidate_pattern(self, pattern: str, domain: str | None = None) -> int:
        """Invalidate every live entry whose key matches the glob ``pattern`` (e.g. ``"session:*"``)."""
        if not isinstance(pattern, str) or not pattern:
            raise InvalidValueError("a pattern is a non-empty glob str such as 'session:*'", where="pattern")
        return self._invalidate_found(PATTERN, domain, pattern=pattern)

    def subscribe_invalidation(self, target: Any, domain: str | None = None) -> Subscription:
        """Deliver a ``CacheInvalidated`` per invalidation (writes included, relaxed ones not) to a
        callable (on a delivery thread of this client's, never the polling thread) or an actor handle (``on_cache_invalidated``)."""
        if domain is not None:
            domain = self._domain(domain).name
        self._check_open()
        return self._coherence.subscribe_invalidation(target, domain)

    # ------------------------------------------------------------- machinery
    def invalidate_sync(self, items: list, timeout: float | None = None) -> InvalidationResult:
        """Publish ``items`` and wait until every live client dropped them (or the timeout)."""
        wait_s = self._settings.invalidation_timeout_s if timeout is None else timeout
        # Not waiting for ourselves: this client dropped its own copies before asking.
        seq, acked, missing = self._transport.call(
            COORDINATOR, "invalidate", items, True, wait_s, (self._client_id,),
            timeout=wait_s + self._settings.call_timeout_s)
        return InvalidationResult(seq, tuple(acked), tuple(missing), len(items))

    def _invalidate_found(self, reason: str, domain: str | None, **query: str) -> int:
        routes = [self._domain(domain)] if domain is not None else list(self._routes.values())
        self._check_open()
        timeout = self._settings.call_timeout_s
        found: dict[str, list[str]] = {}
        for d in routes:
            pending = [self._transport.submit(self._topology.owner(d.name, shard), "find", query.get("tag"), query.get("pattern"))
                       for shard in range(d.shards)]
            keys = [k for p in pending for k in self._transport.result(p, timeout, f"{d.name} find")]
            if keys:
                found[d.name] = keys
        items = []
        for name, keys in found.items():
            self._remove_from_source(self._routes[name], keys)
            for k in keys:
                self._cache.drop(name, k)
                items.append((name, k, None, reason))
        if not items:
            return 0
        if self._settings.coherence is CoherenceLevel.STRONG:
            self.invalidate_sync(items)
        else:
            self._transport.call(COORDINATOR, "invalidate", items, False, 0.0, timeout=timeout)
        return len(items)

    def _remove_from_source(self, d: DomainRoute, keys: list[str]) -> None:
        """For a domain that caches an outside source, delete the entries in its shards too."""
        if not d.invalidate_source:
            return
        by_shard: dict[int, list] = defaultdict(list)
        for k in keys:
            by_shard[shard_for(k, d.shards)].append(write_op(k, None))
        self._wb.send_now(d.name, d.shards, list(keys))
        for shard, ops in by_shard.items():
            seq = self._next_seq()
            self._retry.run(lambda shard=shard, seq=seq, ops=ops: self._topology.call_owner(
                d.name, shard, "write", self._client_id, seq, ops, False, timeout=self._settings.call_timeout_s),
                on_unavailable=lambda shard=shard: self._topology.owner_failed(d.name, shard))
