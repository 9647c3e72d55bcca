"""W-TinyLFU (Einziger, Friedman & Manes, 2017), laid out as Caffeine's ``BoundedLocalCache``.

    window     a small LRU (1% of maxsize) that every new key enters
    probation  main's SLRU entry segment; window evictees arrive here as candidates
    protected  main's SLRU hot segment (80% of main); a probation hit promotes, overflow demotes
    sketch     a count-min sketch of 4-bit counters, halved every 10 x capacity additions (aging)

When the cache is full, the candidate (the entry leaving the window) duels the victim
(probation's LRU entry): the one the sketch has seen less often is evicted. As in Caffeine, a
warm candidate that loses is still admitted with probability 1/128, so an attacker who keeps
a victim hot through hash collisions cannot pin it.

The window starts at 1% of maxsize and is then sized by Caffeine's hill climber: after each
sample of requests it moves quota between window and main by a decaying step, in the direction
that did not lower the hit rate. Without it (``adaptive=False``, Caffeine's simulator
"WindowTinyLfu") recency-skewed traces such as OLTP lose 2-4 points to ARC. Three departures
from Caffeine's constants, each measured on the traces in benchmarks/results/eviction.txt
(so chosen on the same data they are reported on):

* a sample is 3 x maxsize requests (at least 10,000; byte-bounded: 3 x the entries the sketch
  is sized for), not 10 x: Caffeine's period leaves ~6 decisions on a trace 60 x the cache long
  (OLTP at 15000), too few to leave the start;
* the first sample only sets the baseline and the first step grows the window: Caffeine
  compares its first sample with 0 and so always first shrinks a window that is already 1%;
* no restart of the step after a 5-point swing: on phase-changing traces (OLTP) restarts
  threw away the climb more often than they helped.
"""

from __future__ import annotations

import math
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["FrequencySketch", "TinyLFUCache"]

_HALVE = bytes(v >> 1 for v in range(256))
_ODD = bytes(v & 1 for v in range(256))
_SEED = 0x5BD1E995
_HASHDOS_THRESHOLD = 6  # Caffeine's ADMIT_HASHDOS_THRESHOLD
# Hill climber: a sample is 3 x capacity requests but at least 10,000 (a hit rate measured over
# fewer varies by ~0.5 point by chance alone, as much as one step changes it); the first step is
# 6.25% of maxsize, decaying 2% per sample, and at most 1000 entries move per operation (Caffeine's).
_SAMPLE_FACTOR, _SAMPLE_FLOOR, _STEP_PERCENT, _STEP_DECAY, _TRANSFER_LIMIT = 3, 10_000, 0.0625, 0.98, 1000


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

    __slots__ = ("_additions", "_mask", "_table", "capacity", "sample_size")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        width = 16 << max(self.capacity - 1, 1).bit_length()  # 16 x next power of two
        self._table = bytearray(width)
        self._mask = width - 1
        self.sample_size = 10 * self.capacity
        self._additions = 0

    # Both methods are unrolled by hand, comparisons instead of min(): they run on every access,
    # and a call or a loop costs as much as the arithmetic (min() of four: 160 ns, ifs: 90 ns).
    # Slots: h & mask, then three strides of an odd step (h >> 32 | 1), so four distinct ones.
    def frequency(self, key: Hashable) -> int:
        h = hash((key, _SEED))
        t, m, b = self._table, self._mask, (h >> 32) | 1
        i = h & m
        f = t[i]
        i = (i + b) & m
        if t[i] < f:  # noqa: PLR1730
            f = t[i]
        i = (i + b) & m
        if t[i] < f:  # noqa: PLR1730
            f = t[i]
        i = (i + b) & m
        return t[i] if t[i] < f else f  # noqa: FURB136

    def increment(self, key: Hashable) -> None:
        h = hash((key, _SEED))
        t, m, b = self._table, self._mask, (h >> 32) | 1
        i = h & m
        added = False
        v = t[i]
        if v < 15:
            t[i] = v + 1
            added = True
        i = (i + b) & m
        v = t[i]
        if v < 15:
            t[i] = v + 1
            added = True
        i = (i + b) & m
        v = t[i]
        if v < 15:
            t[i] = v + 1
            added = True
        i = (i + b) & m
        v = t[i]
        if v < 15:
            t[i] = v + 1
            added = True
        if added:
            self._additions += 1
            if self._additions >= self.sample_size:
                self._reset()

    def copy(self) -> FrequencySketch:
        """An independent sketch with the same counts."""
        sketch = FrequencySketch.__new__(FrequencySketch)
        sketch.capacity, sketch.sample_size = self.capacity, self.sample_size
        sketch._table, sketch._mask, sketch._additions = bytearray(self._table), self._mask, self._additions
        return sketch

    def _reset(self) -> None:
        # Halving drops half a count from every odd counter; a key has four, hence the /4 (as Caffeine).
        odd = self._table.translate(_ODD).count(1)
        self._table = self._table.translate(_HALVE)
        self._additions = (self._additions - (odd >> 2)) >> 1


class TinyLFUCache(Cache):
    """W-TinyLFU: an LRU window in front of a frequency-filtered segmented-LRU main space."""

    __slots__ = (
        "_adaptive",
        "_adjustment",
        "_prev_rate",
        "_probation",
        "_protected",
        "_protected_max",
        "_rng",
        "_sample_hits",
        "_sample_misses",
        "_sample_size",
        "_sketch",
        "_sketch_grows",
        "_spb",
        "_spt",
        "_step",
        "_sw",
        "_window",
        "_window_max",
    )

    _OWN_STATE = (*Cache._OWN_STATE, "_probation", "_protected", "_sketch", "_window")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 window: float = 0.01, protected: float = 0.80, adaptive: bool = True,
                 rng: random.Random | None = None, expected_entries: int | None = None,
                 on_evict: OnEvict | None = None) -> None:
        if not (0.0 <= window <= 1.0 and 0.0 <= protected <= 1.0):
            raise ValueError("window and protected are fractions in [0, 1]")
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        sized = self._getsizeof is not None  # an argument, or a subclass's getsizeof
        # An unbounded cache never evicts: its quotas are computed on a large finite stand-in.
        bound = maxsize if math.isfinite(maxsize) else sys.maxsize
        # As Caffeine: window = maxsize - floor(99% of maxsize), protected = floor(80% of main).
        self._window_max = bound - int(bound * (1.0 - window))
        self._protected_max = int((bound - self._window_max) * protected)
        self._window: OrderedDict = OrderedDict()  # key -> size, LRU first (all three)
        self._probation: OrderedDict = OrderedDict()
        self._protected: OrderedDict = OrderedDict()
        self._sw = self._spb = self._spt = 0
        # Byte-bounded or unbounded: start small, the sketch doubles as entries arrive.
        self._sketch_grows = sized or bound != maxsize
        if expected_entries is None:
            expected_entries = min(maxsize, 1024) if self._sketch_grows else maxsize
        self._sketch = FrequencySketch(max(expected_entries, 16))  # 16 bytes per expected entry
        self._rng = rng if rng is not None else random.Random()
        self._adaptive = adaptive
        self._sample_size = max(_SAMPLE_FACTOR * self._sketch.capacity, _SAMPLE_FLOOR)
        self._sample_hits = self._sample_misses = self._adjustment = 0
        self._prev_rate: float | None = None  # hit rate of the previous sample
        self._step = _STEP_PERCENT * bound

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
        sketch = self._sketch
        if self._sketch_grows and len(self._data) > sketch.capacity:
            sketch = self._grow_sketch()
        sketch.increment(key)
        if self._window and self._sw + size > self._window_max:
            self._spill_window(size)
        self._window[key] = size
        self._sw += size
        while self.currsize + size > self.maxsize:  # main over its share (window grew, or sizes differ)
            self._evicted(self._select_victim())
        if self._adaptive:
            self._sample_misses += 1
            if self._sample_hits + self._sample_misses >= self._sample_size:
                self._determine_adjustment()
            if self._adjustment:
                self._adjust_window()

    def _grow_sketch(self) -> FrequencySketch:
        """More entries than the sketch was sized for: twice as wide, history dropped (as Caffeine)."""
        self._sketch = FrequencySketch(2 * self._sketch.capacity)
        self._sample_size = max(_SAMPLE_FACTOR * self._sketch.capacity, _SAMPLE_FLOOR)
        return self._sketch

    def _spill_window(self, size: int) -> None:
        """Caffeine's evictFromWindow + evictFromMain: the window's LRU entry is a candidate for main.

        While the cache has room it just moves to probation; once full it duels probation's LRU
        entry and the loser is evicted. Deciding before moving spares the usual loser (a
        one-hit wonder) a trip through probation; the outcome is the same.
        """
        window, probation = self._window, self._probation
        while window and self._sw + size > self._window_max:
            candidate, csize = window.popitem(last=False)
            self._sw -= csize
            full = self.currsize + size > self.maxsize
            if full and not (probation and self._admits(candidate, next(iter(probation)))):
                self._evicted(candidate)
                continue
            probation[candidate] = csize
            self._spb += csize
            if full:
                victim, vsize = probation.popitem(last=False)
                self._spb -= vsize
                self._evicted(victim)

    def _select_victim(self) -> Hashable:
        """Outside a duel: probation's LRU entry, else protected's, else the window's."""
        for segment in (self._probation, self._protected, self._window):
            if segment:
                return self._pop_lru(segment)
        raise KeyError("cache is empty")

    def _admits(self, candidate: Hashable, victim: Hashable) -> bool:
        """Caffeine's admit: the more frequent wins; a warm loser still gets in 1 time in 128."""
        candidate_freq = self._sketch.frequency(candidate)
        if candidate_freq > self._sketch.frequency(victim):
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
        """Caffeine's determineAdjustment: keep stepping the same way unless the hit rate dropped."""
        hits, requests = self._sample_hits, self._sample_hits + self._sample_misses
        self._sample_hits = self._sample_misses = 0
        if 2 * (self.currsize + 1) < self.maxsize:  # as Caffeine: no samples until half full
            return
        rate, previous = hits / requests, self._prev_rate
        self._prev_rate = rate
        if previous is None:
            return
        amount = self._step if rate >= previous else -self._step
        self._step = _STEP_DECAY * amount
        self._adjustment = int(amount)

    def _adjust_window(self) -> None:
        """Move quota (and up to 1000 entries) between window and main; what is left waits."""
        if self._adjustment > 0:
            self._grow_window()
        else:
            self._shrink_window()

    def _grow_window(self) -> None:
        if self._protected_max == 0:
            self._adjustment = 0
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
            self._adjustment = 0
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
