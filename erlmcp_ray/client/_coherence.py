"""Coherence: the long poll on the coordinator, the trust window, subscriptions.

A thread long-polls "what changed in my domains since N" and drops cached copies older than
each announced version (over the direct transport the process's ``PollHub`` polls for all its
clients at once instead, and hands each client its part of the answer: ``handle``). Cached
reads are trusted only while a poll answered within the trust window
(``ClientSettings.trust_s``); a gap, a new coordinator epoch, or a coordinator that forgot us
makes the client drop every cached entry and register again. Callables subscribed with
``subscribe`` or ``subscribe_invalidation`` are called on a delivery thread of this client's,
in per-key order, never on the polling thread; actor handles are called by the coordinator
itself.
"""

from __future__ import annotations

import logging
import queue
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
                 report: Callable[[], dict | None] | None = None, poll_transport: Transport | None = None,
                 hub: Any = None) -> None:
        """``layout``: the generation of the layout the client routes by; ``on_layout(generation)``
        is called (on this part's thread) when a poll announces another one. ``report()``: this
        client's counters for the coordinator (``erlmcp_ray.telemetry`` reads every client's there),
        sent with a poll when it returns a dict. ``poll_transport``: what the long polls go over (a
        transport with a connection of its own, which ``close`` closes: that ends a waiting poll at
        once); everything else goes over ``transport``. ``hub``: a ``PollHub`` whose one long poll
        serves this client and the process's others (then no thread and no poll of its own)."""
        self._report = report
        self._hub = hub
        # held while an answer is handled (by our thread or a hub's), and by close() as it marks us
        # closed: a closed client is never registered again by a late answer (a ghost others would
        # wait for)
        self._handling = threading.RLock()
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
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # lists of events for the delivery thread
        self._delivery: threading.Thread | None = None  # started with the first event
        #: when a poll last answered (the facade's get reads it inline: one float)
        self.last_ok = clock()
        self.trust_s = settings.trust_s
        self.epoch, self.since = self._register()
        self._closed = False
        # a poll of its own only without a hub
        self._thread = None if hub is not None else threading.Thread(target=self._run, name="erlmcp-coherence",
                                                                     daemon=True)

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def poll_timeout_s(self) -> float:
        return self._settings.poll_timeout_s

    @property
    def call_timeout_s(self) -> float:
        return self._settings.call_timeout_s

    def start(self) -> None:
        if self._hub is not None:
            self._hub.join(self)
        else:
            self._thread.start()

    def close(self, join_s: float) -> None:
        # Under _handling: an answer handled after this is dropped, so nothing registers us again
        # once we unregister below (a ghost others' synchronous invalidations would wait for).
        with self._handling:
            self._closed = True
            if self._hub is not None:
                self._hub.leave(self)  # its next poll leaves us out (the one in flight is asked again)
        if self._hub is None and self._poll_transport is not self._transport:
            self._poll_transport.close()  # the waiting poll fails now, rather than at its timeout
            self._thread.join(timeout=join_s)
        # With a hub there is no thread of ours; over a transport whose poll cannot be interrupted (a
        # Ray call) the thread is not waited for: its poll ends at its timeout, and the thread with
        # it, without acting on the answer.
        self._events.put(None)  # the delivery thread ends once it has delivered what came before
        try:  # else synchronous invalidations wait for us until our lease runs out
            self._transport.call(COORDINATOR, "unregister_client", self._client_id,
                                 timeout=self._settings.call_timeout_s)
        except ErlmcpRayError as exc:
            log.debug("unregistering from the coordinator failed: %s", exc)

    def usable(self) -> bool:
        """Without a recent answer from the coordinator we may have missed invalidations."""
        return self._clock() - self.last_ok < self.trust_s

    # ------------------------------------------------------------ for a hub
    def poll_entry(self) -> list | None:
        """This client's part of its hub's next poll, ``[client_id, since, report]``; None when the
        fault seam cuts it off from the coordinator (its poll would fail: it is left out)."""
        check = getattr(self._transport, "check_partition", None)
        if check is not None:
            try:
                check(COORDINATOR)
            except ErlmcpRayError:
                return None
        return [self._client_id, self.since, self._report() if self._report is not None else None]

    def handle_safely(self, answer: Any) -> None:
        """``handle`` on a hub's thread: a bug in one client's handling must not stop the others'."""
        with self._handling:
            if self._closed:
                return
            try:
                self.handle(answer)
            except Exception:
                log.exception("coherence: handling a poll's answer failed; dropping caches")
                self._cache.drop_domains()

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._closed:
            try:
                self._loop()
            except Exception:
                if self._closed:  # its last poll failed after close (Ray shut down, say): nothing to do
                    return
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
            with self._handling:
                if self._closed:
                    return
                self.handle(answer)

    def handle(self, answer: Any) -> None:
        """A poll's answer: this client's own poll's, or its part of its hub's."""
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
                return  # the next poll, from where we were, tells us again
            self.epoch = epoch
        if self._poll_hook is not None:
            messages = self._poll_hook(messages)
        self._apply(messages)
        self.since = last
        self.last_ok = self._clock()
        self._counters.add("polls")

    def _apply(self, messages: list) -> None:
        """Drop what the messages make stale, then hand the subscribers' events to the delivery
        thread: callbacks never run on the polling thread (which, in a hub, polls for the process's
        other clients too), so a slow one delays only this client's later events."""
        dropped = self._cache.invalidate_many((m[1], m[2], m[3]) for m in messages if m[6] not in KEEPS_CACHES)
        if dropped:
            self._counters.add("invalidations_received", dropped)
        with self._lock:
            inval = bool(self._inval_callbacks)
        events = []
        for seq, domain, key, hlc, _deleted, record, reason in messages:
            if inval and reason not in KEEPS_CACHES:
                events.append(CacheInvalidated(domain, key, reason, hlc, seq))
            if record is not None:
                events.append((domain, key, record, reason == CONFLICT))
        if events:
            self._enqueue(events)

    def _enqueue(self, events: list) -> None:
        with self._lock:
            if self._delivery is None:
                self._delivery = threading.Thread(target=self._deliver_all, name="erlmcp-callbacks", daemon=True)
                self._delivery.start()
            self._events.put(events)

    def _deliver_all(self) -> None:
        """The delivery thread: events in the order their polls answered (per-key order)."""
        while True:
            events = self._events.get()
            if events is None:
                return
            for event in events:
                if isinstance(event, CacheInvalidated):
                    with self._lock:
                        inval = list(self._inval_callbacks.values())
                    self._notify(inval, event)
                else:
                    self._deliver(*event)

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
