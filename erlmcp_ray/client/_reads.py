"""The read path past the local cache: own buffered writes, replica or owner, single-flight fetches.

A miss goes to a replica when the level allows it (eventual, or bounded_stale within the
domain's window: a replica staler than that answers "stale" and the read goes to the owner),
else to the owner: for strong reads, one-copy domains, and keys this client wrote in the last
``own_write_window_s`` (read-your-writes across a cache miss).

Stampede protection: concurrent misses of one key in this client share fetches — but a read
only shares a fetch that *started after the read was invoked*. A fetch that started earlier may
have been answered before a write this reader has seen (its own strong put, say) and would
hand it an older value: for strong reads that breaks linearizability, for the others
read-your-writes. Readers that arrive while a fetch is running share one follow-up fetch,
started when the running one ends.

A fetched answer is cached only if no invalidation of its key went by meanwhile (the cache's
fetch token), and a new owner incarnation (Ray restarted the owner, which recovered from a
replica that may lack the last writes) drops what this client cached of that domain.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable

from erlmcp_ray.client._cache import PENDING, LocalCache
from erlmcp_ray.client._settings import ClientSettings, DomainRoute
from erlmcp_ray.client._stats import Counters, Latencies
from erlmcp_ray.client._topology import Topology
from erlmcp_ray.client._transport import Copy, Retry, Transport
from erlmcp_ray.client._write_behind import WriteBehind
from erlmcp_ray.config import Consistency
from erlmcp_ray.core import record as R
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import OK, WriteOp
from erlmcp_ray.errors import OperationTimeoutError, UnavailableError

__all__ = ["OwnWrites", "ReadPath"]

STRONG, BOUNDED = Consistency.STRONG, Consistency.BOUNDED_STALE

#: acknowledged strong writes a client remembers for its own reads (``ReadPath.note_acked``)
_ACKED_CAPACITY = 100_000


class OwnWrites:
    """When this client last wrote each key, for read-your-writes across a cache miss.

    ``note`` is one dict assignment (atomic under the GIL: no lock on the put path). Memory is
    bounded by two generations of ``capacity // 2`` keys: when the current one fills, it becomes
    the old one and the older is forgotten whole (O(1), no scan or sort on the put path). The
    last ``capacity // 2`` keys noted are always remembered; a forgotten key is only read from a
    replica sooner than it would have been.
    """

    def __init__(self, window_s: float, capacity: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 2:
            raise ValueError(f"OwnWrites capacity must be at least 2, got {capacity}")
        self._window_s, self._half, self._clock = window_s, capacity // 2, clock
        self._rotate_lock = threading.Lock()
        self._at: dict[tuple[str, str], float] = {}
        self._old: dict[tuple[str, str], float] = {}

    def note(self, domain: str, key: str, k: tuple[str, str] | None = None) -> None:
        """``k``: ``(domain, key)`` if the caller has one already."""
        at = self._at
        at[(domain, key) if k is None else k] = self._clock()
        if len(at) >= self._half:
            self._rotate(at)

    def _rotate(self, full: dict) -> None:
        with self._rotate_lock:
            if self._at is full:  # another thread may have rotated it already
                self._old, self._at = full, {}

    def recent(self, domain: str, key: str) -> bool:
        k = (domain, key)
        t = self._at.get(k)
        if t is None:
            t = self._old.get(k)
        return t is not None and self._clock() - t < self._window_s

class _Flight:
    """One remote read that readers of the same key invoked before it started may share.

    Done-ness is a gate: a lock held from creation until ``done`` releases it; a waiter passes by
    taking and giving it back, so every waiter passes once it is open. (A ``threading.Event`` is a
    Condition and two locks to build and a ``notify_all`` to set: ~5 us on every strong get, which
    almost never has a second reader to wake.)"""

    __slots__ = ("_gate", "error", "next", "result", "started")

    def __init__(self, started: int | None) -> None:
        self.started = started  # None: a follow-up fetch that has not started yet
        self.next: _Flight | None = None  # the follow-up, for readers that came after this one started
        self._gate = threading.Lock()
        self._gate.acquire()
        self.result: bytes | None = None
        self.error: BaseException | None = None

    def done(self, result: bytes | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._gate.release()  # once: only the fetch's leader calls done

    def finished(self, timeout: float) -> bool:
        if not self._gate.acquire(True, max(0.0, timeout)):
            return False
        self._gate.release()
        return True

    def wait(self, timeout: float) -> bytes | None:
        if not self.finished(timeout):
            raise OperationTimeoutError(f"a shared fetch did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class ReadPath:
    def __init__(self, *, transport: Transport, retry: Retry, settings: ClientSettings, cache: LocalCache,
                 write_behind: WriteBehind, own_writes: OwnWrites, counters: Counters, latencies: Latencies,
                 topology: Topology, rng: random.Random | None = None) -> None:
        self._transport, self._retry, self._settings = transport, retry, settings
        self._topology = topology
        self._cache, self._wb, self._own = cache, write_behind, own_writes
        self._counters, self._latencies = counters, latencies
        self._rng = rng or random.Random()
        self._ticks = itertools.count()  # orders read invocations and fetch starts
        self._flights: dict[tuple, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._incarnations: dict[tuple[str, int], str] = {}
        self._inc_lock = threading.Lock()
        #: (domain, key) -> (owner incarnation, seq) of this client's last acknowledged strong write of
        #: the key: a strong read passes it on, and the owner need not ask its replicas to confirm it
        self._acked: dict[tuple[str, str], tuple[str, int]] = {}

    def note_acked(self, domain: str, keys: list[str], incarnation: str, seq: int) -> None:
        """A strong round was acknowledged: ``min_insync`` copies hold these keys' writes."""
        if len(self._acked) > _ACKED_CAPACITY:
            self._acked = {}  # forgotten: a read of one of them costs the owner a replication round
        acked = self._acked
        for key in keys:
            acked[(domain, key)] = (incarnation, seq)

    def read(self, d: DomainRoute, key: str, level: Consistency) -> bytes | None:
        """The live record of ``key`` (a pending one for our own buffered write), or None."""
        invoked = next(self._ticks)
        shard = shard_for(key, d.shards)
        pending = self._wb.peek(d.name, shard, key)
        if pending is not None and pending[1] is not None:
            return pending_record(pending)
        flight_key = (d.name, key, level is STRONG)
        with self._flights_lock:
            current = self._flights.get(flight_key)
            previous = None
            if current is None:
                flight, lead = _Flight(next(self._ticks)), True
                self._flights[flight_key] = flight
            elif current.started > invoked:
                flight, lead = current, False  # it started after we were invoked: its answer is fresh enough
            elif current.next is None:
                # It started before we were invoked: we lead a follow-up fetch, which every reader
                # arriving meanwhile shares (a stampede costs two fetches, not one per reader).
                flight, lead, previous = _Flight(None), True, current
                current.next = flight
            else:
                flight, lead = current.next, False  # a follow-up not started yet: it starts after now
        timeout = self._settings.call_timeout_s
        if not lead:
            self._counters.add("shared_fetches")
            return flight.wait(timeout * 2)  # the follow-up waits for the fetch before it
        if previous is not None:
            previous.finished(timeout)
            with self._flights_lock:
                flight.started = next(self._ticks)
                self._flights[flight_key] = flight
        try:
            rec = self._fetch(d, shard, key, level)
            flight.done(rec, None)
            return rec
        except BaseException as exc:
            flight.done(None, exc)
            raise
        finally:
            with self._flights_lock:
                if self._flights.get(flight_key) is flight and flight.next is None:
                    del self._flights[flight_key]

    def _fetch(self, d: DomainRoute, shard: int, key: str, level: Consistency) -> bytes | None:
        token = self._cache.begin_fetch()
        t0 = time.perf_counter()
        to_owner = level is STRONG or d.copies == 1 or self._own.recent(d.name, key)
        rec, staleness = None, 0.0
        timeout = self._settings.call_timeout_s
        if not to_owner:
            target = Copy(d.name, shard, self._rng.choice(d.replicas(shard)))  # d: copies > 1
            limit = d.staleness_ms if level is BOUNDED else self._settings.replica_fresh_limit_ms
            try:
                answer = self._transport.call(target, "read", key, limit, timeout=timeout)
                self._counters.add("replica_reads")
                rec, staleness = answer.record, answer.staleness_ms
                if answer.status != OK:
                    to_owner = True
                    self._counters.add("stale_replica_fallbacks")
            except UnavailableError:
                self._transport.forget(target)
                to_owner = True
        if to_owner:
            topo = self._topology
            answer = self._retry.run(
                lambda: topo.call_owner(d.name, shard, "read", key, None, self._acked.get((d.name, key)),
                                        timeout=timeout),
                on_unavailable=lambda: topo.owner_failed(d.name, shard))
            rec, staleness = answer.record, answer.staleness_ms
            self._counters.add("owner_reads")
            if not self.same_owner(d.name, shard, answer.incarnation):
                token = self._cache.begin_fetch()  # taken after the drop: this answer may be cached
        self._latencies.add("remote_get", time.perf_counter() - t0)
        if rec is not None:
            self._cache.store(d.name, key, R.record_value(rec), R.record_hlc(rec), staleness, rec, token)
        return rec

    def same_owner(self, domain: str, shard: int, incarnation: str) -> bool:
        """Note the owner's incarnation; a new one (Ray restarted it, and it recovered from a
        replica that may lack the last writes) makes us drop what we cached of its domain."""
        with self._inc_lock:
            seen = self._incarnations.get((domain, shard))
            self._incarnations[(domain, shard)] = incarnation
        if seen is None or seen == incarnation:
            return True
        self._counters.add("owner_restarts_seen")
        self._cache.drop_domains({domain})
        return False


def pending_record(op: WriteOp) -> bytes:
    """A record for a write still in our buffer (no version yet), so reads see our own writes."""
    return R.pack({}, PENDING - 1, 0, op[1] or b"", deleted=op[1] is None, tags=op[3])
