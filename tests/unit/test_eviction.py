"""Eviction policies: the shipped contract over every policy, the registry, and each policy's own rules."""

from __future__ import annotations

import copy
import math
import pickle
import random
import subprocess
import sys

import cachetools
import pytest

from erlmcp_ray import eviction
from erlmcp_ray.config import EvictionPolicyName
from erlmcp_ray.eviction import (
    POLICIES,
    ARCCache,
    FIFOCache,
    FrequencySketch,
    LFUCache,
    LRUCache,
    RandomCache,
    TinyLFUCache,
    TTLCache,
    benchmark_policies,
    explain_policy,
    make_cache,
    recommend_policy,
    simulate,
)
from erlmcp_ray.testing import check_cache_policy


class FakeTimer:
    """A settable clock for TTLCache (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def factory_for(name: str):
    """``factory(maxsize, getsizeof=None, on_evict=None)``; injected rng/timer where the policy takes one."""
    def factory(maxsize, getsizeof=None, on_evict=None):
        kwargs = {"rng": random.Random(7)} if name in ("random", "tinylfu") else {}
        if name == "ttl":
            kwargs = {"ttl": 10.0, "timer": FakeTimer()}
        return make_cache(name, maxsize, getsizeof, on_evict=on_evict, **kwargs)
    return factory


# ------------------------------------------------------------------ contract, registry, surface
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_meets_the_contract(name):
    check_cache_policy(factory_for(name))


def test_the_contract_catches_a_cache_that_forgets_to_report_evictions():
    class Silent(LRUCache):
        __slots__ = ()

        def _evicted(self, key):
            on_evict, self._on_evict = self._on_evict, None
            try:
                return super()._evicted(key)
            finally:
                self._on_evict = on_evict

    with pytest.raises(AssertionError):
        check_cache_policy(lambda m, getsizeof=None, on_evict=None: Silent(m, getsizeof, on_evict=on_evict))


def test_registry_names_every_configurable_policy():
    assert set(POLICIES) == {p.value for p in EvictionPolicyName} - {"none"}
    assert POLICIES == {"lru": LRUCache, "lfu": LFUCache, "ttl": TTLCache, "fifo": FIFOCache,
                        "arc": ARCCache, "random": RandomCache, "tinylfu": TinyLFUCache}


def test_make_cache_takes_names_enums_and_policy_kwargs():
    assert type(make_cache("LRU", 3)) is LRUCache
    assert type(make_cache(EvictionPolicyName.TINYLFU, 3)) is TinyLFUCache
    cache = make_cache("ttl", 100, len, ttl=5.0)
    assert (cache.maxsize, cache.ttl, cache.getsizeof("abc")) == (100, 5.0, 3)
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_cache("mru", 3)


def test_public_names_are_exactly_all():
    public = {n for n in vars(eviction) if not n.startswith("_")} - {"annotations", "Any", "Callable"}
    assert set(eviction.__all__) == public


def test_importing_eviction_does_not_import_ray():
    code = "import sys, erlmcp_ray.eviction, erlmcp_ray.testing; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_constructor_is_cachetools_shaped():
    for cls in POLICIES.values():
        cache = cls(10, len)
        cache["k"] = "four"
        assert (cache.maxsize, cache.currsize, cache.getsizeof("xy"), cache.evictions) == (10, 4, 2, 0)
    with pytest.raises(ValueError):
        LRUCache(-1)


# ------------------------------------------------ cachetools compatibility (the suite: test_cachetools_suite)
def filled(name, getsizeof=None):
    """8 entries of size 1 in a cache of 8, every other one read since (counts, T2, protected)."""
    cache = TTLCache(8, ttl=10.0) if name == "ttl" else factory_for(name)(8, getsizeof=getsizeof)
    for i in range(8):
        cache[i] = str(i)
    for i in range(0, 8, 2):
        cache[i]
    return cache


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_a_cachetools_cache(name):
    cache = factory_for(name)(4)
    assert isinstance(cache, cachetools.Cache)
    cached = cachetools.cached(cache, info=True)(lambda x: x * 2)
    assert [cached(1), cached(1), cached(2)] == [2, 2, 4]
    assert cached.cache_info() == (1, 2, 4, 2)  # hits, misses, maxsize, currsize: read from a Cache


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_copy_holds_the_whole_state_and_shares_none_of_it(name, how):
    source = filled(name, getsizeof=None if how == "pickle" else len)  # (a lambda would not pickle)
    dup = {"copy": copy.copy, "deepcopy": copy.deepcopy,
           "pickle": lambda c: pickle.loads(pickle.dumps(c))}[how]
    twin = dup(source)
    assert type(twin) is type(source) and dict(twin.items()) == dict(source.items())
    assert (twin.currsize, twin.maxsize) == (source.currsize, source.maxsize) and twin.evictions == 0
    twin_victims = [twin.popitem() for _ in range(len(twin))]
    assert len(source) == 8 and source.currsize == 8 and twin.currsize == 0
    if name not in ("random", "tinylfu"):  # no draws from an rng: the copy evicts exactly as its source
        assert twin_victims == [source.popitem() for _ in range(8)]


def test_a_shallow_copy_shares_attributes_and_values_not_state():
    class Tagged(LRUCache):
        def __init__(self, maxsize, **kwargs):
            super().__init__(maxsize, **kwargs)
            self.tag = []

    evicted = []
    source = Tagged(2, on_evict=lambda k, v: evicted.append(k))
    source["a"], source["b"] = [1], [2]
    twin = copy.copy(source)
    assert twin.tag is source.tag and twin["a"] is source["a"]
    twin["c"] = [3]  # evicts b from the copy only; the callback is shared
    assert evicted == ["b"] and sorted(source) == ["a", "b"] and sorted(twin) == ["a", "c"]


def test_lfu_copies_keep_use_counts_across_thousands_of_buckets():
    n = sys.getrecursionlimit() + 10
    source = LFUCache(n + 1)
    for key in range(n):
        source[key] = key
        for _ in range(key):
            source.get(key)
    source[n] = n
    for twin in (copy.copy(source), copy.deepcopy(source), pickle.loads(pickle.dumps(source))):
        assert [twin.count(k) for k in (0, n, 5)] == [1, 1, 6]
        assert [twin.popitem()[0] for _ in range(3)] == [0, n, 1]
    assert len(source) == n + 1 and source.count(5) == 6


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_missing_is_called_by_getitem_only(name):
    class Default(POLICIES[name]):
        def __missing__(self, key):
            self[key] = value = f"made-{key}"
            return value

    cache = Default(4, **({"timer": FakeTimer()} if name == "ttl" else {}))
    assert cache["a"] == "made-a" and "a" in cache
    assert cache.get("b") is None and cache.pop("b", None) is None and "b" not in cache
    assert cache.setdefault("c") is None and cache["c"] is None  # setdefault does not ask __missing__
    assert cache.setdefault("a", "other") == "made-a"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_getsizeof_overridden_in_a_subclass_bounds_by_size(name):
    class Sized(POLICIES[name]):
        @staticmethod
        def getsizeof(value):
            return len(value)

    cache = Sized(10)
    cache["a"], cache["b"] = "xxxx", "yyyy"
    assert cache.currsize == 8
    cache["c"] = "zzzz"
    assert cache.currsize <= 10 and len(cache) == 2 and "c" in cache


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_sizes_must_be_between_zero_and_maxsize(name):
    cache = factory_for(name)(10, getsizeof=lambda v: v)
    for bad in (-1, 11):
        with pytest.raises(ValueError):
            cache["k"] = bad
    assert len(cache) == 0 and cache.currsize == 0
    cache["zero"] = 0
    assert "zero" in cache and cache.currsize == 0


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_popitem_on_empty_raises_keyerror_without_context(name):
    with pytest.raises(KeyError, match="is empty") as info:
        factory_for(name)(2).popitem()
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_growing_overwrite_keeps_its_key_and_evicts_others(name):
    kwargs = {"random": {"choice": lambda keys: "a" if "a" in keys else keys[0]},  # offers "a" first
              "tinylfu": {"rng": random.Random(7)}, "ttl": {"timer": FakeTimer()}}.get(name, {})
    evicted = []
    cache = make_cache(name, 10, len, on_evict=lambda k, v: evicted.append(k), **kwargs)
    cache["a"], cache["b"], cache["c"] = "x" * 3, "y" * 3, "z" * 3
    cache["a"] = "x" * 9  # even when the policy offers "a" itself as the victim
    assert dict(cache.items()) == {"a": "x" * 9} and cache.currsize == 9
    assert sorted(evicted) == ["b", "c"] and cache.evictions == 2


def test_fifo_overwrite_reinserts_as_cachetools():
    cache = FIFOCache(2)
    cache["a"], cache["b"] = 1, 2
    cache["a"] = 3  # a write moves a to the back; a read would not
    cache["b"]
    cache["c"] = 4
    assert dict(cache.items()) == {"a": 3, "c": 4}


def test_random_cache_takes_cachetools_choice_or_an_rng():
    assert RandomCache(2).choice is random.choice
    cache = RandomCache(2, choice=max)
    cache.update({1: 1, 2: 2})
    cache[0] = 0
    assert sorted(cache) == [0, 1] and cache.choice is max
    assert RandomCache(2, rng=random.Random(0)).choice.__self__ is not None
    with pytest.raises(ValueError):
        RandomCache(2, rng=random.Random(0), choice=max)


def test_ttl_takes_cachetools_signature_and_the_shared_shape():
    timer = FakeTimer()
    positional = TTLCache(10, 5.0, timer, len)
    assert (positional.ttl, positional.timer(), positional.getsizeof("abc")) == (5.0, 0.0, 3)
    shared = TTLCache(10, len)  # (maxsize, getsizeof), as every policy: a callable is no ttl
    assert (shared.ttl, shared.getsizeof("ab")) == (300.0, 2)
    import datetime
    days = TTLCache(2, ttl=datetime.timedelta(days=1), timer=datetime.datetime.now)
    days["k"] = 1
    assert days.expire(datetime.datetime.now() + datetime.timedelta(days=1)) == [("k", 1)]
    with pytest.raises(ValueError):
        TTLCache(2, ttl=datetime.timedelta(0))


def test_ttl_timer_freezes_for_the_cache_inside_with():
    timer, evicted = FakeTimer(), []
    cache = TTLCache(4, ttl=5.0, timer=timer, on_evict=lambda k, v: evicted.append(k))
    cache["a"] = 1
    with cache.timer as now:
        timer.now = 50.0
        assert now == 0.0 and cache.timer() == 0.0 and cache.timer.now == 50.0  # attributes: the timer's
        assert cache["a"] == 1 and "a" in cache  # the cache reads the frozen time too
        twin = copy.copy(cache)
        assert "a" not in twin  # a copy is not frozen
    assert "a" not in cache and len(cache) == 0 and evicted == ["a"]


def test_ttl_iteration_skips_expired_entries_len_drops_them():
    timer, evicted = FakeTimer(), []
    cache = TTLCache(4, ttl=2.0, timer=timer, on_evict=lambda k, v: evicted.append(k))
    cache["a"] = 1
    timer.now = 1.0
    cache["b"] = 2
    timer.now = 2.0
    assert [k for k in cache] == ["b"] and evicted == []
    assert len(cache) == 1 and evicted == ["a"]
    timer.now = 5.0
    with pytest.raises(KeyError):
        del cache["b"]  # expired: gone, reported as an eviction, and a KeyError as in cachetools
    assert evicted == ["a", "b"] and cache.currsize == 0


def test_ttl_subclass_overriding_popitem_sees_the_evictions_of_writes():
    seen = []

    class Watched(TTLCache):
        def popitem(self):
            item = super().popitem()
            seen.append(item)
            return item

    cache = Watched(2, ttl=10.0, timer=FakeTimer())
    cache.update({"a": 1, "b": 2, "c": 3})
    assert seen == [("a", 1)] and cache.evictions == 1


# ----------------------------------------------------------------------------- per policy
def test_lru_evicts_least_recently_used_and_fifo_ignores_reads():
    lru, fifo = LRUCache(2), FIFOCache(2)
    for cache in (lru, fifo):
        cache["a"], cache["b"] = 1, 2
        cache.get("a")
        cache["c"] = 3
    assert sorted(lru) == ["a", "c"] and sorted(fifo) == ["b", "c"]


def test_lfu_evicts_least_frequent_then_least_recent():
    cache = LFUCache(3)
    for key, reads in (("a", 3), ("b", 1), ("c", 1)):
        cache[key] = key
        for _ in range(reads):
            cache[key]
    assert (cache.count("a"), cache.count("b")) == (4, 2)
    cache["d"] = "d"  # b and c both count 2; b was read longer ago
    assert sorted(cache) == ["a", "c", "d"]
    cache["e"] = "e"  # d counts 1
    assert sorted(cache) == ["a", "c", "e"]


def test_lfu_buckets_stay_linked_through_deletes():
    cache = LFUCache(4)
    for key in "abcd":
        cache[key] = key
    for _ in range(3):
        cache["c"]
    del cache["a"], cache["b"], cache["d"]  # the lowest buckets empty out
    cache["e"] = "e"
    assert cache.popitem() == ("e", "e") and cache.popitem() == ("c", "c")
    assert cache._root.next is cache._root  # no bucket left behind


def test_ttl_expires_on_an_injected_timer_and_reports_expiry_as_eviction():
    timer, evicted = FakeTimer(), []
    cache = TTLCache(10, ttl=5.0, timer=timer, on_evict=lambda k, v: evicted.append(k))
    cache["a"] = 1
    timer.now = 3.0
    cache["b"] = 2
    assert cache.get("a") == 1  # a read does not renew
    timer.now = 5.0
    assert "a" not in cache and cache.get("a") is None and cache["b"] == 2
    assert evicted == ["a"] and cache.evictions == 1 and len(cache) == 1
    cache["b"] = 3  # a write renews: b now lives until 10
    timer.now = 9.9
    assert cache["b"] == 3
    timer.now = 10.0
    assert cache.expire() == [("b", 3)] and cache.currsize == 0
    with pytest.raises(KeyError):
        cache["b"]
    with pytest.raises(ValueError):
        TTLCache(1, ttl=0)


def test_ttl_evicts_lru_when_full():
    cache = TTLCache(2, ttl=100.0, timer=FakeTimer())
    cache["a"], cache["b"] = 1, 2
    cache["a"]
    cache["c"] = 3
    assert sorted(cache) == ["a", "c"]


def test_random_eviction_draws_from_the_injected_rng():
    def run(seed):
        cache = RandomCache(5, rng=random.Random(seed))
        for i in range(50):
            cache[i] = i
        return sorted(cache)
    assert run(1) == run(1) and len({tuple(run(s)) for s in range(6)}) > 1


def test_arc_ghost_hits_move_the_target_both_ways():
    cache = ARCCache(2)
    cache["a"], cache["b"] = 1, 1
    cache["a"]  # a -> T2
    cache["c"] = 1  # T1 = [b] exceeds p = 0: b -> B1
    assert cache.segment_sizes() == {"t1": 1, "t2": 1, "b1": 1, "b2": 0, "p": 0.0}
    cache["b"] = 1  # ghost hit in B1: p grows, b returns into T2
    assert cache.segment_sizes()["p"] == 1.0 and "b" in cache
    assert cache.segment_sizes() == {"t1": 1, "t2": 1, "b1": 0, "b2": 1, "p": 1.0}  # p = 1 = |T1|: a -> B2
    cache["a"] = 1  # ghost hit in B2: p shrinks back
    assert cache.segment_sizes()["p"] == 0.0 and "a" in cache


def test_arc_adaptation_step_is_real_valued():
    cache = ARCCache(10)
    cache._b1.update(x=1)
    cache._b2.update(dict.fromkeys("abc", 1))
    cache._sb1, cache._sb2 = 1, 3
    cache["x"] = 1  # |B2|/|B1| = 3
    assert cache.p == 3.0
    cache._b2["y"] = 1
    cache._sb2 += 1
    cache["y"] = 1  # in B2: p -= max(1, |B1|/|B2|) = 1
    assert cache.p == 2.0


def test_tinylfu_keeps_a_hot_set_through_a_scan():
    cache = TinyLFUCache(100, rng=random.Random(0))
    hot = list(range(80))
    for _ in range(20):
        for key in hot:
            if cache.get(key) is None:
                cache[key] = key
    for key in range(1000, 3000):  # a one-pass scan, 20 x the cache
        if cache.get(key) is None:
            cache[key] = key
    assert sum(key in cache for key in hot) >= 75
    assert sum(cache.segment_sizes()[s] for s in ("window", "probation", "protected")) == cache.currsize


def test_lru_loses_the_same_hot_set_to_the_scan():
    cache = LRUCache(100)
    for key in list(range(80)) * 20 + list(range(1000, 3000)):
        if cache.get(key) is None:
            cache[key] = key
    assert not any(key in cache for key in range(80))


def test_frequency_sketch_counts_saturates_and_ages():
    sketch = FrequencySketch(64)
    for _ in range(20):
        sketch.increment("k")
    assert sketch.frequency("k") == 15 and sketch.frequency("never") <= 1
    for i in range(sketch.sample_size):  # enough additions to trigger a reset
        sketch.increment(i)
    assert sketch.frequency("k") <= 7


def test_tinylfu_byte_bounded_grows_its_sketch():
    cache = TinyLFUCache(64 * 1024, len)
    first = cache._sketch.capacity
    for i in range(2000):
        cache[i] = "x" * 8
    assert cache._sketch.capacity > first and cache.currsize == 16000


def test_tinylfu_climber_moves_the_window_toward_recency_on_a_recency_trace():
    rng = random.Random(3)
    cache = TinyLFUCache(200, rng=random.Random(0))
    start = cache.segment_sizes()["window_max"]
    keys, recent = [], []
    for i in range(120_000):  # mostly re-reads of the last ~300 keys: LRU-friendly; 12 samples
        key = recent[-rng.randrange(1, 300)] if len(recent) > 300 and rng.random() < 0.7 else i
        recent.append(key)
        keys.append(key)
    simulate(cache, keys)
    assert cache.segment_sizes()["window_max"] > start


# ------------------------------------------------------------------- selection, benchmarks
@pytest.mark.parametrize(("characteristics", "expected"), [
    ({"access_pattern": "temporal", "data_size": 1 << 20, "performance": "critical"}, "lru"),
    ({"access_pattern": "sequential"}, "fifo"),
    ({"access_pattern": "uniform"}, "random"),
    ({"access_pattern": "frequency", "data_size": 1 << 20}, "lfu"),
    ({"access_pattern": "frequency", "data_size": 1 << 30}, "tinylfu"),
    ({"access_pattern": "mixed"}, "tinylfu"),
    ({"access_pattern": "mixed", "performance": "critical"}, "arc"),
    ({}, "tinylfu"),
    ({"access_pattern": "temporal", "ttl": 30}, "ttl"),
])
def test_recommend_policy_follows_the_spec_table(characteristics, expected):
    name, reason = explain_policy(characteristics)
    assert recommend_policy(characteristics) == name == expected and name in POLICIES
    assert len(reason) > 20


def test_recommend_policy_rejects_an_unknown_pattern():
    with pytest.raises(ValueError, match="access_pattern"):
        recommend_policy({"access_pattern": "psychic"})


def test_benchmark_policies_reports_every_policy_over_any_key_sequence():
    keys = (i % 30 for i in range(600))  # a generator: replayed once per policy
    rows = benchmark_policies(keys, 40)
    assert [r["policy"] for r in rows] == list(POLICIES)
    for row in rows:
        assert row["hits"] == 570 and math.isclose(row["hit_ratio"], 0.95) and row["ops_per_s"] > 0
    custom = benchmark_policies(["a", "b", "a"], 1, {"mine": lambda n: LRUCache(n)})
    assert custom[0]["policy"] == "mine" and custom[0]["hits"] == 0 and custom[0]["evictions"] == 2
