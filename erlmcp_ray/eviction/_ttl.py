"""TTL: LRU with a time-to-live per entry (cachetools' ``TTLCache`` semantics), on an injected timer."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from erlmcp_ray.eviction._base import _MISSING, Cache, OnEvict

__all__ = ["TTLCache"]


class TTLCache(Cache):
    """Entries live ``ttl`` timer units after their last write; when full, the LRU entry goes.

    Expired entries are invisible to every read and are dropped, as evictions (``on_evict`` is
    called: a replica must drop them too), before any write and whenever a read meets one.
    ``timer`` must not go backwards: with one ``ttl`` for all, write order is deadline order,
    so expiring is popping from the front of one ordered map (O(1) per expired entry).
    """

    __slots__ = ("_deadline", "_expiry", "_timer", "_ttl")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 ttl: float = 300.0, timer: Callable[[], float] = time.monotonic,
                 on_evict: OnEvict | None = None) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        self._expiry: OrderedDict = OrderedDict()  # key -> deadline, in write order
        self._ttl = ttl
        self._timer = timer
        self._deadline = 0.0

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def timer(self) -> Callable[[], float]:
        return self._timer

    def _new_data(self) -> dict:
        return OrderedDict()  # access order, for the LRU choice when full

    def expire(self, time: float | None = None) -> list[tuple[Hashable, Any]]:
        """Drop every entry whose deadline is at or before ``time`` (default: now); return them."""
        now = self._timer() if time is None else time
        expiry, expired = self._expiry, []
        while expiry:
            key = next(iter(expiry))
            if expiry[key] > now:
                break
            del expiry[key]
            expired.append((key, self._evicted(key)))
        return expired

    # ------------------------------------------------------------------ reads
    def get(self, key: Hashable, default: Any = None) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING or not self._alive(key):
            return default
        self._data.move_to_end(key)
        return value

    def __getitem__(self, key: Hashable) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING or not self._alive(key):
            return self.__missing__(key)
        self._data.move_to_end(key)
        return value

    def _alive(self, key: Hashable) -> bool:
        now = self._timer()
        if now < self._expiry[key]:
            return True
        self.expire(now)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._data and self._timer() < self._expiry[key]

    def __len__(self) -> int:
        self.expire()
        return len(self._data)

    def __iter__(self) -> Iterator:
        self.expire()
        return super().__iter__()

    # ----------------------------------------------------------------- writes
    def __setitem__(self, key: Hashable, value: Any) -> None:
        now = self._timer()
        self.expire(now)
        self._deadline = now + self._ttl
        super().__setitem__(key, value)

    def _link(self, key: Hashable, size: int) -> None:
        self._expiry[key] = self._deadline

    def _touch(self, key: Hashable) -> None:
        # Reached only from an overwrite (reads above reorder by themselves): a write renews the deadline.
        self._data.move_to_end(key)
        self._expiry[key] = self._deadline
        self._expiry.move_to_end(key)

    def _unlink(self, key: Hashable) -> None:
        del self._expiry[key]

    def _victim(self) -> Hashable:
        key = next(iter(self._data))
        del self._expiry[key]
        return key
