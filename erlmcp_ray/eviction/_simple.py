"""The policies whose whole state is one ordering: LRU, FIFO, Random."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["FIFOCache", "LRUCache", "RandomCache"]


class LRUCache(Cache):
    """Least recently used. The value map is an ``OrderedDict`` kept in access order, so one
    ``move_to_end`` per hit is all the bookkeeping."""

    __slots__ = ()

    def _new_data(self) -> dict:
        return OrderedDict()

    def _link(self, key: Hashable, size: int) -> None:
        pass  # storing the value appends it at the most recent end

    def _touch(self, key: Hashable) -> None:
        self._data.move_to_end(key)

    def _unlink(self, key: Hashable) -> None:
        pass

    def _victim(self) -> Hashable:
        return next(iter(self._data))


class FIFOCache(LRUCache):
    """First in, first out: insertion order only; a hit or an overwrite does not reorder."""

    __slots__ = ()

    def _touch(self, key: Hashable) -> None:
        pass


class RandomCache(Cache):
    """Evicts a uniformly random entry, drawn from ``rng`` (anything with ``random()``).

    Keys sit in a list with a key -> index map; removal swaps the last key into the hole, so
    every operation is O(1).
    """

    __slots__ = ("_index", "_keys", "_rng")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 rng: random.Random | None = None, on_evict: OnEvict | None = None) -> None:
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        self._keys: list = []
        self._index: dict = {}
        self._rng = rng if rng is not None else random.Random()

    def _link(self, key: Hashable, size: int) -> None:
        self._index[key] = len(self._keys)
        self._keys.append(key)

    def _touch(self, key: Hashable) -> None:
        pass

    def _unlink(self, key: Hashable) -> None:
        i = self._index.pop(key)
        last = self._keys.pop()
        if i < len(self._keys):
            self._keys[i] = last
            self._index[last] = i

    def _victim(self) -> Hashable:
        key = self._keys[int(self._rng.random() * len(self._keys))]
        self._unlink(key)
        return key
