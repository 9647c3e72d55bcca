"""TTL: LRU with a time-to-live per entry (cachetools' ``TTLCache`` semantics), on an injected timer."""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from erlmcp_ray.eviction._base import _MISSING, Cache, OnEvict

__all__ = ["TTLCache"]

_DEFAULT_TTL = 300.0


class _Timer:
    """``cache.timer``, as cachetools': calls the timer; ``with cache.timer as now:`` freezes it.

    While frozen (nested ``with`` blocks count), the timer answers the time read on entry, and so
    does the cache it belongs to for everything it does (it reads ``_now``, which is swapped for
    the frozen reading meanwhile, so an unfrozen read costs no more than a call of the timer).
    Other attributes are the timer's own (``cache.timer.tick()`` on a test timer).
    """

    __slots__ = ("_nesting", "_owner", "_time", "_timer")

    def __init__(self, timer: Callable[[], Any], owner: TTLCache | None = None) -> None:
        self._timer = timer
        self._owner = None if owner is None else weakref.ref(owner)
        self._nesting = 0
        self._time: Any = None

    def __call__(self) -> Any:
        return self._timer() if self._nesting == 0 else self._time

    def _frozen(self) -> Any:
        return self._time

    def __enter__(self) -> Any:
        if self._nesting == 0:
            self._time = self._timer()
            owner = self._owner and self._owner()
            if owner is not None:
                owner._now = self._frozen
        self._nesting += 1
        return self._time

    def __exit__(self, *exc: object) -> None:
        self._nesting -= 1
        if self._nesting == 0:
            owner = self._owner and self._owner()
            if owner is not None:
                owner._now = self._timer

    def __copy__(self) -> _Timer:
        return _Timer(self._timer)

    def __deepcopy__(self, memo: dict) -> _Timer:
        import copy  # otherwise __getattr__ would hand over the timer's own __deepcopy__

        return _Timer(copy.deepcopy(self._timer, memo))

    def __reduce__(self) -> tuple:
        return _Timer, (self._timer,)

    def __getattr__(self, name: str) -> Any:
        if name in _Timer.__slots__:  # not set yet (while unpickling): no recursion through the timer
            raise AttributeError(name)
        return getattr(self._timer, name)


class TTLCache(Cache):
    """Entries live ``ttl`` timer units after their last write; when full, the LRU entry goes.

    The signature is cachetools' ``TTLCache(maxsize, ttl, timer=time.monotonic, getsizeof=None)``;
    ``ttl`` may be any quantity the timer's readings add to (a ``timedelta`` for ``datetime.now``).
    So that ``cls(maxsize, getsizeof)`` builds every policy alike, a callable second argument
    is taken as ``getsizeof`` (a ttl is never callable), with the default ttl of 300.

    As in cachetools, an entry is alive while ``timer() < deadline``. Expired entries are
    invisible to every read; ``len``, writes, ``popitem``, ``expire`` and any read that meets one
    drop them, as evictions (``on_evict`` is called: a replica must drop them too). Iterating
    skips them without dropping them. ``timer`` must not go backwards: with one ``ttl`` for
    all, write order is deadline order, so expiring is popping from the front of one ordered
    map (O(1) per expired entry). Iteration follows that order (oldest write first).
    """

    __slots__ = ("_clock", "_deadline", "_expiry", "_now", "_timer", "_ttl")

    _OWN_STATE = (*Cache._OWN_STATE, "_expiry")

    #: Whether ``popitem`` is a subclass's own (set by ``__init_subclass__``); see ``_admit``.
    _own_popitem = False

    def __init__(self, maxsize: int, ttl: Any = _DEFAULT_TTL, timer: Callable[[], Any] = time.monotonic,
                 getsizeof: Callable[[Any], int] | None = None, *, on_evict: OnEvict | None = None) -> None:
        if callable(ttl) and getsizeof is None:
            ttl, getsizeof = _DEFAULT_TTL, ttl
        try:
            positive = ttl > 0
        except TypeError:  # a timedelta, say
            positive = ttl > ttl - ttl
        if not positive:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        self._expiry: OrderedDict = OrderedDict()  # key -> deadline, in write order
        self._ttl = ttl
        self._timer = timer
        self._now = timer  # what the cache reads: the timer, or the frozen time inside ``with self.timer``
        self._clock = _Timer(timer, self)
        self._deadline: Any = None

    @property
    def ttl(self) -> Any:
        return self._ttl

    @property
    def timer(self) -> _Timer:
        """The timer, wrapped as cachetools': callable, and ``with cache.timer as now:`` freezes it."""
        return self._clock

    def _new_data(self) -> dict:
        return OrderedDict()  # access order, for the LRU choice when full

    # ------------------------------------------------------------ copy, pickle
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_clock"], state["_now"]  # rebuilt around the (shared) timer: a copy is never frozen
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._now = self._timer
        self._clock = _Timer(self._timer, self)

    # ------------------------------------------------------------------ expiry
    def expire(self, time: Any = None) -> list[tuple[Hashable, Any]]:
        """Drop every entry whose deadline is at or before ``time`` (default: now); return them."""
        now = self._now() if time is None else time
        expiry, expired = self._expiry, []
        while expiry:
            key = next(iter(expiry))
            if expiry[key] > now:
                break
            del expiry[key]
            expired.append((key, self._evicted(key)))
        return expired

    def _alive(self, key: Hashable) -> bool:
        now = self._now()
        if now < self._expiry[key]:
            return True
        self.expire(now)
        return False

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

    def __contains__(self, key: object) -> bool:
        return key in self._data and self._now() < self._expiry[key]

    def __len__(self) -> int:
        self.expire()
        return len(self._data)

    def __iter__(self) -> Iterator:
        # A snapshot in write order; a key deleted or expired by the time it is reached is skipped.
        expiry = self._expiry
        for key in list(expiry):
            deadline = expiry.get(key, _MISSING)
            if deadline is not _MISSING and self._now() < deadline:
                yield key

    # ----------------------------------------------------------------- writes
    def __setitem__(self, key: Hashable, value: Any) -> None:
        now = self._now()
        self._deadline = now + self._ttl  # first: an OverflowError changes nothing
        self.expire(now)
        super().__setitem__(key, value)

    def __delitem__(self, key: Hashable) -> None:
        deadline = self._expiry[key]  # KeyError if absent
        now = self._now()
        if now < deadline:
            super().__delitem__(key)
            return
        self.expire(now)  # it had expired: dropped as an eviction, and absent (cachetools raises too)
        raise KeyError(key)

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        # One reading of the timer: "present" and "removed" must agree.
        value = self._data.get(key, _MISSING)
        if value is not _MISSING:
            now = self._now()
            if now < self._expiry[key]:
                Cache.__delitem__(self, key)
                return value
            self.expire(now)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Hashable, Any]:
        """Evict the least recently used entry that has not expired (expired ones go first, as evictions)."""
        self.expire()
        return super().popitem()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_popitem = cls.popitem is not TTLCache.popitem

    def _admit(self, key: Hashable, size: int) -> None:
        # __setitem__ has just expired what was due, so making room needs no second look at the
        # timer (popitem's expire() added 0.4 µs to an insert into a full cache), unless a subclass
        # overrides popitem (cachetools' way to watch evictions): then every eviction goes through it.
        while self.currsize + size > self.maxsize:
            if self._own_popitem:
                self.popitem()
            else:
                self._evicted(self._victim())
        self._link(key, size)

    def _link(self, key: Hashable, size: int) -> None:
        self._expiry[key] = self._deadline

    def _touch(self, key: Hashable) -> None:
        self._data.move_to_end(key)

    def _touch_write(self, key: Hashable) -> None:
        # A write renews the deadline.
        self._data.move_to_end(key)
        self._expiry[key] = self._deadline
        self._expiry.move_to_end(key)

    def _unlink(self, key: Hashable) -> None:
        del self._expiry[key]

    def _victim(self) -> Hashable:
        key = next(iter(self._data))
        del self._expiry[key]
        return key
