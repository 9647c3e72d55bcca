"""Eviction policies: size-bounded, cachetools-compatible mappings, and how to pick one.

Layout:

    _base.py     Cache: a ``cachetools.Cache`` owning maxsize/getsizeof/currsize, evictions, on_evict;
                 a policy overrides a few hooks (victim selection, access bookkeeping)
    _simple.py   LRUCache, FIFOCache, RandomCache (injected ``rng``, or cachetools' ``choice``)
    _ttl.py      TTLCache: LRU with a time-to-live, injected ``timer`` (cachetools' signature)
    _lfu.py      LFUCache: O(1) frequency buckets
    _arc.py      ARCCache: Megiddo & Modha's ARC, real-valued target p
    _tinylfu.py  TinyLFUCache (W-TinyLFU, as Caffeine) and its FrequencySketch
    _select.py   recommend_policy / explain_policy, benchmark_policies, simulate

Every class takes ``(maxsize, getsizeof=None, *, on_evict=None, **policy_kwargs)`` (TTLCache:
cachetools' ``(maxsize, ttl, timer, getsizeof)``, and ``(maxsize, getsizeof)`` too); with
``getsizeof`` the bound is on the sum of sizes (bytes), otherwise on the number of entries.
Every operation is O(1) (amortised). ``erlmcp_ray.testing.check_cache_policy`` is the contract
each one passes, and cachetools' own test suite (tests/unit/test_cachetools_suite.py) runs
against LRU, LFU, FIFO, Random (as RRCache), TTL, and its generic part against ARC and W-TinyLFU.
Like cachetools, a cache is not thread-safe: share one under a lock. No Ray here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erlmcp_ray.eviction._arc import ARCCache
from erlmcp_ray.eviction._base import Cache
from erlmcp_ray.eviction._lfu import LFUCache
from erlmcp_ray.eviction._select import benchmark_policies, explain_policy, recommend_policy, simulate
from erlmcp_ray.eviction._simple import FIFOCache, LRUCache, RandomCache
from erlmcp_ray.eviction._tinylfu import FrequencySketch, TinyLFUCache
from erlmcp_ray.eviction._ttl import TTLCache

#: Policy name (as in ``EvictionPolicyName``) -> class; a dict, like diskcache's EVICTION_POLICY.
POLICIES: dict[str, type[Cache]] = {
    "lru": LRUCache,
    "lfu": LFUCache,
    "ttl": TTLCache,
    "fifo": FIFOCache,
    "arc": ARCCache,
    "random": RandomCache,
    "tinylfu": TinyLFUCache,
}


def make_cache(name: str, maxsize: int, getsizeof: Callable[[Any], int] | None = None, **kwargs: Any) -> Cache:
    """A new ``POLICIES[name]`` cache; ``kwargs`` go to the policy (``on_evict``, ``ttl``, ``rng``, ...)."""
    try:
        cls = POLICIES[str(getattr(name, "value", name)).lower()]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; known: {sorted(POLICIES)}") from None
    return cls(maxsize, getsizeof=getsizeof, **kwargs)


__all__ = [
    "POLICIES",
    "ARCCache",
    "Cache",
    "FIFOCache",
    "FrequencySketch",
    "LFUCache",
    "LRUCache",
    "RandomCache",
    "TTLCache",
    "TinyLFUCache",
    "benchmark_policies",
    "explain_policy",
    "make_cache",
    "recommend_policy",
    "simulate",
]
