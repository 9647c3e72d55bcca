"""LFU in O(1): per-count buckets in a doubly linked list (Shah, Mitra & Matani, 2010).

Not the spec's "sort by access_count" sketch, nor cachetools' ``LFUCache`` (a ``Counter`` whose
``most_common`` is a sort): a hit moves a key one bucket up, the victim is the oldest key of the
lowest bucket, and nothing ever scans.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray.eviction._base import Cache, OnEvict

__all__ = ["LFUCache"]


class _Bucket:
    """The keys accessed exactly ``count`` times, oldest arrival first."""

    __slots__ = ("count", "keys", "next", "prev")

    def __init__(self, count: int, prev: _Bucket | None = None, next: _Bucket | None = None) -> None:
        self.count = count
        self.keys: OrderedDict = OrderedDict()
        self.prev = prev or self
        self.next = next or self


class LFUCache(Cache):
    """Least frequently used; ties go to the least recently used.

    A key enters a bucket at the access that gives it that count, which is its latest access,
    so each bucket's oldest key is also its least recently used one.
    """

    __slots__ = ("_bucket_of", "_root")

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None, *,
                 on_evict: OnEvict | None = None) -> None:
        super().__init__(maxsize, getsizeof, on_evict=on_evict)
        self._root = _Bucket(0)  # sentinel of the circular list; root.next is the lowest count
        self._bucket_of: dict = {}

    # ------------------------------------------------------------ copy, pickle
    # The buckets form a linked list: copied or pickled link by link, thousands of counts would
    # recurse too deep. The state holds them as a list of (count, keys) instead, lowest first.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        root = state.pop("_root")
        del state["_bucket_of"]
        buckets, bucket = [], root.next
        while bucket is not root:
            buckets.append((bucket.count, list(bucket.keys)))
            bucket = bucket.next
        state["_buckets"] = buckets
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        buckets = state.pop("_buckets")
        super().__setstate__(state)
        self._root = root = _Bucket(0)
        self._bucket_of = bucket_of = {}
        for count, keys in buckets:
            bucket = self._bucket_after(root.prev, count)
            bucket.keys = OrderedDict.fromkeys(keys)
            bucket_of.update(dict.fromkeys(keys, bucket))

    def count(self, key: Hashable) -> int:
        """How many times ``key`` was accessed (stored or read) since it was admitted."""
        return self._bucket_of[key].count

    def _link(self, key: Hashable, size: int) -> None:
        first = self._root.next
        if first.count != 1:
            first = self._bucket_after(self._root, 1)
        first.keys[key] = None
        self._bucket_of[key] = first

    def _touch(self, key: Hashable) -> None:
        bucket = self._bucket_of[key]
        up = bucket.next
        if up.count != bucket.count + 1:
            if len(bucket.keys) == 1:  # alone in its bucket: relabel it instead of allocating a new one
                bucket.count += 1
                return
            up = self._bucket_after(bucket, bucket.count + 1)
        del bucket.keys[key]
        up.keys[key] = None
        self._bucket_of[key] = up
        if not bucket.keys:
            self._drop(bucket)

    def _unlink(self, key: Hashable) -> None:
        bucket = self._bucket_of.pop(key)
        del bucket.keys[key]
        if not bucket.keys:
            self._drop(bucket)

    def _victim(self) -> Hashable:
        bucket = self._root.next
        key = bucket.keys.popitem(last=False)[0]
        del self._bucket_of[key]
        if not bucket.keys:
            self._drop(bucket)
        return key

    @staticmethod
    def _bucket_after(prev: _Bucket, count: int) -> _Bucket:
        bucket = _Bucket(count, prev, prev.next)
        prev.next.prev = bucket
        prev.next = bucket
        return bucket

    @staticmethod
    def _drop(bucket: _Bucket) -> None:
        bucket.prev.next = bucket.next
        bucket.next.prev = bucket.prev
