"""MemoryClient's coherence half: the long poll on the coordinator, subscriptions, invalidations.

A mixin of ``MemoryClient`` (split out by role; the state lives in the client's constructor).
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from erlmcp_ray import _ray
from erlmcp_ray.actors.options import COORDINATOR
from erlmcp_ray.coordination import CacheCoordinator
from erlmcp_ray.core.entry import CacheInvalidated, MemoryUpdate, Subscription
from erlmcp_ray.core.invalidation import RELAXED as RELAXED_REASON
from erlmcp_ray.errors import ErlmcpRayError, InvalidValueError, UnavailableError

log = logging.getLogger("erlmcp_ray.client")


class CoherenceMixin:
    _cache: Any
    _callbacks: dict[str, dict[str, Callable[[MemoryUpdate], Any]]]

    # -------------------------------------------------------------- coherence
    def _cache_usable(self) -> bool:
        # Without a recent answer from the coordinator we may have missed invalidations.
        return time.monotonic() - self._last_poll_ok < self._trust_s

    def _poller(self) -> None:
        while not self._closed:
            try:
                self._poll_loop()
            except Exception:
                log.exception("coherence thread failed; dropping caches and restarting it")
                self._cache.drop_domains()
                time.sleep(0.05)

    def _poll_loop(self) -> None:
        timeout = self.config.client.poll_timeout_s
        backoff = 0.05
        while not self._closed:
            try:
                # Domains travel with register_client, not with every poll: a poll sent just
                # before a subscribe() must not overwrite the registration it made.
                epoch, last, gap, messages = _ray.get(
                    self._coordinator.poll.remote(self.client_id, self._since, None, None, timeout),
                    timeout=timeout + self._timeout, what="coordinator poll")
            except ErlmcpRayError as exc:
                if self._closed:
                    return
                log.debug("coherence poll failed: %s", exc)
                time.sleep(backoff + random.random() * backoff)  # jitter: clients must not retry in step
                backoff = min(backoff * 2, 1.0)
                try:
                    self._coordinator = _ray.get_actor(COORDINATOR, self.namespace)
                except UnavailableError:
                    pass
                continue
            backoff = 0.05
            if gap or epoch != self._coord_epoch:
                self.counters["gaps"] += 1
                self._cache.drop_domains()
                try:  # a new coordinator, or one that forgot us, must learn our domains again
                    epoch, last = self._register()
                except ErlmcpRayError:
                    continue
                self._coord_epoch = epoch
            if self._poll_hook is not None:
                messages = self._poll_hook(messages)
            for seq, domain, key, hlc, _deleted, record, reason in messages:
                if reason != RELAXED_REASON:
                    self._cache.invalidate(domain, key, hlc)
                    self.counters["invalidations_received"] += 1
                    if self._inval_callbacks:
                        self._notify_invalidated(CacheInvalidated(domain, key, reason, hlc, seq))
                if record is not None:
                    self._deliver(domain, key, record)
            self._since = last
            self._last_poll_ok = time.monotonic()
            self.counters["polls"] += 1

    def _deliver(self, domain: str, key: str, record: bytes) -> None:
        callbacks = self._callbacks.get(domain)
        if not callbacks:
            return
        event = MemoryUpdate.from_record(domain, key, record)
        for cb in list(callbacks.values()):
            try:
                cb(event)
                self.counters["events_delivered"] += 1
            except Exception:
                log.exception("subscriber callback failed for %s/%s", domain, key)

    def _notify_invalidated(self, event: CacheInvalidated) -> None:
        for cb in list(self._inval_callbacks.values()):
            try:
                cb(event)
            except Exception:
                log.exception("invalidation callback failed for %s/%s", event.domain, event.key)

    @functools.cached_property
    def coordinator(self) -> CacheCoordinator:
        """The cache coordination protocols (spec ``erlmcp_cache_coordinator``)."""
        return CacheCoordinator(self)

    def subscribe(self, domain: str, target: Any) -> Subscription:
        """Deliver a ``MemoryUpdate`` for every write to ``domain``, in per-key order, to ``target``:
        a callable (called on this client's poller thread) or a Ray actor handle (its
        ``on_memory_update(event)`` is called by the coordinator)."""
        self._domain(domain)
        self._check_open()
        if isinstance(target, ray.actor.ActorHandle):
            sub_id = _ray.get(self._coordinator.subscribe_actor.remote(domain, target), timeout=self._timeout,
                              what="coordinator subscribe")
            return Subscription(lambda: self._coordinator.unsubscribe.remote(sub_id), sub_id)
        if not callable(target):
            raise InvalidValueError("subscribe target must be a callable or a Ray actor handle",
                                    where="target")
        sub_id = uuid.uuid4().hex
        self._callbacks.setdefault(domain, {})[sub_id] = target
        self._register()  # the coordinator sends this domain's values from now on, even to a waiting poll

        def cancel() -> None:
            self._callbacks.get(domain, {}).pop(sub_id, None)
            if not self._closed:
                self._register()

        return Subscription(cancel, sub_id)

    def _register(self) -> tuple[int, int]:
        """Tell the coordinator what we cache and subscribe to; returns its (epoch, last seq)."""
        value_domains = [d for d, cbs in self._callbacks.items() if cbs]
        return tuple(_ray.get(
            self._coordinator.register_client.remote(self.client_id, list(self._domains), value_domains),
            timeout=self._timeout, what="coordinator register"))

