"""``Cache``: a size-bounded ``cachetools.Cache`` that owns size accounting; policies add the hooks.

The base class stores values, sizes and ``currsize``, and decides *when* to evict. A policy
decides *what*: it overrides the hooks below (each a few lines) and keeps its own order.

    _link(key, size)     a new key was admitted (room already made)     -- access bookkeeping
    _touch(key)          a held key was read                            -- access bookkeeping
    _touch_write(key)    a held key was overwritten (default: _touch; FIFO and TTL differ)
    _unlink(key)         a held key was deleted explicitly (not evicted)
    _victim() -> key     choose the next eviction victim and forget it  -- victim selection
    _resize(key, delta)  a held key's size changed (only policies that track segment sizes)
    _admit(key, size)    make room for a new key, then ``_link`` it (ARC and W-TinyLFU override)

Every eviction goes through ``_evicted``: it counts ``evictions`` and calls ``on_evict(key,
value)``. Explicit deletes (``del``, ``pop``, ``clear``) are not evictions. ``popitem()`` is
the eviction primitive, as in cachetools: it removes the policy's victim and reports it, and a
new key makes room by calling it (so a subclass overriding ``popitem`` sees those evictions).
The ``on_evict`` callback must not modify the cache it is called from.

cachetools compatibility: ``Cache`` subclasses ``cachetools.Cache`` (so ``isinstance`` checks
and ``cachetools.cached(..., info=True)`` see a cache) but replaces every method of it: the
per-access paths stay ours (``get`` without a raised ``KeyError`` per miss, one hook call per
hit). As in cachetools: ``__missing__`` is called by ``__getitem__`` only; ``getsizeof`` may be
overridden in a subclass (then the cache is size-bounded without a ``getsizeof`` argument); a
size must be ``0 <= size <= maxsize`` (``ValueError``); ``copy.copy`` shares a cache's other
attributes and its values with the original, never its state (entries, order, counts).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, ItemsView, Iterator, ValuesView
from typing import Any

import cachetools

__all__ = ["Cache"]

_MISSING: Any = object()

OnEvict = Callable[[Hashable, Any], None]

_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    """Every ``__slots__`` name of ``cls`` and its bases (no ``__dict__`` / ``__weakref__``)."""
    names = _SLOTS.get(cls)
    if names is None:
        found: list[str] = []
        for klass in reversed(cls.__mro__):
            slots = klass.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                private = slot.startswith("__") and not slot.endswith("__")
                name = f"_{klass.__name__.lstrip('_')}{slot}" if private else slot  # as Python mangles it
                if name not in ("__dict__", "__weakref__") and name not in found:
                    found.append(name)
        names = _SLOTS[cls] = tuple(found)
    return names


class Cache(cachetools.Cache):
    """Base of every eviction policy: ``maxsize``, ``getsizeof``, ``currsize``, ``popitem``.

    Without ``getsizeof`` every value has size 1 and ``maxsize`` bounds the number of entries;
    with it (an argument, or a ``getsizeof`` method of a subclass), ``maxsize`` bounds the sum
    of ``getsizeof(value)`` (for example bytes).
    """

    # The slots shadow cachetools' read-only ``maxsize`` / ``currsize`` properties.
    __slots__ = ("_data", "_getsizeof", "_on_evict", "_sizes", "currsize", "evictions", "maxsize")

    #: Containers a copy must not share with its original (each has ``.copy()``); policies extend it.
    _OWN_STATE: tuple[str, ...] = ("_data", "_sizes")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None,
                 *, on_evict: OnEvict | None = None) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize!r}")
        if getsizeof is not None:
            self.getsizeof = getsizeof  # an instance attribute, as cachetools (shared by copies)
        elif type(self).getsizeof is not Cache.getsizeof:
            getsizeof = self.getsizeof  # a subclass's own getsizeof
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

    @staticmethod
    def getsizeof(value: Any) -> int:
        """The size of ``value``: 1, unless a ``getsizeof`` was given or a subclass overrides this."""
        return 1

    # ------------------------------------------------------------ copy, pickle
    def __getstate__(self) -> dict[str, Any]:
        state = dict(getattr(self, "__dict__", {}))  # a subclass's attributes, ``getsizeof`` if given
        for name in _slot_names(type(self)):
            value = getattr(self, name, _MISSING)
            if value is not _MISSING:
                state[name] = value
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __copy__(self) -> Cache:
        """A cache that shares this one's attributes and values but none of its state (cachetools' rule)."""
        state = self.__getstate__()
        for name in self._OWN_STATE:
            value = state.get(name)
            if value is not None:
                state[name] = value.copy()
        cls = type(self)
        copy = cls.__new__(cls)
        copy.__setstate__(state)
        return copy

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
        # Like cachetools' get, it never calls __missing__.
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
        if size < 0:
            raise ValueError("value size must be non-negative")
        if key in self._data:
            self._overwrite(key, value, size)
            return
        self._admit(key, size)
        self._data[key] = value
        if self._sizes is not None:
            self._sizes[key] = size
        self.currsize += size

    def _overwrite(self, key: Hashable, value: Any, size: int) -> None:
        """Overwrite a held key: an access; if it grew past the bound, evict others until it fits.

        The key itself stays (as in cachetools). Should the policy offer it as a victim, the
        policy has already forgotten it: it is then stored as a new key.
        """
        self._data[key] = value
        self._touch_write(key)
        sizes = self._sizes
        if sizes is None:
            return
        delta = size - sizes[key]
        if not delta:
            return
        while self.currsize + delta > self.maxsize:
            victim = self._victim()
            if victim == key:
                self.currsize -= sizes.pop(key)
                del self._data[key]
                self._admit(key, size)
                self._data[key] = value
                sizes[key] = size
                self.currsize += size
                return
            self._evicted(victim)
        sizes[key] = size
        self.currsize += delta
        self._resize(key, delta)

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

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        # Not MutableMapping.setdefault: that reads through __getitem__, so __missing__ would answer.
        value = self.get(key, _MISSING)
        if value is _MISSING:
            self[key] = value = default
        return value

    def clear(self) -> None:
        # Explicit, so not evictions: no on_evict calls (MutableMapping.clear would use popitem).
        # Learned history (ARC ghosts, TinyLFU's sketch) is kept: it describes the workload, not contents.
        delete = Cache.__delitem__  # not a subclass's: TTL's refuses expired keys
        for key in list(self._data):
            delete(self, key)

    def popitem(self) -> tuple[Hashable, Any]:
        """Evict the policy's victim and return it as ``(key, value)``; ``KeyError`` if empty."""
        if not self._data:
            raise KeyError(f"{type(self).__name__} is empty") from None
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

    def _touch_write(self, key: Hashable) -> None:
        self._touch(key)

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
