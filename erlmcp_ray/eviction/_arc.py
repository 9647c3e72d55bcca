"""ARC: Adaptive Replacement Cache (Megiddo & Modha, FAST 2003), as the paper's Figure 4.

    T1  resident, seen once recently        B1  ghosts (keys only) evicted from T1
    T2  resident, seen at least twice       B2  ghosts evicted from T2
    p   target size of T1, a real number in [0, c]; a ghost hit in B1 raises it, in B2 lowers it

The paper works on a page cache: a request either hits (case I) or misses and is fetched
(cases II-IV). Here a hit is ``get``/``[]`` on a held key and a miss is the ``cache[key] = value``
that follows, so a trace replayed through the mapping API runs exactly the paper's steps.

Sizes: with ``getsizeof`` the lists are measured in size units and ``c`` is ``maxsize``; the
paper's single-page steps become "until it fits" loops and the adaptation step is scaled by the
entry's size. With every size 1 (no ``getsizeof``) this is the paper line by line.
Two additions the paper has no need for: REPLACE evicts from T1 when T2 is empty, and ghosts are
trimmed back to the invariants after an explicit delete or a resize changed the picture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["ARCCache"]


class ARCCache(Cache):
    """Adaptive Replacement Cache; invariants: |T1|+|T2| <= c, |T1|+|B1| <= c, total <= 2c, 0 <= p <= c."""

    __slots__ = ("_b1", "_b2", "_sb1", "_sb2", "_st1", "_st2", "_t1", "_t2", "p")

    _OWN_STATE = (*Cache._OWN_STATE, "_b1", "_b2", "_t1", "_t2")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 on_evict: OnEvict | None = None) -> None:
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        # Each list maps key -> size, LRU first; _s* are the lists' total sizes.
        self._t1: OrderedDict = OrderedDict()
        self._t2: OrderedDict = OrderedDict()
        self._b1: OrderedDict = OrderedDict()
        self._b2: OrderedDict = OrderedDict()
        self._st1 = self._st2 = self._sb1 = self._sb2 = 0
        self.p = 0.0

    def segment_sizes(self) -> dict[str, float]:
        """|T1|, |T2|, |B1|, |B2| (in size units) and the target ``p``."""
        return {"t1": self._st1, "t2": self._st2, "b1": self._sb1, "b2": self._sb2, "p": self.p}

    # ---------------------------------------------------------- case I: hit
    def _touch(self, key: Hashable) -> None:
        size = self._t1.pop(key, None)
        if size is None:
            self._t2.move_to_end(key)
            return
        self._st1 -= size
        self._t2[key] = size
        self._st2 += size

    # ------------------------------------------------ cases II-IV: a miss
    def _admit(self, key: Hashable, size: int) -> None:
        if key in self._b1:  # case II: p += max(1, |B2|/|B1|), then REPLACE, then x -> T2
            self.p = min(self.p + size * max(1.0, self._sb2 / self._sb1), self.maxsize)
            self._make_room(size, False)
            self._sb1 -= self._b1.pop(key)
            self._to_t2(key, size)
        elif key in self._b2:  # case III: p -= max(1, |B1|/|B2|), then REPLACE, then x -> T2
            self.p = max(self.p - size * max(1.0, self._sb1 / self._sb2), 0.0)
            self._make_room(size, True)
            self._sb2 -= self._b2.pop(key)
            self._to_t2(key, size)
        else:
            self._new_key(size)
            self._t1[key] = size
            self._st1 += size
        self._trim_ghosts()

    def _new_key(self, size: int) -> None:
        """Case IV: keep L1 = T1+B1 within c and L1+L2 within 2c, then REPLACE if full."""
        c = self.maxsize
        if self._st1 + self._sb1 + size > c:  # case A: L1 is full
            while self._sb1 and self._st1 + self._sb1 + size > c:
                self._sb1 -= self._b1.popitem(last=False)[1]
            while self._st1 + size > c:  # B1 is empty: T1's LRU goes without a ghost
                key, s = self._t1.popitem(last=False)
                self._st1 -= s
                self._evicted(key)
        else:  # case B
            while self._sb2 and self._total() + size > 2 * c:
                self._sb2 -= self._b2.popitem(last=False)[1]
        self._make_room(size, False)

    def _make_room(self, size: int, in_b2: bool) -> None:
        while self._st1 + self._st2 + size > self.maxsize:
            self._evicted(self._replace(in_b2))

    def _replace(self, in_b2: bool) -> Hashable:
        """REPLACE(x, p): T1's LRU to B1 if |T1| exceeds p (or equals it and x is in B2), else T2's to B2."""
        t1 = self._st1
        if t1 and (t1 > self.p or (in_b2 and t1 == self.p) or not self._t2):
            key, size = self._t1.popitem(last=False)
            self._st1 -= size
            self._b1[key] = size
            self._sb1 += size
        else:
            key, size = self._t2.popitem(last=False)
            self._st2 -= size
            self._b2[key] = size
            self._sb2 += size
        return key

    def _to_t2(self, key: Hashable, size: int) -> None:
        self._t2[key] = size
        self._st2 += size

    def _total(self) -> int:
        return self._st1 + self._st2 + self._sb1 + self._sb2

    def _trim_ghosts(self) -> None:
        # A no-op on the paper's path; needed after resizes and unequal ghost/new sizes.
        c = self.maxsize
        while self._sb1 and self._st1 + self._sb1 > c:
            self._sb1 -= self._b1.popitem(last=False)[1]
        while self._total() > 2 * c:
            ghosts = self._b2 if self._b2 else self._b1
            size = ghosts.popitem(last=False)[1]
            if ghosts is self._b2:
                self._sb2 -= size
            else:
                self._sb1 -= size

    # --------------------------------------------------- deletes, popitem
    def _unlink(self, key: Hashable) -> None:
        size = self._t1.pop(key, None)
        if size is None:
            self._st2 -= self._t2.pop(key)
        else:
            self._st1 -= size

    def _victim(self) -> Hashable:
        key = self._replace(False)
        self._trim_ghosts()
        return key

    def _resize(self, key: Hashable, delta: int) -> None:
        if key in self._t1:
            self._t1[key] += delta
            self._st1 += delta
        else:
            self._t2[key] += delta
            self._st2 += delta
        self._trim_ghosts()
