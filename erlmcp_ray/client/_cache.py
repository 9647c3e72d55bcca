"""The client's local tiers: L0 (a tiny hot map) and L1 (a byte-bounded LRU per domain).

No Ray here. Every change of L0 or L1 happens under one lock, except what the two
hot paths do: an L0 hit reads without it, and ``store_pending`` (an eventual put)
writes without it. Entries hold the encoded value (never the object handed to the
caller: every ``get`` decodes a fresh one, so a caller mutating what it got
cannot change what the next ``get`` sees), the version's HLC timestamp, and
when and how stale it was fetched (for bounded_stale reads).

Coherence bookkeeping: an invalidation drops a cached entry older than the
version it announces. A fetch that was in flight while an invalidation for its
key was processed must not cache its (possibly older) answer; ``begin_fetch``
hands out a token (the invalidation sequence at that moment) that ``store``
checks. The map of recent invalidations is bounded; a fetch older than what it
still remembers simply is not cached.

Our own unacknowledged writes: ``store_pending`` first notes the write in
``_pending`` and then puts it in L0, without the lock. Everything that writes L0
or L1 under the lock (a fetched answer, an acknowledgement, a promotion) refuses a
key with a pending write and, after writing, looks again (``_yield_to_pending``):
a pending write noted meanwhile wins, and the older entry is taken back out. So
no older version can be left in front of a write this client has made, whatever
the interleaving, and the put path never waits for the coherence or write-behind
threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from erlmcp_ray.eviction import LRUCache

__all__ = ["PENDING", "CacheEntry", "LocalCache"]

#: The HLC of a write this client buffered that no owner has versioned yet: newer than anything.
PENDING = 1 << 64
_ENTRY_OVERHEAD = 120  # bytes counted per L1 entry beyond key and value


#: A cached entry is a plain tuple ``(data, hlc, fetched_at, stale_ms, record)``: plain
#: tuples of atomic values are untracked by the garbage collector, so a large cache
#: adds nothing to collection pauses (a tuple subclass would stay tracked).
CacheEntry = tuple


class LocalCache:
    def __init__(
        self,
        l0_entries: int = 256,
        l1_max_bytes: int = 64 * 1024 * 1024,
        *,
        clock: Callable[[], float] = time.monotonic,
        l1_factory: Callable[[str, int, Callable[[Any], int]], Any] | None = None,
        remember_invalidations: int = 65536,
        max_age_s: float = float("inf"),
    ) -> None:
        self._clock = clock
        self._max_age_s = max_age_s
        self._l0: dict[tuple[str, str], CacheEntry] = {}
        # our writes not yet acknowledged: key -> encoded value (set without the lock, see above)
        self._pending: dict[tuple[str, str], bytes] = {}
        self._l0_entries = l0_entries
        self._l1: dict[str, Any] = {}
        self._l1_max_bytes = l1_max_bytes
        # (domain, maxsize, getsizeof) -> a cachetools-style cache: the domain's eviction policy
        self._l1_factory = l1_factory or (lambda _domain, maxsize, getsizeof: LRUCache(maxsize, getsizeof))
        self._lock = threading.Lock()
        self._seq = 0  # invalidations processed
        # key -> (seq of the last invalidation, highest version announced, seq of the last
        # unconditional invalidation)
        self._recent: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()
        self._remember = remember_invalidations
        self._forgotten_upto = 0
        self.hits_l0 = self.hits_l1 = self.misses = self.invalidations = 0

    # ------------------------------------------------------------------ reads
    def lookup(self, domain: str, key: str, max_stale_ms: float | None = None,
               now: float | None = None) -> CacheEntry | None:
        """The cached entry if present, younger than ``max_age_s`` and, with ``max_stale_ms``,
        fresh enough. ``now``: the clock's reading, if the caller has just taken one.

        An L0 hit takes no lock (one dict read: it sees the entry or not, and ``invalidate``
        removes it under the lock). An L1 hit is checked and promoted into L0 under the lock, so
        an invalidation can never fall between the check and the promotion and be undone.
        """
        k = (domain, key)
        e = self._l0.get(k)
        if e is None:
            with self._lock:
                l1 = self._l1.get(domain)
                e = None if l1 is None else l1.get(k)
                if e is None or not self._usable(e, max_stale_ms, now):
                    self.misses += 1
                    return None
                self.hits_l1 += 1
                self._promote(k, e)
                self._yield_to_pending(k, l1)
                return e
        if not self._usable(e, max_stale_ms, now):
            self.misses += 1
            return None
        self.hits_l0 += 1
        return e

    def _usable(self, e: CacheEntry, max_stale_ms: float | None, now: float | None = None) -> bool:
        if e[1] == PENDING:
            return True  # our own write: read-your-writes beats any window
        age = (self._clock() if now is None else now) - e[2]
        # Past max_age_s an entry is not served even without an invalidation: a lost
        # message can leave a copy stale for at most that long (the client's lease).
        if age > self._max_age_s:
            return False
        return max_stale_ms is None or age * 1000.0 + e[3] <= max_stale_ms

    def _promote(self, k: tuple[str, str], e: CacheEntry) -> None:
        """Put ``e`` in L0 (caller holds the lock; ``store_pending`` may write L0 meanwhile)."""
        l0 = self._l0
        if k not in l0 and len(l0) >= self._l0_entries:
            try:  # FIFO: dicts keep insertion order; cheaper than LRU bookkeeping
                del l0[next(iter(l0))]
            except (StopIteration, KeyError, RuntimeError):
                pass
        l0[k] = e

    def _yield_to_pending(self, k: tuple[str, str], l1: Any) -> bool:
        """After writing ``k`` under the lock: if a write of ours is pending, it is what L0 must
        show, and no older version may stay in L1 (caller holds the lock)."""
        data = self._pending.get(k)
        if data is None:
            return False
        if l1 is not None:
            l1.pop(k, None)
        self._l0[k] = (data, PENDING, 0.0, 0.0, None)
        return True

    # ----------------------------------------------------------------- writes
    def begin_fetch(self) -> int:
        """A token for a remote read about to start; pass it to ``store``."""
        return self._seq

    def store_pending(self, domain: str, key: str, data: bytes, k: tuple[str, str] | None = None) -> None:
        """Our own buffered write: noted, then shown in L0 until ``acknowledge`` (on the
        write-behind thread) caches it with its version. No lock (the eventual put path): the
        note comes first, and every locked writer checks it after writing (see the module doc).
        Should L0 drop the entry, reads find the write in the buffer or at the owner.
        ``k``: ``(domain, key)`` if the caller has one already."""
        if k is None:
            k = (domain, key)
        self._pending[k] = data
        l0 = self._l0
        if k not in l0 and len(l0) >= self._l0_entries:
            try:
                del l0[next(iter(l0))]
            except (StopIteration, KeyError, RuntimeError):
                pass  # another thread changed L0 meanwhile; it stays bounded
        l0[k] = (data, PENDING, 0.0, 0.0, None)
        l1 = self._l1.get(domain)
        if l1 is not None and k in l1:  # an older cached version must not outlive L0's copy
            with self._lock:
                l1.pop(k, None)

    def forget_pending(self, domain: str, key: str, data: bytes) -> None:
        """Our write of ``data`` will never be acknowledged (it failed, or a newer one superseded it)."""
        self._unnote((domain, key), data)
        self.drop(domain, key)

    def _unnote(self, k: tuple[str, str], data: bytes) -> None:
        # Remove the note only if it is still ``data``; store_pending may set a newer one at any
        # moment, and setdefault puts back what we took only if nothing newer arrived.
        cur = self._pending.pop(k, None)
        if cur is not None and cur is not data:
            self._pending.setdefault(k, cur)

    def store(self, domain: str, key: str, data: bytes, hlc: int, stale_ms: float = 0.0,
              record: bytes | None = None, token: int | None = None) -> bool:
        """Cache a value; False (not cached) when an invalidation overtook the fetch, or a write of
        ours is pending (it is newer than anything fetched or written before it)."""
        k = (domain, key)
        with self._lock:
            if k in self._pending:
                return False
            if token is not None and hlc != PENDING:
                if token < self._forgotten_upto:
                    return False
                seen = self._recent.get(k)
                # Never cache a version older than one announced (a lagging replica's answer),
                # nor anything fetched while an unconditional invalidation of the key went by.
                if seen is not None and (seen[1] > hlc or seen[2] > token):
                    return False
            l1 = self._l1.get(domain)
            # Nor one older than what is cached: our own acknowledged write, say, overtaken by a
            # read begun before it (the coordinator sends no message of our own writes to undo that).
            cur = self._l0.get(k) or (None if l1 is None else l1.get(k))
            if cur is not None and cur[1] > hlc:
                return False
            e = (data, hlc, self._clock(), stale_ms, record)
            if l1 is None:
                l1 = self._l1[domain] = self._l1_factory(domain, self._l1_max_bytes, _entry_size)
            try:
                l1[k] = e
            except ValueError:  # larger than the whole L1: serve it, don't cache it
                l1.pop(k, None)
                self._l0.pop(k, None)
                return False
            self._promote(k, e)
            return not self._yield_to_pending(k, l1)

    def acknowledge(self, domain: str, key: str, data: bytes, hlc: int) -> None:
        """Our pending write of ``data`` got version ``hlc``: cache it with that version, unless a
        newer version was announced meanwhile or a newer write of ours replaced it."""
        self.acknowledge_many(domain, [(key, data)], [hlc])

    def acknowledge_many(self, domain: str, ops: list, hlcs: list[int], chunk: int = 256) -> None:
        """``acknowledge`` for a batch's ops (WriteOp tuples) and their versions (0 or less: none);
        one lock round per ``chunk``, one clock reading for the batch (its answer came at once).

        The write-behind thread runs this for every eventual write: kept flat on purpose (one
        function call and clock reading per write cost an eighth of it)."""
        now = self._clock()
        pending, recent, l0 = self._pending, self._recent, self._l0
        l1 = self._l1.get(domain)
        if l1 is None:
            with self._lock:
                l1 = self._l1.get(domain)
                if l1 is None:
                    l1 = self._l1[domain] = self._l1_factory(domain, self._l1_max_bytes, _entry_size)
        for i in range(0, len(ops), chunk):
            with self._lock:
                for op, hlc in zip(ops[i : i + chunk], hlcs[i : i + chunk]):
                    if hlc <= 0:
                        continue
                    k = (domain, op[0])
                    data = op[1]
                    if pending.get(k) is not data:
                        continue  # a newer write of ours is pending (or this one was forgotten)
                    seen = recent.get(k)
                    if seen is not None and seen[1] > hlc:
                        l0.pop(k, None)  # a newer version was announced meanwhile
                    else:
                        new = (data, hlc, now, 0.0, None)
                        try:
                            l1[k] = new
                        except ValueError:  # larger than the whole L1
                            l0.pop(k, None)
                        else:
                            if k in l0:
                                l0[k] = new
                    # Take our note away, unless store_pending put a newer one meanwhile (see
                    # _unnote) ... and if one is there now, it is what L0 must show.
                    cur = pending.pop(k, None)
                    if cur is not None and cur is not data:
                        pending.setdefault(k, cur)
                    if k in pending:
                        self._yield_to_pending(k, l1)

    def invalidate(self, domain: str, key: str, hlc: int = 0) -> bool:
        """Drop ``key`` if the cached version is older than ``hlc`` (0: drop whatever is cached)."""
        with self._lock:
            return self._invalidate(domain, (domain, key), hlc)

    def invalidate_many(self, items: Iterable[tuple[str, str, int]], chunk: int = 256) -> int:
        """``invalidate`` for ``(domain, key, hlc)`` items: one lock round per ``chunk``; how many
        were looked at. Pass a generator: a list of a poll's thousands of tuples would all be alive
        at once, for the garbage collector to count."""
        it = iter(items)
        seen = 0
        while True:
            n = 0
            with self._lock:
                for domain, key, hlc in it:
                    self._invalidate(domain, (domain, key), hlc)
                    n += 1
                    if n == chunk:
                        break
            seen += n
            if n < chunk:
                return seen

    def _invalidate(self, domain: str, k: tuple[str, str], hlc: int) -> bool:
        self._seq += 1
        self._remember_invalidation(k, hlc)
        l1 = self._l1.get(domain)
        e = None if l1 is None else l1.get(k)
        e = e or self._l0.get(k)
        if e is None:
            return False
        if hlc and (e[1] >= hlc):
            return False  # cached is as new or newer (our own pending write, or already this one)
        if l1 is not None:
            l1.pop(k, None)
        self._l0.pop(k, None)
        self.invalidations += 1
        return True

    def _remember_invalidation(self, k: tuple[str, str], hlc: int) -> None:
        prev = self._recent.pop(k, None) or (0, 0, 0)
        if hlc:
            self._recent[k] = (self._seq, max(hlc, prev[1]), prev[2])
        else:
            self._recent[k] = (self._seq, prev[1], self._seq)
        if len(self._recent) > self._remember:
            _, (seq, _, _) = self._recent.popitem(last=False)
            self._forgotten_upto = max(self._forgotten_upto, seq)

    def drop(self, domain: str, key: str) -> None:
        with self._lock:
            self._seq += 1
            self._remember_invalidation((domain, key), 0)
            l1 = self._l1.get(domain)
            if l1 is not None:
                l1.pop((domain, key), None)
            self._l0.pop((domain, key), None)

    def drop_domains(self, domains: set[str] | None = None) -> int:
        """Forget every cached entry (of ``domains``); in-flight fetches will not cache either."""
        with self._lock:
            self._seq += 1
            self._forgotten_upto = self._seq
            n = 0
            for d, l1 in list(self._l1.items()):
                if domains is None or d in domains:
                    n += len(l1)
                    for k in list(l1):  # not clear(): cachetools clears via popitem, which counts evictions
                        del l1[k]
            for k in [k for k in self._l0 if domains is None or k[0] in domains]:
                del self._l0[k]
            return n

    # ------------------------------------------------------------------ stats
    def evictions(self) -> int:
        with self._lock:
            return sum(c.evictions for c in self._l1.values())

    def sizes(self) -> tuple[int, int, int]:
        """(L0 entries, L1 entries, L1 bytes)."""
        with self._lock:
            return len(self._l0), sum(len(c) for c in self._l1.values()), sum(c.currsize for c in self._l1.values())

    def stats(self) -> dict[str, Any]:
        l0, l1, l1_bytes = self.sizes()
        hits = self.hits_l0 + self.hits_l1
        total = hits + self.misses
        return {
            "hits": hits, "l0_hits": self.hits_l0, "l1_hits": self.hits_l1, "misses": self.misses,
            "hit_rate": hits / total if total else 0.0, "evictions": self.evictions(),
            "invalidations": self.invalidations, "l0_size": l0, "l1_size": l1, "l1_bytes": l1_bytes,
        }


def _entry_size(e: CacheEntry) -> int:
    return len(e[0]) + (len(e[4]) if e[4] is not None else 0) + _ENTRY_OVERHEAD
