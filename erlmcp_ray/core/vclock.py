"""Version vectors keyed by stable slot ids.

A slot id names one copy of a shard (0 is the first owner), never a process:
Ray restarts make new processes, and a vector keyed by them would grow forever.

Comparison follows the spec: ``a`` dominates ``b`` when every counter of ``a`` is
>= the one in ``b`` and at least one is greater; equal when all match; concurrent
when neither dominates. Merge is the pointwise maximum.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping

__all__ = ["Ordering", "VersionVector"]


class Ordering(enum.Enum):
    """How one version relates to another (``a.compare(b)``)."""

    EQUAL = "equal"
    DOMINATES = "dominates"  # a happened after b
    DOMINATED = "dominated"  # a happened before b
    CONCURRENT = "concurrent"


class VersionVector(Mapping[int, int]):
    """An immutable mapping slot id -> counter; missing slots count as 0."""

    __slots__ = ("_c",)

    def __init__(self, counters: Mapping[int, int] | None = None) -> None:
        c: dict[int, int] = {}
        for slot, n in (counters or {}).items():
            if type(slot) is not int or slot < 0 or type(n) is not int or n < 0:
                raise ValueError(f"version vector entries must be non-negative ints, got {slot!r}: {n!r}")
            if n:  # zero counters carry no information; dropping them keeps equality exact
                c[slot] = n
        self._c = dict(sorted(c.items()))

    @classmethod
    def _trusted(cls, counters: dict[int, int]) -> VersionVector:
        vv = object.__new__(cls)
        vv._c = counters
        return vv

    def __getitem__(self, slot: int) -> int:
        return self._c[slot]

    def get(self, slot: int, default: int = 0) -> int:  # type: ignore[override]
        return self._c.get(slot, default)

    def __iter__(self) -> Iterator[int]:
        return iter(self._c)

    def __len__(self) -> int:
        return len(self._c)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VersionVector):
            return self._c == other._c
        if isinstance(other, Mapping):
            return self._c == {k: v for k, v in other.items() if v}
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._c.items()))

    def __repr__(self) -> str:
        return f"VersionVector({self._c})"

    def increment(self, slot: int) -> VersionVector:
        """The vector after one more write by ``slot``."""
        c = dict(self._c)
        c[slot] = c.get(slot, 0) + 1
        return VersionVector._trusted(dict(sorted(c.items())))

    def merge(self, other: VersionVector) -> VersionVector:
        """Pointwise maximum: the least vector that both happened before (or equal)."""
        c = dict(self._c)
        for slot, n in other._c.items():
            if n > c.get(slot, 0):
                c[slot] = n
        return VersionVector._trusted(dict(sorted(c.items())))

    def compare(self, other: VersionVector) -> Ordering:
        """Where ``self`` stands relative to ``other``."""
        greater = less = False
        for slot in self._c.keys() | other._c.keys():
            a, b = self._c.get(slot, 0), other._c.get(slot, 0)
            if a > b:
                greater = True
            elif a < b:
                less = True
            if greater and less:
                return Ordering.CONCURRENT
        if greater:
            return Ordering.DOMINATES
        return Ordering.DOMINATED if less else Ordering.EQUAL

    def dominates(self, other: VersionVector) -> bool:
        return self.compare(other) is Ordering.DOMINATES

    def concurrent(self, other: VersionVector) -> bool:
        return self.compare(other) is Ordering.CONCURRENT

    def descends(self, other: VersionVector) -> bool:
        """True when ``self`` dominates or equals ``other`` (has seen all of it)."""
        return self.compare(other) in (Ordering.DOMINATES, Ordering.EQUAL)

    def to_dict(self) -> dict[int, int]:
        return dict(self._c)
