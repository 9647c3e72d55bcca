"""One long poll on the coordinator for every caching client of this process on one system.

Each client's ``Coherence`` polls on a thread and a connection of its own when it is alone; with
the direct transport the clients of one process share a ``PollHub`` instead: one thread, one
connection, one ``poll_many`` call that carries every member's ``since`` (so one answer delivers
an invalidation to all of them, and the next call acknowledges it for all of them). Redis's
client-side caching and Hazelcast's near caches do the same: invalidations reach a process once,
not once per cache object in it.

A member that joins or leaves ends the poll in flight (its connection is closed: the call raises
``UnavailableError`` and is asked again at once with the members as they are now), so a new
client hears of the next write at once, even one made by the only member polled before it (a
client is not sent its own writes, so nothing else would end that poll before its timeout). Each member handles
its own part of an answer (gaps, re-registration, layout changes) on this thread, in turn; its
subscribers' callbacks run on a delivery thread of its own (``Coherence._apply``), so one that
blocks holds up nobody's coherence.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from typing import Any

from erlmcp_ray.client._transport import COORDINATOR
from erlmcp_ray.errors import ErlmcpRayError

__all__ = ["PollHub", "hub_for"]

log = logging.getLogger("erlmcp_ray.client")

_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shared DirectPool -> PollHub
_hubs_lock = threading.Lock()


def hub_for(transport: Any) -> PollHub:
    """The hub of the clients of ``transport``'s system in this process (a ``DirectTransport`` on the
    process's shared pool; made on first use)."""
    from erlmcp_ray.client._transport import RayTransport

    with _hubs_lock:
        hub = _hubs.get(transport.pool)
        if hub is None:
            namespace = getattr(transport.fallback, "namespace", None)
            # a fallback of its own, which names no client to the fault seam (each member is checked)
            fallback = RayTransport(namespace, place="client:poll-hub") if namespace is not None else None
            hub = _hubs[transport.pool] = PollHub(transport.dedicated(fallback))
        return hub


class PollHub:
    def __init__(self, transport: Any, *, rng: random.Random | None = None) -> None:
        self._transport = transport
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._members: dict[str, Any] = {}  # client id -> Coherence
        self._thread: threading.Thread | None = None
        self._asked_again = 0  # polls ended on purpose (a member came or went)
        self.polls = 0

    def join(self, member: Any) -> None:
        with self._lock:
            self._members[member.client_id] = member
            if self._thread is None:  # (the thread clears it under this lock when it stops)
                self._thread = threading.Thread(target=self._run, name="erlmcp-coherence-hub", daemon=True)
                self._thread.start()
                return
            self._asked_again += 1
        self._transport.interrupt()  # the poll in flight does not ask for the new member

    def leave(self, member: Any) -> None:
        with self._lock:
            if self._members.pop(member.client_id, None) is None:
                return
            self._asked_again += 1
        self._transport.interrupt()  # asked again without it (or the thread stops: no members left)

    def members(self) -> int:
        with self._lock:
            return len(self._members)

    def transport_stats(self) -> dict:
        return self._transport.transport_stats()

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                backoff = self._round(backoff)
            except _NoMembers:
                return
            except Exception:  # a bug here must not stop every member's coherence
                log.exception("coherence hub: a poll round failed; carrying on")
                time.sleep(backoff)

    def _round(self, backoff: float) -> float:
        """One poll for every member; returns the back-off for the next round."""
        with self._lock:
            if not self._members:
                self._thread = None
                raise _NoMembers
            members = list(self._members.values())
            asked = self._asked_again
        entries, polled = [], []
        for member in members:
            entry = member.poll_entry()
            if entry is not None:
                entries.append(entry)
                polled.append(member)
        if not entries:  # every member cut off from the coordinator (a fault test)
            time.sleep(backoff)
            return backoff
        timeout = min(m.poll_timeout_s for m in members)
        try:
            pending = self._transport.submit(COORDINATOR, "poll_many", entries, timeout)
            with self._lock:  # a member that came or went after we looked: its interrupt() may have
                again = asked != self._asked_again  # missed this call's connection; ask again ourselves
            if again:
                self._transport.interrupt()
                return backoff
            answers = self._transport.result(pending, timeout + min(m.call_timeout_s for m in members),
                                             "the coordinator's poll_many")
        except ErlmcpRayError as exc:
            with self._lock:
                on_purpose = asked != self._asked_again
            if on_purpose:
                return backoff
            log.debug("coherence poll failed: %s", exc)
            time.sleep(backoff + self._rng.random() * backoff)  # jitter: processes must not retry in step
            self._transport.forget(COORDINATOR)
            return min(backoff * 2, 1.0)
        self.polls += 1
        for member, answer in zip(polled, answers, strict=True):
            with self._lock:
                current = self._members.get(member.client_id) is member
            if current:
                member.handle_safely(answer)
        return 0.05


class _NoMembers(Exception):
    """The last member left: the thread stops (the next join starts another)."""
