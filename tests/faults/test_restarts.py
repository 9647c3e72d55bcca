"""Actor processes dying under a running system: nothing acknowledged is lost."""

from __future__ import annotations

import time

import pytest
import ray

from erlmcp_ray.actors.options import COORDINATOR, owner_name, shard_name
from erlmcp_ray.core.routing import shard_for
from tests.conftest import one_coherence_round, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_owner_killed_loses_nothing_whether_restarted_or_replaced(system, client):
    """The owner's process dies: the supervisor promotes its replica (a failed check means a dead
    process), or Ray restarts it first and it recovers from the replica; either way every write
    survives and one copy owns the shard."""
    shards = system.config.domain("shared").shards
    keys = [f"k{i}" for i in range(200)]
    for k in keys[:100]:
        client.put("shared", k, {"k": k}, consistency="strong")
    for k in keys[100:]:
        client.put("shared", k, {"k": k})  # eventual
    client.flush(timeout=30)
    victim = ray.get_actor(shard_name("shared", shard_for("k0", shards), 0), namespace=system.namespace)
    ray.kill(victim, no_restart=False)  # the process dies; Ray reruns the constructor
    # writes issued while the owner is down are retried by the client until it is back
    client.put("shared", "during", "restart")
    client.flush(timeout=60)
    for k in keys:
        assert client.get("shared", k, consistency="strong") == {"k": k}, k
    assert client.get("shared", "during", consistency="strong") == "restart"
    owner = ray.get_actor(owner_name(system.namespace, "shared", shard_for("k0", shards)), namespace=system.namespace)
    stats = ray.get(owner.stats.remote(), timeout=30)
    assert stats["role"] == "owner" and stats["entries"] >= sum(1 for k in keys if shard_for(k, shards) ==
                                                                   shard_for("k0", shards))


def test_coordinator_restart_makes_clients_drop_their_caches(system, client):
    reader = system.client()
    try:
        client.put("shared", "c", 1, consistency="strong")
        assert reader.get("shared", "c") == 1
        assert reader.get("shared", "c", local_only=True) == 1
        coordinator = ray.get_actor(COORDINATOR, namespace=system.namespace)
        before = ray.get(coordinator.ping.remote(), timeout=30)
        ray.kill(coordinator, no_restart=False)
        wait_for(lambda: _epoch(coordinator) not in (None, before), timeout=60, what="coordinator restart")
        wait_for(lambda: reader.stats()["tiers"]["gaps"] >= 1, timeout=30, what="reader to notice")
        assert reader.get("shared", "c", local_only=True) is None  # cache dropped, not trusted blindly
        client.put("shared", "c", 2)
        client.flush(timeout=30)
        one_coherence_round(reader)
        assert reader.get("shared", "c") == 2
    finally:
        reader.close()


def _epoch(handle):
    try:
        return ray.get(handle.ping.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - still restarting
        time.sleep(0.1)
        return None


def test_strong_writes_ride_through_an_owner_restart(system, client):
    shards = system.config.domain("shared").shards
    victim = ray.get_actor(shard_name("shared", shard_for("s0", shards), 0), namespace=system.namespace)
    client.put("shared", "s0", 0, consistency="strong")
    ray.kill(victim, no_restart=False)
    for i in range(1, 20):
        client.put("shared", "s0", i, consistency="strong")
    assert client.get("shared", "s0", consistency="strong") == 19
    replica = ray.get_actor(shard_name("shared", shard_for("s0", shards), 1), namespace=system.namespace)
    status, rec, _, _ = ray.get(replica.read.remote("s0", float("inf")), timeout=30)
    assert status == "ok" and rec is not None  # the replica applied the strong writes too
