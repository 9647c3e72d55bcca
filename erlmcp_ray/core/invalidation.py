"""The cache coordinator's state: an ordered log of write notifications, client leases, subscriptions.

Caches stay coherent by version, not by push (Ray Serve's ``long_poll.py`` works the same way):
every write a shard publishes gets the next sequence number of this log, and a client asks "what
changed in my domains since N?". A poll both delivers and acknowledges: a client that polls with
``since_seq=N`` has applied every message up to N. Nothing is lost silently: when the client asks
about messages the log no longer holds, or about a log from another incarnation, the answer says
``gap`` and the client drops its cached entries.

A message is a plain tuple in ``core.wire.PollMessage``'s field order (cheap to pickle and to
hold 100k of: a NamedTuple instance would stay tracked by the garbage collector)::

    (seq, domain, key, hlc, deleted, record, reason)

``record`` is the packed record (value included, see ``core.record``) or None: None either for an
explicit invalidation ("drop this key, whatever version you hold"; hlc 0) or because the client did
not ask for values of that domain. ``reason`` says why: ``WRITE`` (a write's notification),
``RELAXED`` (a write under relaxed coherence: subscribers hear of it, caches are not told to drop
it), ``CONFLICT`` (a version that lost a conflict when a partition healed: subscribers get it as a
``MemoryConflict``; caches keep the winner, whose own ``WRITE`` follows), or an explicit protocol
(``INVALIDATE``, ``TAG``, ``PATTERN``).

A write's notification also names the client that made it (an eighth field, kept in the log and
never sent): a client registered with ``own_writes=False`` is not sent its own writes (Redis's
``CLIENT TRACKING ... NOLOOP``), since it versioned its own cached copy from the write's answer;
it still counts as having acknowledged them. Nothing the owner does itself (an eviction, a
heal's merge) names a client, so every cache hears of that.

Pure: no Ray, time comes from an injected clock. ``actors.coordinator`` holds one of these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from erlmcp_ray.core.record import record_hlc, record_is_deleted
from erlmcp_ray.core.wire import PollAnswer

__all__ = [
    "CONFLICT", "INVALIDATE", "KEEPS_CACHES", "MAX_POLL_MESSAGES", "PATTERN", "RELAXED", "TAG", "WRITE",
    "InvalidationLog", "Message", "PollResult",
]

Message = tuple  # PollMessage's fields

WRITE, RELAXED, INVALIDATE, TAG, PATTERN = "write", "relaxed", "invalidate", "tag", "pattern"
CONFLICT = "conflict"
#: reasons that do not make caches drop the key
KEEPS_CACHES = frozenset((RELAXED, CONFLICT))

#: Messages in one poll answer; a client that is further behind polls again.
MAX_POLL_MESSAGES = 10_000

# Trimmed slots at the head of the list are compacted away once they are this
# many and at least half the list: amortised O(1) per message, O(1) indexing.
_COMPACT_AT = 4096


@dataclass(frozen=True, slots=True)
class PollResult:
    """One answer to ``InvalidationLog.poll``.

    ``last_seq`` is where the client resumes: the answer covers every message with
    ``since_seq < seq <= last_seq`` in the client's domains, and the client passes it as
    ``since_seq`` next time. It is the log's last seq, except when ``messages`` was cut at
    ``MAX_POLL_MESSAGES``: then it is the seq of the last message returned (more follow).

    ``gap`` True means the client cannot catch up by messages: it must drop its cached entries
    (of every domain) and resume at ``last_seq`` (the log's head); ``messages`` is then empty.
    The client must also drop them when ``epoch`` differs from the one it last saw: a new
    coordinator incarnation numbers from 1 again, which ``gap`` alone cannot always tell.
    """

    epoch: int
    last_seq: int
    gap: bool
    messages: list[Message]

    def to_tuple(self, layout: int = 0) -> PollAnswer:
        """``PollAnswer(epoch, last_seq, gap, messages, layout)``: what travels (``layout``: the running
        layout's generation, which the actor knows)."""
        return PollAnswer(self.epoch, self.last_seq, self.gap, self.messages, layout)


@dataclass(slots=True)
class _Client:
    domains: frozenset[str]
    value_domains: frozenset[str]
    expires_at: float
    acked_seq: int = 0
    #: False: not sent notifications of its own writes (unless it takes the domain's values)
    own_writes: bool = True
    #: the client's own counters, as it last sent them with a poll (``erlmcp_ray.telemetry``)
    report: dict | None = None
    #: ``domains | value_domains`` (asking for a domain's values implies wanting its messages, cached
    #: or not), kept by ``set_domains``: every poll and every wait of an invalidation reads it
    receives: frozenset[str] = frozenset()

    def set_domains(self, domains: frozenset[str] | None, value_domains: frozenset[str] | None) -> None:
        if domains is not None:
            self.domains = domains
        if value_domains is not None:
            self.value_domains = value_domains
        self.receives = self.domains | self.value_domains


def _names(domains: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(domains, str):  # frozenset("session") would be a set of letters
        raise TypeError(f"{what} must be an iterable of domain names, not a str")
    return frozenset(domains)


class InvalidationLog:
    """Ordered write notifications, bounded by count and record bytes, plus leases and subscriptions."""

    def __init__(
        self,
        *,
        epoch: int,
        capacity: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        lease_ms: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or max_bytes < 0 or lease_ms <= 0:
            raise ValueError("capacity must be >= 1, max_bytes >= 0 and lease_ms > 0")
        self.epoch = epoch
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._lease_s = lease_ms / 1000.0
        self._clock = clock
        self._log: list[Message | None] = []  # None = trimmed, not yet compacted
        self._head = 0
        self._last_seq = 0
        self._bytes = 0
        self._clients: dict[str, _Client] = {}
        #: polls that moved a client's acknowledged seq forward (what a waiting invalidation waits
        #: for: the coordinator wakes them only when this moved)
        self.acks = 0
        self._sub_domain: dict[str, str | None] = {}
        self._subs: dict[str | None, dict[str, object]] = {}

    # ------------------------------------------------------------------ the log
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """Seq of the oldest message held (``last_seq + 1`` when none is)."""
        return self._last_seq - self._held() + 1

    def _held(self) -> int:
        return len(self._log) - self._head

    def publish(self, items: Iterable[tuple]) -> int:
        """Append ``(domain, key, record[, reason[, hlc[, origin]]])`` items in order; returns the
        new ``last_seq``.

        ``hlc`` only counts when ``record`` is None (a record carries its own). ``origin``: the id
        of the client whose write this is (None: no client's).
        """
        for item in items:
            n = len(item)
            self._append(item[0], item[1], item[2], item[3] if n > 3 else WRITE, item[4] if n > 4 else 0,
                         item[5] if n > 5 else None)
        self._trim()
        return self._last_seq

    def _append(self, domain: str, key: str, record: bytes | None, reason: str, hlc: int,
                origin: str | None = None) -> None:
        self._last_seq += 1
        if record is None:
            # No record: drop cached copies older than ``hlc`` (0: whatever version they are).
            message = (self._last_seq, domain, key, hlc, False, None, reason)
        else:
            message = (self._last_seq, domain, key, record_hlc(record), record_is_deleted(record), record, reason)
            self._bytes += len(record)
        self._log.append(message if origin is None else (*message, origin))

    def _trim(self) -> None:
        while self._held() > self.capacity or (self._bytes > self.max_bytes and self._held()):
            oldest = self._log[self._head]
            self._log[self._head] = None
            self._head += 1
            self._bytes -= len(oldest[5]) if oldest[5] is not None else 0
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._log):
            del self._log[: self._head]
            self._head = 0

    # ------------------------------------------------------------------ clients
    def register(
        self, client_id: str, domains: Iterable[str], value_domains: Iterable[str] = (), own_writes: bool = True
    ) -> tuple[int, int]:
        """Set the domains a client caches / wants values of, and whether it is sent notifications of
        its own writes (see the module doc); renew its lease.

        Returns ``(epoch, last_seq)``: a client with an empty cache starts polling there, since
        older messages are about entries it does not hold.
        """
        self._renew(client_id, domains, value_domains).own_writes = bool(own_writes)
        return self.epoch, self._last_seq

    def knows(self, client_id: str) -> bool:
        """True while ``client_id`` is registered (its lease may have lapsed but not been forgotten)."""
        return client_id in self._clients

    def unregister(self, client_id: str) -> bool:
        return self._clients.pop(client_id, None) is not None

    def _renew(
        self, client_id: str, domains: Iterable[str] | None, value_domains: Iterable[str] | None
    ) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(frozenset(), frozenset(), 0.0)
        if domains is not None or value_domains is not None:
            client.set_domains(None if domains is None else _names(domains, "domains"),
                               None if value_domains is None else _names(value_domains, "value_domains"))
        client.expires_at = self._clock() + self._lease_s
        return client

    def poll(
        self,
        client_id: str,
        since_seq: int,
        domains: Iterable[str] | None = None,
        value_domains: Iterable[str] | None = None,
    ) -> PollResult:
        """Messages after ``since_seq`` for this client; renews its lease (registers it if unknown).

        ``domains`` / ``value_domains`` None keep what the client registered (nothing, if the
        coordinator does not know it: pass them on every poll to survive a coordinator restart).
        """
        client = self._renew(client_id, domains, value_domains)
        last = self._last_seq
        held = len(self._log) - self._head
        if since_seq < last - held or since_seq > last:
            # Either messages the client never saw were trimmed, or it speaks of a log this
            # incarnation never had. It drops its caches, so older messages are moot: resume at the head.
            return PollResult(self.epoch, last, True, [])
        if since_seq > client.acked_seq:
            self.acks += 1
        client.acked_seq = since_seq
        if since_seq == last:  # caught up (the acknowledging poll): nothing to scan
            return PollResult(self.epoch, last, False, [])
        # the message after since_seq is at index head + (since_seq - first_seq + 1), first_seq = last - held + 1
        messages, upto = self._scan(self._head + since_seq - last + held, client,
                                    None if client.own_writes else client_id)
        return PollResult(self.epoch, upto, False, messages)

    def _scan(self, start: int, client: _Client, skip_origin: str | None) -> tuple[list[Message], int]:
        """The client's messages from ``self._log[start]`` on. ``skip_origin``: leave out that client's
        own writes (but not in domains it takes values of)."""
        wanted, values = client.receives, client.value_domains
        out: list[Message] = []
        for i in range(start, len(self._log)):
            message = self._log[i]
            domain = message[1]
            if domain not in wanted:
                continue
            if len(message) > 7:  # names the client whose write it is: that never travels
                if message[7] == skip_origin and domain not in values:
                    continue
                message = message[:7]
            if message[5] is not None and domain not in values:
                message = (*message[:5], None, message[6])  # the client only invalidates: spare it the bytes
            out.append(message)
            if len(out) == MAX_POLL_MESSAGES:
                return out, message[0]
        return out, self._last_seq

    def ack_status(self, seq: int, domains: Iterable[str], now: float | None = None) -> tuple[list[str], list[str]]:
        """Live clients receiving any of ``domains``: which acknowledged ``seq`` (polled past it), which not."""
        now = self._clock() if now is None else now
        wanted = frozenset(domains)
        acked, missing = [], []
        for cid, c in self._clients.items():
            if c.expires_at > now and not wanted.isdisjoint(c.receives):
                (acked if c.acked_seq >= seq else missing).append(cid)
        return acked, missing

    def lease_left(self, client_ids: Iterable[str], now: float | None = None) -> float:
        """Seconds until the first lease among ``client_ids`` runs out (inf for none known; 0 if one
        has): when ``ack_status`` stops counting one of them as missing without it polling."""
        now = self._clock() if now is None else now
        ends = [c.expires_at for c in map(self._clients.get, client_ids) if c is not None]
        return max(0.0, min(ends) - now) if ends else float("inf")

    def snapshot_clients(self) -> dict[str, tuple[list[str], list[str]]]:
        """What a restarted coordinator needs to know of its clients (for ``restore_clients``)."""
        return {cid: (sorted(c.domains), sorted(c.value_domains)) for cid, c in self._clients.items()}

    def restore_clients(self, clients: dict[str, tuple[list[str], list[str]]]) -> None:
        """Re-register clients a previous incarnation knew, with fresh leases and nothing acked:
        a synchronous invalidation then waits for them to catch up (or their leases to lapse)."""
        for cid, (domains, value_domains) in clients.items():
            self._renew(cid, domains, value_domains)

    # ------------------------------------------------------------------ leases
    def expired(self, now: float | None = None) -> list[str]:
        """Clients whose lease (last poll or register + lease_ms) has run out."""
        now = self._clock() if now is None else now
        return [cid for cid, c in self._clients.items() if c.expires_at <= now]

    def live_clients(self, now: float | None = None) -> list[str]:
        now = self._clock() if now is None else now
        return [cid for cid, c in self._clients.items() if c.expires_at > now]

    def forget_expired(self, now: float | None = None) -> list[str]:
        """Unregister clients whose lease ran out, so that clients that went away do not pile up.

        Safe: a forgotten client that comes back is registered again by its next poll, and
        continues from its own ``since_seq``.
        """
        gone = self.expired(now)
        for cid in gone:
            del self._clients[cid]
        return gone

    def report(self, client_id: str, report: dict) -> None:
        """Keep the counters a registered client sent with its poll (an unknown client's are dropped)."""
        client = self._clients.get(client_id)
        if client is not None:
            client.report = report

    def client_reports(self) -> dict[str, dict]:
        """Each registered client's last report: the clients that went away are gone with their leases."""
        return {cid: c.report for cid, c in self._clients.items() if c.report is not None}

    def client_info(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        now = self._clock() if now is None else now
        return {
            cid: {
                "domains": sorted(c.domains),
                "value_domains": sorted(c.value_domains),
                "acked_seq": c.acked_seq,
                "lease_remaining_ms": max(0.0, (c.expires_at - now) * 1000.0),
                "expired": c.expires_at <= now,
            }
            for cid, c in self._clients.items()
        }

    # ------------------------------------------------------------------ subscriptions
    def add_subscription(self, sub_id: str, domain: str | None, target: object) -> None:
        """Deliver updates of ``domain`` (None: of every domain) to ``target``; replaces ``sub_id``."""
        self.remove_subscription(sub_id)
        self._sub_domain[sub_id] = domain
        self._subs.setdefault(domain, {})[sub_id] = target

    def remove_subscription(self, sub_id: str) -> bool:
        if sub_id not in self._sub_domain:
            return False
        domain = self._sub_domain.pop(sub_id)
        del self._subs[domain][sub_id]
        if not self._subs[domain]:
            del self._subs[domain]
        return True

    def subscriptions(self) -> list[tuple[str, str | None, object]]:
        """Every ``(sub_id, domain, target)``."""
        return [(sid, domain, self._subs[domain][sid]) for sid, domain in self._sub_domain.items()]

    @property
    def subscribed(self) -> bool:
        """Whether any actor subscribes to anything (publishing checks it once per batch)."""
        return bool(self._subs)

    def subscriptions_for(self, domain: str | None) -> list[tuple[str, object]]:
        """``(sub_id, target)`` to deliver an update of ``domain`` to: its own, then all-domain ones."""
        everything = list(self._subs.get(None, {}).items())
        if domain is None:
            return everything
        return [*self._subs.get(domain, {}).items(), *everything]

    # ------------------------------------------------------------------ inspection
    def stats(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "last_seq": self._last_seq,
            "first_seq": self.first_seq,
            "messages": self._held(),
            "bytes": self._bytes,
            "capacity": self.capacity,
            "max_bytes": self.max_bytes,
            "clients": len(self._clients),
            "live_clients": len(self.live_clients()),
            "subscriptions": len(self._sub_domain),
        }
