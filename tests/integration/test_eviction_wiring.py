"""Eviction policies wired into shard stores and client L1s (issue "Eviction policies", part 3)."""

from __future__ import annotations

import pytest
import ray

from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.eviction import ARCCache, LRUCache, TinyLFUCache
from tests.conftest import module_system, one_coherence_round, wait_for

pytestmark = pytest.mark.ray

CFG = {
    "domains": {
        "session": {"shards": 1},
        "shared": {"shards": 1},
        # replicated and evictable: evictions must replicate as deletes
        "hot": {"backend": "replicated", "max_bytes": 40_000, "eviction": "lru", "shards": 1},
        "cache": {"max_bytes": "64KB", "eviction": "tinylfu"},
        "scratch": {"max_bytes": 30_000, "eviction": "arc"},
    },
    "client": {"poll_timeout_s": 0.5},
}


system = module_system(CFG, "eviction")


def copies(domain, n):
    return [ray.get_actor(shard_name(domain, 0, s), namespace="eviction") for s in range(n)]


def test_a_full_evictable_domain_evicts_and_the_evictions_replicate(system, client):
    reader = system.client()
    try:
        client.put("hot", "k0", "x" * 100, consistency="strong")
        assert reader.get("hot", "k0") == "x" * 100  # cached by another client
        for i in range(1, 400):
            client.put("hot", f"k{i}", "x" * 100)
        client.flush(timeout=30)
        owner, replica = copies("hot", 2)
        o, r = ray.get([owner.stats.remote(), replica.stats.remote()], timeout=30)
        assert o["bytes"] <= 40_000 and o["evictions"] > 0 and o["policy"] == "LRUCache"
        wait_for(lambda: len({ray.get(h.digest.remote(), timeout=30) for h in (owner, replica)}) == 1,
                 what="replica to apply the evictions")
        assert client.get("hot", "k0", consistency="strong") is None  # least recently used: gone
        assert client.get("hot", "k399", consistency="strong") == "x" * 100
        one_coherence_round(reader)
        assert reader.get("hot", "k0", local_only=True) is None  # the eviction invalidated caches
        stats = client.get_domain_stats("hot")
        assert stats["evictions"] == o["evictions"] and stats["eviction"] == "lru"
    finally:
        reader.close()


def test_non_evictable_domains_do_not_evict(system, client):
    for i in range(300):
        client.put("shared", f"s{i}", "y" * 100)
    client.flush(timeout=30)
    owner = copies("shared", 1)[0]
    st = ray.get(owner.stats.remote(), timeout=30)
    assert st["policy"] is None and st["evictions"] == 0 and st["entries"] >= 300


def test_each_domain_gets_its_policy_in_the_client_l1(system, client):
    for domain in ("hot", "cache", "scratch", "shared"):
        client.put(domain, "probe", 1, consistency="strong")
        client.get(domain, "probe")
    l1 = client._cache._l1
    assert isinstance(l1["hot"], LRUCache) and isinstance(l1["cache"], TinyLFUCache)
    assert isinstance(l1["scratch"], ARCCache) and isinstance(l1["shared"], LRUCache)
    arc_owner = copies("scratch", 1)[0]
    for i in range(500):
        client.put("scratch", f"a{i}", "z" * 80)
    client.flush(timeout=30)
    st = ray.get(arc_owner.stats.remote(), timeout=30)
    assert st["policy"] == "ARCCache" and st["evictions"] > 0 and st["bytes"] <= 30_000
