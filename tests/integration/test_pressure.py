"""Memory limits and pressure on a real Ray (issue "Memory limits and pressure")."""

from __future__ import annotations

import pytest
import ray

from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.errors import MemoryPressureError
from tests.conftest import module_system

pytestmark = pytest.mark.ray

LIMIT = 20_000
CFG = {
    "domains": {
        "session": {"shards": 1},
        "shared": {"shards": 1},
        "notes": {"backend": "replicated", "max_bytes": LIMIT, "shards": 1},  # not evictable
        "scratch": {"max_bytes": LIMIT, "eviction": "lru"},  # evictable
    },
    "client": {"poll_timeout_s": 0.5},
}


system = module_system(CFG, "pressure")


def owner(domain):
    return ray.get_actor(shard_name(domain, 0, 0), namespace="pressure")


def stats(domain):
    return ray.get(owner(domain).stats.remote(), timeout=30)


def test_a_non_evictable_domain_goes_through_every_level_then_refuses_growth(system, client):
    acknowledged = {}
    levels = []
    i = 0
    with pytest.raises(MemoryPressureError) as info:
        while i < 1000:
            key = f"n{i:04d}"
            client.put("notes", key, "v" * 150, consistency="strong")
            acknowledged[key] = "v" * 150
            levels.append(stats("notes")["pressure"]["level"])
            i += 1
    err = info.value
    assert err.domain == "notes" and str(LIMIT) in err.limit and "critical" in str(err)
    assert [lv for n, lv in enumerate(levels) if n == 0 or levels[n - 1] != lv] == \
        ["low", "medium", "high", "critical"]
    st = stats("notes")
    assert st["refused_writes"] >= 1 and st["bytes"] <= LIMIT
    assert [c[2] for c in st["pressure_changes"]] == ["medium", "high", "critical"]
    # nothing acknowledged was lost; reads are served
    for key, value in acknowledged.items():
        assert client.get("notes", key, consistency="strong") == value
    # writes that do not grow it, and deletes, still work
    first = next(iter(acknowledged))
    client.put("notes", first, "v", consistency="strong")  # shrinks
    with pytest.raises(MemoryPressureError):
        client.put("notes", "brand-new", "v" * 150, consistency="strong")
    with pytest.raises(MemoryPressureError):  # eventual writes learn it at flush()
        client.put("notes", "buffered-new", "v" * 150)
        client.flush(timeout=30)
    assert client.get("notes", "buffered-new", consistency="strong") is None
    for key in list(acknowledged)[: len(acknowledged) // 2]:
        assert client.delete("notes", key, consistency="strong") is True
    client.put("notes", "brand-new", "v" * 150, consistency="strong")  # accepted again
    assert client.get("notes", "brand-new", consistency="strong") == "v" * 150


def test_an_evictable_domain_evicts_under_pressure_instead_of_refusing(system, client):
    for i in range(1000):
        client.put("scratch", f"s{i:04d}", "w" * 150)
    client.flush(timeout=30)
    st = stats("scratch")
    assert st["evictions"] > 0 and st["refused_writes"] == 0
    assert st["bytes"] <= 0.9 * LIMIT  # pressure eviction keeps it out of critical
    assert client.get("scratch", "s0999", consistency="strong") == "w" * 150


def test_domain_stats_cluster_memory_force_gc_and_compact(system, client):
    ds = client.get_domain_stats("notes")
    assert ds["pressure"] in ("low", "medium", "high", "critical") and ds["limit"] == LIMIT
    assert ds["refused_writes"] >= 1 and ds["shards"] == 1 and ds["replicas"] == 1
    for i in range(50):
        client.put("shared", f"ttl{i}", "t" * 100, ttl=0.2, consistency="strong")
    import time

    time.sleep(0.4)
    freed = client.force_gc()
    assert freed["expired_purged"] >= 50 and freed["accounted_bytes_freed"] > 0 and freed["copies"] >= 6
    for i in range(3000):
        client.put("shared", f"c{i}", i)
    client.flush(timeout=60)
    for i in range(3000):
        client.delete("shared", f"c{i}")
    out = client.compact()
    assert out["copies"] >= 6 and set(out) >= {"expiry_items_dropped", "log_ops_dropped", "rss_bytes_freed"}
    cm = client.get_cluster_memory()
    assert cm["nodes"] == 1 and cm["total_memory_bytes"] == system.config.limits.max_bytes
    node = cm["node_data"][0]
    copies = sum(1 for d in system.config.domains for _ in range(system.config.domain(d).shards)
                 for _ in range(system.config.replication_factor_for(d)))
    assert node["actors"] == copies and node["processes"] > 0 and node["memory_total"] > 0
    assert node["bytes"] == sum(c[3] for c in node["copies"]) == cm["used_bytes"]
