"""Hybrid logical clock (Kulkarni et al., 2014) with an injected physical clock.

A timestamp is one int: milliseconds since the epoch in the high 48 bits and a
logical counter in the low 16. It never goes backwards, stays close to the
physical clock, and respects causality: a node that has seen timestamp ``t``
issues only timestamps greater than ``t`` (so a causal successor always wins a
last-writer-wins comparison, whatever the clock skew between machines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["LOGICAL_BITS", "HybridLogicalClock", "hlc_physical_ms", "wall_clock_ms"]

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def hlc_physical_ms(ts: int) -> int:
    """The physical (millisecond) part of a timestamp."""
    return ts >> LOGICAL_BITS


class HybridLogicalClock:
    """Issues monotonically increasing timestamps; ``physical_ms`` is injected for tests."""

    __slots__ = ("_last", "_lock", "_physical_ms")

    def __init__(self, physical_ms: Callable[[], int] = wall_clock_ms, last: int = 0) -> None:
        self._physical_ms = physical_ms
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A timestamp for a local event (a write)."""
        with self._lock:
            pt = self._physical_ms() << LOGICAL_BITS
            # Either the physical clock moved past everything we have issued or
            # seen, or we stay on the same millisecond and bump the counter
            # (overflowing into the next millisecond is harmless: still monotonic).
            self._last = pt if pt > self._last else self._last + 1
            return self._last

    def update(self, remote: int) -> int:
        """Fold in a timestamp received from another slot; returns the new local time."""
        with self._lock:
            pt = self._physical_ms() << LOGICAL_BITS
            self._last = max(pt, self._last + 1, remote + 1)
            return self._last

    def observe(self, remote: int) -> None:
        """Note a received timestamp without issuing one (cheaper than update)."""
        if remote > self._last:
            with self._lock:
                self._last = max(self._last, remote)
