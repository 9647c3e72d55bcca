"""``Cache``: a size-bounded ``MutableMapping`` that owns size accounting; policies add the hooks.

The base class stores values, sizes and ``currsize``, and decides *when* to evict. A policy
decides *what*: it overrides the hooks below (each a few lines) and keeps its own order.

    _link(key, size)     a new key was admitted (room already made)     -- access bookkeeping
    _touch(key)          a held key was read or overwritten             -- access bookkeeping
    _unlink(key)         a held key was deleted explicitly (not evicted)
    _victim() -> key     choose the next eviction victim and forget it  -- victim selection
    _resize(key, delta)  a held key's size changed (only policies that track segment sizes)
    _admit(key, size)    make room for a new key, then ``_link`` it (ARC and W-TinyLFU override)

Every eviction goes through ``_evicted``: it counts ``evictions`` and calls ``on_evict(key,
value)``. Explicit deletes (``del``, ``pop``, ``clear``) are not evictions. ``popitem()`` is
the eviction primitive, as in cachetools: it removes the policy's victim and reports it.
The ``on_evict`` callback must not modify the cache it is called from.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, ItemsView, Iterator, MutableMapping, ValuesView
from typing import Any

__all__ = ["Cache"]

_MISSING: Any = object()

OnEvict = Callable[[Hashable, Any], None]


class Cache(MutableMapping):
    """Base of every eviction policy: ``maxsize``, ``getsizeof``, ``currsize``, ``popitem``.

    Without ``getsizeof`` every value has size 1 and ``maxsize`` bounds the number of entries;
    with it, ``maxsize`` bounds the sum of ``getsizeof(value)`` (for example bytes).
    """

    __slots__ = ("_data", "_getsizeof", "_on_evict", "_sizes", "currsize", "evictions", "maxsize")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None,
                 *, on_evict: OnEvict | None = None) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize!r}")
        self._data: dict = self._new_data()
        # Sizes are only stored when they can differ: in count mode every size is 1.
        self._sizes: dict | None = {} if getsizeof is not None else None
        self._getsizeof = getsizeof
        self._on_evict = on_evict
        self.maxsize = maxsize
        self.currsize = 0
        self.evictions = 0

    def _new_data(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self._data)} entries, currsize={self.currsize}, "
                f"maxsize={self.maxsize}, evictions={self.evictions})")

    def getsizeof(self, value: Any) -> int:
        """The size of ``value``: ``getsizeof(value)`` if one was given, else 1."""
        return 1 if self._getsizeof is None else self._getsizeof(value)

    def _size_of_key(self, key: Hashable) -> int:
        return 1 if self._sizes is None else self._sizes[key]

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator:
        # A snapshot: reading while iterating reorders LRU-like policies, which must not break the loop.
        return iter(list(self._data))

    def __contains__(self, key: object) -> bool:
        return key in self._data  # a membership test is not an access

    def __getitem__(self, key: Hashable) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return self.__missing__(key)
        self._touch(key)
        return value

    def __missing__(self, key: Hashable) -> Any:
        raise KeyError(key)

    def get(self, key: Hashable, default: Any = None) -> Any:
        # Not Mapping.get: that goes through a raised KeyError, which costs a microsecond per miss.
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._touch(key)
        return value

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    # ----------------------------------------------------------------- writes
    def __setitem__(self, key: Hashable, value: Any) -> None:
        size = 1 if self._getsizeof is None else self._getsizeof(value)
        if size > self.maxsize:
            raise ValueError("value too large")
        if key in self._data:
            self._overwrite(key, value, size)
            return
        self._admit(key, size)
        self._data[key] = value
        if self._sizes is not None:
            self._sizes[key] = size
        self.currsize += size

    def _overwrite(self, key: Hashable, value: Any, size: int) -> None:
        """Overwrite a held key: an access; if it grew, evict until the bound holds (maybe itself)."""
        self._data[key] = value
        self._touch(key)
        if self._sizes is not None:
            delta = size - self._sizes[key]
            self._sizes[key] = size
            self.currsize += delta
            if delta:
                self._resize(key, delta)
            while self.currsize > self.maxsize:
                self.popitem()

    def __delitem__(self, key: Hashable) -> None:
        self._data.pop(key)  # KeyError if absent
        self.currsize -= 1 if self._sizes is None else self._sizes.pop(key)
        self._unlink(key)

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        if key not in self:
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = self._data[key]
        del self[key]
        return value

    def clear(self) -> None:
        # Explicit, so not evictions: no on_evict calls (MutableMapping.clear would use popitem).
        # Learned history (ARC ghosts, TinyLFU's sketch) is kept: it describes the workload, not contents.
        for key in list(self._data):
            del self[key]

    def popitem(self) -> tuple[Hashable, Any]:
        """Evict the policy's victim and return it as ``(key, value)``; ``KeyError`` if empty."""
        if not self._data:
            raise KeyError(f"{type(self).__name__} is empty")
        key = self._victim()
        return key, self._evicted(key)

    def _evicted(self, key: Hashable) -> Any:
        """Drop a victim the policy has already forgotten; count it and report it."""
        value = self._data.pop(key)
        self.currsize -= 1 if self._sizes is None else self._sizes.pop(key)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(key, value)
        return value

    # ------------------------------------------------------------------ hooks
    def _admit(self, key: Hashable, size: int) -> None:
        while self.currsize + size > self.maxsize:
            self.popitem()
        self._link(key, size)

    def _link(self, key: Hashable, size: int) -> None:
        raise NotImplementedError

    def _touch(self, key: Hashable) -> None:
        raise NotImplementedError

    def _unlink(self, key: Hashable) -> None:
        raise NotImplementedError

    def _victim(self) -> Hashable:
        raise NotImplementedError

    def _resize(self, key: Hashable, delta: int) -> None:
        pass


class _Values(ValuesView):
    """Values without counting each as an access (Mapping's views read through ``__getitem__``)."""

    def __iter__(self) -> Iterator:
        data = self._mapping._data
        return (data[key] for key in self._mapping)

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _Items(ItemsView):
    """Items without counting each as an access."""

    def __iter__(self) -> Iterator:
        data = self._mapping._data
        return ((key, data[key]) for key in self._mapping)

    def __contains__(self, item: object) -> bool:
        key, value = item  # type: ignore[misc]
        if key not in self._mapping:
            return False
        v = self._mapping._data[key]
        return v is value or v == value
