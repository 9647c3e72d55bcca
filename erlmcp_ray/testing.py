"""The test kit, shipped so that users' own tests can use it too (no pytest, Hypothesis or Ray needed).

    check_cache_policy(factory)   an eviction policy (``erlmcp_ray.eviction``) behaves as a
                                  size-bounded mapping that reports what it evicts
    check_store(factory, reopen)  a durable store (``erlmcp_ray.storage``) keeps records and
                                  blobs byte for byte, fences epochs atomically, survives reopening
    FakeTransport(config)         the whole memory system in this process (real shard copies and
                                  invalidation log), behind the client's Transport seam; faults
                                  (hold/release, down/up, restart) and call hooks; ``.client()``
    Copy(domain, shard, slot)     names a shard copy, for FakeTransport's faults
    HistoryRecorder()             records put/get invocations and returns from many threads
    check_linearizable(history)   per key: does some order explain every read?
    strong_history_through(fault, clients, ...)  a recorded strong workload with a fault half-way
    keys_on_shard(prefix, n, shard, shards)      key names that all live on one shard
    lost_writes(history, final)   keys whose last acknowledged write is gone
    kill_actor, pause_copy, partition_owner, owner_slot   faults for a running system (need Ray)
    failover_cluster(workers)     a multi-node Cluster on this machine, for node-loss tests
    wait_consistent(client)       sync, then wait until verify_state() finds every copy equal
    partition(namespace, *sides)  cut a running system's processes into sides (a network partition
                                  at the application level; needs Ray); end_partition() ends it

The contract suite raises ``AssertionError`` naming the broken rule and returns nothing when all
hold: deterministic scenarios plus a seeded random walk checked against a plain ``dict``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["check_cache_policy"]

#: ``factory(maxsize, getsizeof=None, on_evict=None)`` -> a new, empty cache.
CacheFactory = Callable[..., Any]


def check_cache_policy(factory: CacheFactory, *, seed: int = 0, steps: int = 3000) -> None:
    """Hold a cache policy to the contract of ``erlmcp_ray.eviction.Cache``.

    ``factory(maxsize, getsizeof=None, on_evict=None)`` must build an empty cache. The contract:
    a ``MutableMapping`` with ``maxsize``, ``currsize``, ``getsizeof``, ``popitem`` and an
    ``evictions`` counter; ``currsize`` is the sum of ``getsizeof(value)`` and never exceeds
    ``maxsize``; a stored key is readable at once; every removal the caller did not ask for
    (and every ``popitem``) is reported once to ``on_evict(key, value)`` and counted, and
    explicit removals (``del``, ``pop``, ``clear``) are neither.
    """
    for check in (_empty, _round_trip, _bounded_by_count, _bounded_by_size, _explicit_is_not_eviction,
                  _reads_while_iterating):
        check(factory)
    for getsizeof in (None, len):
        _random_walk(factory, getsizeof, random.Random(seed), steps)


class _Recorder:
    """A reference ``dict`` that forgets what the cache reports evicted."""

    def __init__(self) -> None:
        self.model: dict = {}
        self.reported = 0

    def __call__(self, key: Hashable, value: Any) -> None:
        assert key in self.model, f"on_evict reported {key!r}, which the cache should not hold"
        assert self.model[key] == value, f"on_evict reported {key!r} with a stale value"
        del self.model[key]
        self.reported += 1


def _agrees(cache: Any, rec: _Recorder, getsizeof: Callable[[Any], int] | None = None) -> None:
    n = len(cache)  # first: len() drops expired entries (reported: updates ``rec``); iterating skips them
    keys = set(cache)
    assert keys == set(rec.model), f"holds {sorted(map(repr, keys ^ set(rec.model)))} unlike the reference"
    for key in keys:
        assert key in cache and cache.get(key) == rec.model[key], f"wrong value for {key!r}"
    size = sum((getsizeof or (lambda v: 1))(v) for v in rec.model.values())
    assert cache.currsize == size, f"currsize {cache.currsize} but the values weigh {size}"
    assert cache.currsize <= cache.maxsize, f"currsize {cache.currsize} > maxsize {cache.maxsize}"
    assert n == len(keys) == len(cache)
    assert cache.evictions == rec.reported, "evictions counter disagrees with on_evict calls"


def _empty(factory: CacheFactory) -> None:
    cache = factory(4)
    assert (len(cache), cache.currsize, cache.maxsize, cache.evictions) == (0, 0, 4, 0)
    assert "k" not in cache and cache.get("k") is None and cache.get("k", 7) == 7
    for action in (lambda: cache["k"], lambda: cache.__delitem__("k"), cache.popitem, lambda: cache.pop("k")):
        try:
            action()
        except KeyError:
            continue
        raise AssertionError("an empty cache must raise KeyError")
    assert cache.pop("k", None) is None and cache.getsizeof("anything") == 1


def _round_trip(factory: CacheFactory) -> None:
    cache = factory(4)
    cache["a"] = 1
    assert cache["a"] == 1 and cache.get("a") == 1 and "a" in cache and list(cache) == ["a"]
    cache["a"] = 2  # an overwrite is not a new entry
    assert cache["a"] == 2 and len(cache) == 1 and cache.currsize == 1
    cache["b"] = None  # None is a value like any other
    assert "b" in cache and cache.get("b", "default") is None
    assert dict(cache.items()) == {"a": 2, "b": None} and sorted(cache.keys()) == ["a", "b"]
    assert cache.pop("a") == 2 and "a" not in cache and cache.currsize == 1


def _bounded_by_count(factory: CacheFactory) -> None:
    rec = _Recorder()
    cache = factory(8, on_evict=rec)
    for i in range(50):
        rec.model[i] = f"v{i}"  # first: storing may evict the key itself (reported with its new value)
        cache[i] = f"v{i}"
        assert cache.get(i) == f"v{i}", "a key just stored must be readable"
        _agrees(cache, rec)
    assert len(cache) == 8 and cache.evictions == 42


def _bounded_by_size(factory: CacheFactory) -> None:
    rec = _Recorder()
    cache = factory(100, getsizeof=len, on_evict=rec)
    rng = random.Random(1)
    for _ in range(200):
        key, value = rng.randrange(30), "x" * rng.randint(0, 40)
        rec.model[key] = value
        cache[key] = value
        _agrees(cache, rec, len)
    before = dict(cache.items())
    try:
        cache["huge"] = "x" * 101
    except ValueError:
        pass
    else:
        raise AssertionError("a value larger than maxsize must raise ValueError")
    assert dict(cache.items()) == before and "huge" not in cache, "a refused value must change nothing"


def _explicit_is_not_eviction(factory: CacheFactory) -> None:
    rec = _Recorder()
    cache = factory(4, on_evict=rec)
    for key in "abcd":
        rec.model[key] = key
        cache[key] = key
    del cache["a"]
    assert cache.pop("b") == "b"
    del rec.model["a"], rec.model["b"]
    assert cache.evictions == 0 and rec.reported == 0, "del/pop are not evictions"
    key, value = cache.popitem()
    assert key in "cd" and value == key and cache.evictions == 1 and rec.reported == 1, \
        "popitem is an eviction: counted and reported"
    cache.clear()
    assert len(cache) == 0 and cache.currsize == 0 and rec.reported == 1, "clear is not an eviction"
    cache["e"] = "e"
    assert cache["e"] == "e", "a cleared cache keeps working"


def _reads_while_iterating(factory: CacheFactory) -> None:
    cache = factory(16)
    for i in range(16):
        cache[i] = i
    assert sorted(cache[key] for key in cache) == list(range(16)), "reading while iterating must work"
    assert sorted(cache.values()) == list(range(16)) and dict(cache.items()) == {i: i for i in range(16)}


def _random_walk(factory: CacheFactory, getsizeof: Callable[[Any], int] | None,
                 rng: random.Random, steps: int) -> None:
    rec = _Recorder()
    maxsize = 16 if getsizeof is None else 64
    cache = factory(maxsize, getsizeof=getsizeof, on_evict=rec)
    for _ in range(steps):
        key, roll = rng.randrange(40), rng.random()
        if roll < 0.45:
            value = "v" * rng.randint(1, 12)
            rec.model[key] = value
            cache[key] = value
        elif roll < 0.85:
            assert cache.get(key, "missing") == rec.model.get(key, "missing"), f"get({key!r}) disagrees"
        elif roll < 0.95 and key in rec.model:
            del cache[key]
            del rec.model[key]
        elif cache:
            evicted, _ = cache.popitem()
            assert evicted not in cache, "popitem must remove what it returns"
        _agrees(cache, rec, getsizeof)


# The fake transport and the linearizability checker live in erlmcp_ray._testkit; shipped from here.
from erlmcp_ray._testkit.fake_transport import FakePending, FakeTransport
from erlmcp_ray._testkit.faults import (
    failover_cluster,
    kill_actor,
    owner_slot,
    partition_owner,
    pause_copy,
    wait_consistent,
)
from erlmcp_ray._testkit.history import (
    HistoryRecorder,
    LinearizabilityResult,
    Operation,
    check_linearizable,
)
from erlmcp_ray._testkit.store_contract import check_store
from erlmcp_ray._testkit.workload import keys_on_shard, lost_writes, strong_history_through
from erlmcp_ray.client._transport import Copy

__all__ += [
    "Copy",
    "FakePending",
    "FakeTransport",
    "HistoryRecorder",
    "LinearizabilityResult",
    "Operation",
    "check_linearizable",
    "check_store",
    "end_partition",
    "failover_cluster",
    "keys_on_shard",
    "kill_actor",
    "lost_writes",
    "owner_slot",
    "partition",
    "partition_owner",
    "pause_copy",
    "strong_history_through",
    "wait_consistent",
]


def partition(namespace: str, *sides: list[str]) -> None:
    """Cut the system running in ``namespace`` into ``sides``: each a list of ``fnmatch`` patterns over
    places -- ``erlmcp:shard:{domain}:{shard}:{slot}``, ``erlmcp:supervisor``, ``erlmcp:coordinator``,
    ``client:{client.client_id}``. Messages between places on different sides fail as unreachable
    (a place no side names reaches everyone). Returns once in effect in every process (~0.25 s)."""
    from erlmcp_ray import _faults

    _faults.set_partition(namespace, sides)


def end_partition(namespace: str) -> None:
    """Every process reaches every other again (returns once it does); the supervisor then merges
    what the cut-off copies took (or call ``client.recovery.heal_partition()``)."""
    from erlmcp_ray import _faults

    _faults.clear_partition(namespace)
