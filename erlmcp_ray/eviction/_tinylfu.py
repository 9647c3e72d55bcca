"""W-TinyLFU (Einziger, Friedman & Manes, 2017), laid out as Caffeine's ``BoundedLocalCache``.

    window     a small LRU (1% of maxsize) that every new key enters
    probation  main's SLRU entry segment; window evictees arrive here as candidates
    protected  main's SLRU hot segment (80% of main); a probation hit promotes, overflow demotes
    sketch     a count-min sketch of 4-bit counters, halved every 10 x capacity additions (aging)

When the cache is over its bound, the candidate (newest arrival in probation) duels the
victim (probation's LRU): the one the sketch has seen less often is evicted. As in Caffeine, a
warm candidate that loses is still admitted with probability 1/128, so an attacker who keeps
a victim hot through hash collisions cannot pin it. The window starts at 1% and is then sized by Caffeine's hill climber: once per sample
(10 x capacity requests) it moves the window/main split a step in the direction that raised the
hit rate, with a decaying step that restarts after a large change. Without it (``adaptive=False``,
Caffeine's simulator "WindowTinyLfu") recency-skewed traces such as OLTP lose to ARC.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["FrequencySketch", "TinyLFUCache"]

_HALVE = bytes(v >> 1 for v in range(256))
_ODD = bytes(v & 1 for v in range(256))
_SEED = 0x5BD1E995
_HASHDOS_THRESHOLD = 6  # Caffeine's ADMIT_HASHDOS_THRESHOLD
_CLIMB = [10]
# Caffeine's hill climber: first step 6.25% of maxsize, decaying 2% per sample, restarted by a
# hit-rate change of 5 points; at most 1000 entries move between segments per operation.
_STEP_PERCENT, _STEP_DECAY, _RESTART_THRESHOLD, _TRANSFER_LIMIT = 0.0625, 0.98, 0.05, 1000


def _lru_size(segment: OrderedDict) -> float:
    """Size of a segment's LRU entry; infinite when empty, so no quota ever covers it."""
    return next(iter(segment.values())) if segment else float("inf")


class FrequencySketch:
    """Approximate access counts (0-15) of a key stream: 16 counters per expected entry, 4 per key.

    The four counters of a key come from one 64-bit hash by double hashing; ``frequency`` is
    their minimum. After ``sample_size`` (10 x capacity) additions every counter is halved, so
    popularity fades (TinyLFU's reset). Counters are bytes of one ``bytearray``: a read is a
    C-level index, and the halving is one ``translate``.
    """

    __slots__ = ("capacity", "sample_size", "_table", "_mask", "_additions")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        width = 16 << max(self.capacity - 1, 1).bit_length()  # 16 x next power of two
        self._table = bytearray(width)
        self._mask = width - 1
        self.sample_size = 10 * self.capacity
        self._additions = 0

    def _slots(self, key: Hashable) -> tuple[int, int, int, int]:
        h = hash((key, _SEED))
        a, b, m = h & 0xFFFFFFFF, (h >> 32) | 1, self._mask  # b odd: four distinct slots
        return a & m, (a + b) & m, (a + 2 * b) & m, (a + 3 * b) & m

    def frequency(self, key: Hashable) -> int:
        t = self._table
        i, j, k, l = self._slots(key)
        return min(t[i], t[j], t[k], t[l])

    def increment(self, key: Hashable) -> None:
        t = self._table
        added = False
        for i in self._slots(key):
            v = t[i]
            if v < 15:
                t[i] = v + 1
                added = True
        if added:
            self._additions += 1
            if self._additions >= self.sample_size:
                self._reset()

    def _reset(self) -> None:
        # Halving drops half a count from every odd counter; a key has four, hence the /4 (as Caffeine).
        odd = self._table.translate(_ODD).count(1)
        self._table = self._table.translate(_HALVE)
        self._additions = (self._additions - (odd >> 2)) >> 1


class TinyLFUCache(Cache):
    """W-TinyLFU: an LRU window in front of a frequency-filtered segmented-LRU main space."""

    __slots__ = ("_window", "_probation", "_protected", "_sw", "_spb", "_spt",
                 "_window_max", "_protected_max", "_sketch", "_rng", "_candidates",
                 "_adaptive", "_sample_hits", "_sample_misses", "_prev_rate", "_step", "_adjustment")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 window: float = 0.01, protected: float = 0.80, adaptive: bool = True,
                 rng: random.Random | None = None, expected_entries: int | None = None,
                 on_evict: OnEvict | None = None) -> None:
        if not (0.0 <= window <= 1.0 and 0.0 <= protected <= 1.0):
            raise ValueError("window and protected are fractions in [0, 1]")
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        # As Caffeine: window = maxsize - floor(99% of maxsize), protected = floor(80% of main).
        self._window_max = maxsize - int(maxsize * (1.0 - window))
        self._protected_max = int((maxsize - self._window_max) * protected)
        self._window: OrderedDict = OrderedDict()  # key -> size, LRU first (all three)
        self._probation: OrderedDict = OrderedDict()
        self._protected: OrderedDict = OrderedDict()
        self._sw = self._spb = self._spt = 0
        if expected_entries is None:  # byte-bounded: guess 256 B per entry; the sketch grows if wrong
            expected_entries = maxsize if getsizeof is None else maxsize // 256
        self._sketch = FrequencySketch(min(max(expected_entries, 16), 1 << 24))
        self._rng = rng if rng is not None else random.Random()
        self._candidates = 0
        self._adaptive = adaptive
        self._sample_hits = self._sample_misses = self._adjustment = 0
        self._prev_rate = 0.0
        self._step = -_STEP_PERCENT * maxsize

    def segment_sizes(self) -> dict[str, int]:
        """Sizes of the three segments, and the window's and protected segment's current quotas."""
        return {"window": self._sw, "probation": self._spb, "protected": self._spt,
                "window_max": self._window_max, "protected_max": self._protected_max}

    def frequency(self, key: Hashable) -> int:
        """The sketch's estimate (0-15) of how often ``key`` was accessed recently."""
        return self._sketch.frequency(key)

    # ----------------------------------------------------------------- hits
    def _touch(self, key: Hashable) -> None:
        self._sketch.increment(key)
        self._sample_hits += 1
        if key in self._window:
            self._window.move_to_end(key)
        elif key in self._protected:
            self._protected.move_to_end(key)
        else:
            self._promote(key)

    def _promote(self, key: Hashable) -> None:
        """A probation hit moves to protected; protected's overflow goes back to probation's MRU end."""
        size = self._probation.pop(key)
        self._spb -= size
        self._protected[key] = size
        self._spt += size
        self._demote()

    def _demote(self) -> None:
        while self._spt > self._protected_max and len(self._protected) > 1:
            k, s = self._protected.popitem(last=False)
            self._spt -= s
            self._probation[k] = s
            self._spb += s

    # --------------------------------------------------------------- misses
    def _admit(self, key: Hashable, size: int) -> None:
        if len(self._data) > self._sketch.capacity:  # grown past the guess: a wider sketch (Caffeine's ensureCapacity)
            self._sketch = FrequencySketch(2 * self._sketch.capacity)
        self._sketch.increment(key)
        self._window[key] = size
        self._sw += size
        while self._sw > self._window_max and len(self._window) > 1:
            k, s = self._window.popitem(last=False)  # the window's LRU becomes a candidate for main
            self._sw -= s
            self._probation[k] = s
            self._spb += s
            self._candidates += 1
        while self.currsize + size > self.maxsize:
            self._evicted(self._select_victim())
        self._candidates = 0
        if self._adaptive:
            self._sample_misses += 1
            if self._sample_hits + self._sample_misses >= _CLIMB[0] * max(self.maxsize, 1):
                self._determine_adjustment()
            if self._adjustment:
                self._adjust_window()

    def _select_victim(self) -> Hashable:
        """Caffeine's evictFromMain: candidate (newest in probation) against victim (oldest)."""
        probation = self._probation
        if not probation:
            return self._pop_lru(self._protected) if self._protected else self._pop_lru(self._window)
        victim = next(iter(probation))
        if self._candidates:
            candidate = next(reversed(probation))
            if candidate is victim or not self._admit_candidate(candidate, victim):
                self._candidates -= 1
                victim = candidate
        self._spb -= probation.pop(victim)
        return victim

    def _admit_candidate(self, candidate: Hashable, victim: Hashable) -> bool:
        victim_freq = self._sketch.frequency(victim)
        candidate_freq = self._sketch.frequency(candidate)
        if candidate_freq > victim_freq:
            return True
        return candidate_freq >= _HASHDOS_THRESHOLD and self._rng.random() < 1 / 128

    def _pop_lru(self, segment: OrderedDict) -> Hashable:
        key, size = segment.popitem(last=False)
        if segment is self._window:
            self._sw -= size
        elif segment is self._probation:
            self._spb -= size
        else:
            self._spt -= size
        return key

    # ---------------------------------------------------------- hill climber
    def _determine_adjustment(self) -> None:
        """Caffeine's determineAdjustment: step the same way if the hit rate did not drop."""
        hits, requests = self._sample_hits, self._sample_hits + self._sample_misses
        self._sample_hits = self._sample_misses = 0
        if 2 * (self.currsize + 1) < self.maxsize:  # Caffeine samples only once half full
            self._prev_rate = 0.0
            return
        rate = hits / requests
        change = rate - self._prev_rate
        amount = self._step if change >= 0 else -self._step
        if abs(change) >= _RESTART_THRESHOLD:
            self._step = _STEP_PERCENT * self.maxsize * (1 if amount >= 0 else -1)
        else:
            self._step = _STEP_DECAY * amount
        self._prev_rate = rate
        self._adjustment = int(amount)

    def _adjust_window(self) -> None:
        """Move quota (and up to 1000 entries) between window and main; what is left waits."""
        if self._adjustment > 0:
            self._grow_window()
        else:
            self._shrink_window()

    def _grow_window(self) -> None:
        if self._protected_max == 0:
            return
        quota = min(self._adjustment, self._protected_max)
        self._protected_max -= quota
        self._window_max += quota
        self._demote()
        for _ in range(_TRANSFER_LIMIT):
            segment = self._probation if quota >= _lru_size(self._probation) else self._protected
            size = _lru_size(segment)
            if quota < size:
                break
            key = self._pop_lru(segment)
            quota -= size
            self._window[key] = size
            self._sw += size
        self._protected_max += quota
        self._window_max -= quota
        self._adjustment = quota

    def _shrink_window(self) -> None:
        if self._window_max <= 1:
            return
        quota = min(-self._adjustment, max(0, self._window_max - 1))
        self._protected_max += quota
        self._window_max -= quota
        for _ in range(_TRANSFER_LIMIT):
            size = _lru_size(self._window)
            if quota < size:
                break
            key = self._pop_lru(self._window)
            quota -= size
            self._probation[key] = size
            self._spb += size
        self._protected_max -= quota
        self._window_max += quota
        self._adjustment = -quota

    # ------------------------------------------------------ deletes, resizes
    def _unlink(self, key: Hashable) -> None:
        size = self._window.pop(key, None)
        if size is not None:
            self._sw -= size
        elif key in self._probation:
            self._spb -= self._probation.pop(key)
        else:
            self._spt -= self._protected.pop(key)

    def _victim(self) -> Hashable:
        return self._select_victim()

    def _resize(self, key: Hashable, delta: int) -> None:
        if key in self._window:
            self._window[key] += delta
            self._sw += delta
        elif key in self._probation:
            self._probation[key] += delta
            self._spb += delta
        else:
            self._protected[key] += delta
            self._spt += delta

    def _link(self, key: Hashable, size: int) -> None:  # pragma: no cover - _admit does the linking
        raise AssertionError("TinyLFUCache links in _admit")
