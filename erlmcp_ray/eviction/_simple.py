"""The policies whose whole state is one ordering: LRU, FIFO, Random."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["FIFOCache", "LRUCache", "RandomCache"]

#: The hidden ``Random`` behind the module-level functions (``random.choice`` is its method).
_MODULE_RNG = random.random.__self__


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
    """First in, first out: a hit does not reorder; an overwrite re-inserts (as cachetools' FIFOCache)."""

    __slots__ = ()

    def _touch(self, key: Hashable) -> None:
        pass

    def _touch_write(self, key: Hashable) -> None:
        self._data.move_to_end(key)


class RandomCache(Cache):
    """Evicts a uniformly random entry: drawn from ``rng`` (anything with ``random()``), or picked by
    ``choice(keys)`` as cachetools' ``RRCache`` does. By default it draws from the random module's
    own generator, as cachetools' default ``choice=random.choice`` (which ``choice`` then reports),
    but through ``random()``, about 0.1 µs cheaper per eviction than ``random.choice``.

    Keys sit in a list with a key -> index map; removal swaps the last key into the hole, so
    every operation is O(1).
    """

    __slots__ = ("_choice", "_index", "_keys", "_rng")

    _OWN_STATE = (*Cache._OWN_STATE, "_index", "_keys")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 rng: random.Random | None = None, choice: Callable[[Sequence], Hashable] | None = None,
                 on_evict: OnEvict | None = None) -> None:
        if rng is not None and choice is not None:
            raise ValueError("pass rng or choice, not both")
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        self._keys: list = []
        self._index: dict = {}
        self._rng = _MODULE_RNG if rng is None and choice is None else rng
        self._choice = choice

    @property
    def choice(self) -> Callable[[Sequence], Hashable]:
        """The function picking a victim from the keys (``rng.choice`` when built with ``rng``)."""
        if self._choice is not None:
            return self._choice
        return random.choice if self._rng is _MODULE_RNG else self._rng.choice

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
        if self._choice is None:
            key = self._keys[int(self._rng.random() * len(self._keys))]
        else:
            key = self._choice(self._keys)
        self._unlink(key)
        return key
