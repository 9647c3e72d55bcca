"""Coherence: the long poll on the coordinator, the trust window, subscriptions.

A thread long-polls "what changed in my domains since N" and drops cached copies older than
each announced version. Cached reads are trusted only while a poll answered within the trust
window (``ClientSettings.trust_s``); a gap, a new coordinator epoch, or a coordinator that
forgot us makes the client drop every cached entry and register again. Callables subscribed
with ``subscribe`` are called on this thread, in per-key order; actor handles are called by
the coordinator itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.client._settings import ClientSettings
from erlmcp_ray.client._stats import Counters
from erlmcp_ray.client._transport import COORDINATOR, Transport
from erlmcp_ray.core.entry import CacheInvalidated, MemoryConflict, MemoryUpdate, Subscription
from erlmcp_ray.core.invalidation import CONFLICT, KEEPS_CACHES
from erlmcp_ray.errors import ErlmcpRayError, InvalidValueError

__all__ = ["Coherence"]

log = logging.getLogger("erlmcp_ray.client")


class Coherence:
    def __init__(self, *, transport: Transport, settings: ClientSettings, cache: LocalCache, counters: Counters,
                 client_id: str, domains: list[str], poll_hook: Callable[[list], list] | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 layout: int = 0, on_layout: Callable[[int], None] | None = None,
                 report: Callable[[], dict | None] | None = None, poll_transport: Transport | None = None) -> None:
        """``layout``: the generation of the layout the client routes by; ``on_layout(generation)``
        is called (on this part's thread) when a poll announces another one. ``report()``: this
        client's counters for the coordinator (``erlmcp_ray.telemetry`` reads every client's there),
        sent with a poll when it returns a dict. ``poll_transport``: what the long polls go over (a
        transport with a connection of its own, which ``close`` closes: that ends a waiting poll at
        once); everything else goes over ``transport``."""
        self._report = report
        self._poll_transport = poll_transport or transport
        self._transport, self._settings, self._cache = transport, settings, cache
        self.layout, self._on_layout = layout, on_layout
        self._counters, self._client_id, self._domains = counters, client_id, list(domains)
        self._poll_hook = poll_hook
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()  # guards the two callback tables
        self._callbacks: dict[str, dict[str, Callable[[MemoryUpdate], Any]]] = {}
        self._inval_callbacks: dict[str, Callable[[CacheInvalidated], Any]] = {}
        #: when a poll last answered (the facade's get reads it inline: one float)
        self.last_ok = clock()
        self.trust_s = settings.trust_s
        self.epoch, self.since = self._register()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="erlmcp-coherence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, join_s: float) -> None:
        self._closed = True
        if self._poll_transport is not self._transport:
            self._poll_transport.close()  # the waiting poll fails now, rather than at its timeout
        self._thread.join(timeout=join_s)
        try:  # else synchronous invalidations wait for us until our lease runs out
            self._transport.call(COORDINATOR, "unregister_client", self._client_id,
                                 timeout=self._settings.call_timeout_s)
        except ErlmcpRayError as exc:
            log.debug("unregistering from the coordinator failed: %s", exc)

    def usable(self) -> bool:
        """Without a recent answer from the coordinator we may have missed invalidations."""
        return self._clock() - self.last_ok < self.trust_s

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._closed:
            try:
                self._loop()
            except Exception:
                log.exception("coherence thread failed; dropping caches and restarting it")
                self._cache.drop_domains()
                time.sleep(0.05)

    def _loop(self) -> None:
        timeout = self._settings.poll_timeout_s
        backoff = 0.05
        while not self._closed:
            try:
                # Domains travel with register_client, not with every poll: a poll sent just
                # before a subscribe() must not overwrite the registration it made.
                report = self._report() if self._report is not None else None
                answer = self._poll_transport.call(COORDINATOR, "poll", self._client_id, self.since, None, None, timeout,
                                              report,
                                              timeout=timeout + self._settings.call_timeout_s)
            except ErlmcpRayError as exc:
                if self._closed:
                    return
                log.debug("coherence poll failed: %s", exc)
                time.sleep(backoff + self._rng.random() * backoff)  # jitter: clients must not retry in step
                backoff = min(backoff * 2, 1.0)
                self._poll_transport.forget(COORDINATOR)
                continue
            backoff = 0.05
            epoch, last, gap, messages, layout = answer
            if layout != self.layout and self._on_layout is not None:
                try:
                    self._on_layout(layout)
                    self.layout = layout
                except ErlmcpRayError as exc:  # asked again after the next poll
                    log.warning("refreshing the layout (generation %s) failed: %s", layout, exc)
            if gap or epoch != self.epoch:
                self._counters.add("gaps")
                self._cache.drop_domains()
                try:  # a new coordinator, or one that forgot us, must learn our domains again
                    epoch, last = self._register()
                except ErlmcpRayError:
                    continue
                self.epoch = epoch
            if self._poll_hook is not None:
                messages = self._poll_hook(messages)
            self._apply(messages)
            self.since = last
            self.last_ok = self._clock()
            self._counters.add("polls")

    def _apply(self, messages: list) -> None:
        with self._lock:
            inval = list(self._inval_callbacks.values())
        dropped = self._cache.invalidate_many((m[1], m[2], m[3]) for m in messages if m[6] not in KEEPS_CACHES)
        if dropped:
            self._counters.add("invalidations_received", dropped)
        for seq, domain, key, hlc, _deleted, record, reason in messages:
            if inval and reason not in KEEPS_CACHES:
                self._notify(inval, CacheInvalidated(domain, key, reason, hlc, seq))
            if record is not None:
                self._deliver(domain, key, record, reason == CONFLICT)

    def _deliver(self, domain: str, key: str, record: bytes, conflict: bool = False) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(domain, {}).values())
        if not callbacks:
            return
        event = (MemoryConflict if conflict else MemoryUpdate).from_record(domain, key, record)
        for cb in callbacks:
            try:
                cb(event)
                self._counters.add("events_delivered")
            except Exception:
                log.exception("subscriber callback failed for %s/%s", domain, key)

    @staticmethod
    def _notify(callbacks: list, event: CacheInvalidated) -> None:
        for cb in callbacks:
            try:
                cb(event)
            except Exception:
                log.exception("invalidation callback failed for %s/%s", event.domain, event.key)

    # --------------------------------------------------------- subscriptions
    def subscribe(self, domain: str, target: Any) -> Subscription:
        if self._transport.is_actor(target):
            sub_id = self._transport.call(COORDINATOR, "subscribe_actor", domain, target,
                                          timeout=self._settings.call_timeout_s)
            return Subscription(lambda: self._transport.submit(COORDINATOR, "unsubscribe", sub_id), sub_id)
        if not callable(target):
            raise InvalidValueError("subscribe target must be a callable or a Ray actor handle", where="target")
        sub_id = uuid.uuid4().hex
        with self._lock:
            self._callbacks.setdefault(domain, {})[sub_id] = target
        self._register()  # the coordinator sends this domain's values from now on, even to a waiting poll

        def cancel() -> None:
            with self._lock:
                self._callbacks.get(domain, {}).pop(sub_id, None)
            if not self._closed:
                self._register()

        return Subscription(cancel, sub_id)

    def subscribe_invalidation(self, target: Any, domain: str | None) -> Subscription:
        if self._transport.is_actor(target):
            sub_id = self._transport.call(COORDINATOR, "subscribe_actor", domain, target, "invalidation",
                                          timeout=self._settings.call_timeout_s)
            return Subscription(lambda: self._transport.submit(COORDINATOR, "unsubscribe", sub_id), sub_id)
        if not callable(target):
            raise InvalidValueError("target must be a callable or a Ray actor handle", where="target")
        sub_id = uuid.uuid4().hex

        def deliver(event: CacheInvalidated) -> None:
            if domain is None or event.domain == domain:
                target(event)

        with self._lock:
            self._inval_callbacks[sub_id] = deliver
        self._register()  # from now on our own writes are announced to us too (see _register)

        def cancel() -> None:
            with self._lock:
                self._inval_callbacks.pop(sub_id, None)
            if not self._closed:
                self._register()

        return Subscription(cancel, sub_id)

    def _register(self) -> tuple[int, int]:
        """Tell the coordinator what we cache and subscribe to; returns its (epoch, last seq).

        The coordinator does not send us our own writes (Redis's NOLOOP): the write's answer
        already versioned our cached copy, and every message costs this thread and the
        coordinator work per write. Only invalidation callbacks want them (they hear of every
        invalidation, ours included); value subscriptions get them anyway."""
        with self._lock:
            value_domains = [d for d, cbs in self._callbacks.items() if cbs]
            own_writes = bool(self._inval_callbacks)
        epoch, last = self._transport.call(COORDINATOR, "register_client", self._client_id, self._domains,
                                           value_domains, own_writes, timeout=self._settings.call_timeout_s)
        return epoch, last
