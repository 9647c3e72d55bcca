"""Eviction policies: the shipped contract over every policy, the registry, and each policy's own rules."""

from __future__ import annotations

import math
import random
import subprocess
import sys

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
