"""Eviction invariants under any operation sequence (Hypothesis), and exact hit counts against
naive reference implementations on synthetic traces."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erlmcp_ray.eviction import POLICIES, ARCCache, FIFOCache, LFUCache, LRUCache, make_cache, simulate

# ------------------------------------------------------------------------------ strategies
KEYS = st.integers(0, 11)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(1, 6)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("del"), KEYS),
        st.tuples(st.just("popitem")),
        st.tuples(st.just("tick"), st.integers(0, 4)),
        st.tuples(st.just("copy")),
    ),
    max_size=60,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class Reference:
    """A plain dict, minus whatever the cache reports evicted."""

    def __init__(self) -> None:
        self.model: dict = {}
        self.reported = 0

    def on_evict(self, key, value) -> None:
        assert self.model.pop(key) == value
        self.reported += 1


def build(name, maxsize, sized, ref, clock):
    kwargs = {"rng": random.Random(0)} if name in ("random", "tinylfu") else {}
    if name == "ttl":
        kwargs = {"ttl": 5, "timer": clock}
    return make_cache(name, maxsize, len if sized else None, on_evict=ref.on_evict, **kwargs)


def apply(cache, ref, clock, op) -> None:
    if op[0] == "set":
        value = "v" * op[2]
        if cache.getsizeof(value) > cache.maxsize:
            with pytest.raises(ValueError):  # larger than the whole cache: refused, nothing changes
                cache[op[1]] = value
            return
        ref.model[op[1]] = value  # first: the store may evict the key itself, reported with this value
        cache[op[1]] = value
    elif op[0] == "get":
        assert cache.get(op[1], "miss") == ref.model.get(op[1], "miss")
    elif op[0] == "del" and op[1] in cache:
        del cache[op[1]]
        del ref.model[op[1]]
    elif op[0] == "popitem" and len(cache):
        cache.popitem()
    elif op[0] == "tick":
        clock.now += op[1]


def check_invariants(cache, ref, sized) -> None:
    n = len(cache)  # first: len() drops expired TTL entries (reported); iterating only skips them
    keys = set(cache)
    assert keys == set(ref.model) and n == len(keys)
    assert all(cache.get(k) == v for k, v in ref.model.items())
    assert cache.currsize == sum(len(v) if sized else 1 for v in ref.model.values()) <= cache.maxsize
    assert cache.evictions == ref.reported
    if isinstance(cache, ARCCache):
        s, c = cache.segment_sizes(), cache.maxsize
        assert s["t1"] + s["t2"] == cache.currsize <= c
        assert s["t1"] + s["b1"] <= c
        assert s["t1"] + s["t2"] + s["b1"] + s["b2"] <= 2 * c
        assert 0 <= s["p"] <= c
    if name_of(cache) == "tinylfu":
        s = cache.segment_sizes()
        assert s["window"] + s["probation"] + s["protected"] == cache.currsize
        assert s["window_max"] + s["protected_max"] <= cache.maxsize


def name_of(cache) -> str:
    return next(n for n, cls in POLICIES.items() if type(cache) is cls)


# ------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=150, deadline=None)
@given(maxsize=st.integers(1, 8), sized=st.booleans(), ops=OPS)
def test_any_operation_sequence_keeps_the_bound_and_agrees_with_a_dict(name, maxsize, sized, ops):
    ref, clock = Reference(), Clock()
    cache = build(name, maxsize * 3 if sized else maxsize, sized, ref, clock)
    for op in ops:
        if op[0] == "copy":  # carry on with a shallow copy: it must hold the whole state, and share none
            twin, model = copy.copy(cache), dict(ref.model)
            assert dict(twin.items()) == dict(cache.items()) and twin.currsize == cache.currsize
            if cache:
                cache.popitem()  # the original's evictions (reported to ``ref``) must not touch the copy
                assert dict(twin.items()) == {k: v for k, v in model.items() if k in twin}
                assert twin.currsize == sum(len(v) if sized else 1 for v in model.values())
            ref.model, ref.reported = model, twin.evictions  # the copy holds what the original held
            cache = twin
        else:
            apply(cache, ref, clock, op)
        check_invariants(cache, ref, sized)


@settings(max_examples=300, deadline=None)
@given(maxsize=st.integers(1, 12), trace=st.lists(st.integers(0, 30), max_size=300))
def test_arc_keeps_the_papers_invariants_on_any_trace(maxsize, trace):
    cache = ARCCache(maxsize)
    for key in trace:
        if cache.get(key) is None:
            cache[key] = key
        s = cache.segment_sizes()
        assert s["t1"] + s["t2"] <= maxsize and s["t1"] + s["b1"] <= maxsize
        assert s["t1"] + s["t2"] + s["b1"] + s["b2"] <= 2 * maxsize and 0 <= s["p"] <= maxsize
    assert simulate(ARCCache(maxsize), trace) == naive_arc_hits(trace, maxsize)


# ----------------------------------------------------------------- naive references, exact
def naive_lru_hits(trace, c):
    cache, hits = [], 0
    for key in trace:
        if key in cache:
            hits += 1
            cache.remove(key)
        elif len(cache) == c:
            cache.pop(0)
        cache.append(key)
    return hits


def naive_fifo_hits(trace, c):
    cache, hits = [], 0
    for key in trace:
        if key in cache:
            hits += 1
            continue
        if len(cache) == c:
            cache.pop(0)
        cache.append(key)
    return hits


def naive_lfu_hits(trace, c):
    """Evict the smallest (count, last access): the spec's "sort by access_count", ties by recency."""
    count, last, hits = {}, {}, 0
    for t, key in enumerate(trace):
        if key in count:
            hits += 1
            count[key] += 1
        else:
            if len(count) == c:
                victim = min(count, key=lambda k: (count[k], last[k]))
                del count[victim], last[victim]
            count[key] = 1
        last[key] = t
    return hits


def naive_arc_hits(trace, c):
    """Megiddo & Modha, FAST 2003, Figure 4, transcribed with plain lists (LRU first)."""
    t1, t2, b1, b2, p, hits = [], [], [], [], 0.0, 0

    def replace(x):
        if t1 and ((x in b2 and len(t1) == p) or len(t1) > p):
            b1.append(t1.pop(0))
        else:
            b2.append(t2.pop(0))

    for x in trace:
        if x in t1 or x in t2:  # case I
            hits += 1
            (t1 if x in t1 else t2).remove(x)
            t2.append(x)
        elif x in b1:  # case II
            p = min(p + (1 if len(b1) >= len(b2) else len(b2) / len(b1)), c)
            replace(x)
            b1.remove(x)
            t2.append(x)
        elif x in b2:  # case III
            p = max(p - (1 if len(b2) >= len(b1) else len(b1) / len(b2)), 0)
            replace(x)
            b2.remove(x)
            t2.append(x)
        else:  # case IV
            if len(t1) + len(b1) == c:
                if len(t1) < c:
                    b1.pop(0)
                    replace(x)
                else:
                    t1.pop(0)
            elif len(t1) + len(t2) + len(b1) + len(b2) >= c:
                if len(t1) + len(t2) + len(b1) + len(b2) == 2 * c:
                    b2.pop(0)
                replace(x)
            t1.append(x)
    return hits


def synthetic_traces():
    rng = random.Random(42)
    skewed = [int(rng.paretovariate(0.7)) % 3000 for _ in range(4000)]
    loop = [i % 100 if rng.random() < 0.9 else rng.randrange(500) for i in range(3000)]
    mixed = []
    for block in range(40):  # a hot set interleaved with scans and a drifting working set
        mixed += [rng.randrange(20) for _ in range(40)] + list(range(1000 + 50 * block, 1060 + 50 * block))
        mixed += [rng.randrange(block * 10, block * 10 + 80) for _ in range(40)]
    return {"skewed": skewed, "loop": loop, "mixed": mixed}


TRACES = synthetic_traces()


@pytest.mark.parametrize("trace", sorted(TRACES))
@pytest.mark.parametrize("c", [1, 10, 64, 128])
@pytest.mark.parametrize(("cls", "naive"), [(LRUCache, naive_lru_hits), (FIFOCache, naive_fifo_hits),
                                            (LFUCache, naive_lfu_hits), (ARCCache, naive_arc_hits)],
                         ids=["lru", "fifo", "lfu", "arc"])
def test_hit_counts_equal_the_naive_reference(cls, naive, c, trace):
    keys = TRACES[trace]
    assert simulate(cls(c), keys) == naive(keys, c)


def test_the_traces_tell_the_policies_apart():
    # Otherwise the exact comparisons above would prove little: every two policies differ somewhere.
    runs = {cls: [simulate(cls(c), keys) for keys in TRACES.values() for c in (10, 64, 128)]
            for cls in (LRUCache, FIFOCache, LFUCache, ARCCache)}
    assert len({tuple(hits) for hits in runs.values()}) == 4
    assert all(hits > 0 for run in runs.values() for hits in run)
