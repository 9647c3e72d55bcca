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

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import ray

from erlmcp_ray import _ray
from erlmcp_ray.config import CoherenceLevel
from erlmcp_ray.core.entry import CacheInvalidated, Subscription
from erlmcp_ray.core.invalidation import INVALIDATE, PATTERN, TAG
from erlmcp_ray.core.routing import shard_for
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
    def __init__(self, client: Any) -> None:
        self._client = client

    # ------------------------------------------------------------- protocols
    def invalidate(self, domain: str, key: str, *, timeout: float | None = None) -> InvalidationResult:
        """Drop ``key`` from every client's cache (and, for source caches, from the shards); wait for acks."""
        self._client._domain(domain)
        key = self._client._key(key)
        self._remove_from_source(domain, [key])
        self._client._cache.drop(domain, key)
        return self._invalidate_sync([(domain, key, None, INVALIDATE)], timeout)

    def broadcast_invalidation(self, domain: str, key: str) -> None:
        """Like ``invalidate`` but returns at once, without waiting for any client."""
        self._client._domain(domain)
        key = self._client._key(key)
        self._remove_from_source(domain, [key])
        self._client._cache.drop(domain, key)
        self._client._coordinator.invalidate.remote([(domain, key, None, INVALIDATE)], False, 0.0)

    def invalidate_local(self, domain: str, key: str) -> None:
        """Drop ``key`` from this client's L0/L1 only."""
        self._client._domain(domain)
        self._client._cache.drop(domain, self._client._key(key))

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
        callable (on this client's coherence thread) or an actor handle (``on_cache_invalidated``)."""
        c = self._client
        if domain is not None:
            c._domain(domain)
        if isinstance(target, ray.actor.ActorHandle):
            sub_id = _ray.get(c._coordinator.subscribe_actor.remote(domain, target, "invalidation"),
                              timeout=c._timeout, what="coordinator subscribe")
            return Subscription(lambda: c._coordinator.unsubscribe.remote(sub_id), sub_id)
        if not callable(target):
            raise InvalidValueError("target must be a callable or a Ray actor handle", where="target")
        sub_id = uuid.uuid4().hex

        def deliver(event: CacheInvalidated) -> None:
            if domain is None or event.domain == domain:
                target(event)

        c._inval_callbacks[sub_id] = deliver
        return Subscription(lambda: c._inval_callbacks.pop(sub_id, None), sub_id)

    # ------------------------------------------------------------- machinery
    def _invalidate_sync(self, items: list, timeout: float | None = None) -> InvalidationResult:
        c = self._client
        wait_s = c.config.cache_coordinator.invalidation_timeout / 1000.0 if timeout is None else timeout
        # Not waiting for ourselves: this client dropped its own copies before asking.
        seq, acked, missing = _ray.get(c._coordinator.invalidate.remote(items, True, wait_s, (c.client_id,)),
                                       timeout=wait_s + c._timeout, what="coordinator invalidate")
        return InvalidationResult(seq, tuple(acked), tuple(missing), len(items))

    def _invalidate_found(self, reason: str, domain: str | None, **query: str) -> int:
        c = self._client
        domains = [c._domain(domain).name] if domain is not None else list(c._domains)
        found: dict[str, list[str]] = {}
        for name in domains:
            d = c._domains[name]
            refs = [c._handle(d, shard, 0).find.remote(**query) for shard in range(d.shards)]
            keys = [k for part in _ray.get(refs, timeout=c._timeout, what=f"{name} find") for k in part]
            if keys:
                found[name] = keys
        items = []
        for name, keys in found.items():
            self._remove_from_source(name, keys)
            for k in keys:
                c._cache.drop(name, k)
                items.append((name, k, None, reason))
        if not items:
            return 0
        if c._coherence is CoherenceLevel.STRONG:
            self._invalidate_sync(items)
        else:
            _ray.get(c._coordinator.invalidate.remote(items, False, 0.0), timeout=c._timeout,
                     what="coordinator invalidate")
        return len(items)

    def _remove_from_source(self, domain: str, keys: list[str]) -> None:
        """For a domain that caches an outside source, delete the entries in its shards too."""
        c = self._client
        if not c.config.domain(domain).invalidate_source:
            return
        d = c._domains[domain]
        by_shard: dict[int, list] = defaultdict(list)
        for k in keys:
            by_shard[shard_for(k, d.shards)].append((k, None, None, ()))
        for shard, ops in by_shard.items():
            c._send_key_now_many(d, [op[0] for op in ops])
            c._call(d, shard, 0, "write", c.client_id, c._next_seq(), ops, False)
