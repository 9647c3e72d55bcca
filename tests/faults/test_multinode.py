"""Placement and reads on a real 3-node Ray cluster (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name
from tests.conftest import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="multinode", log_to_driver=False, logging_level="ERROR")
    yield c
    ray.shutdown()
    c.shutdown()


@ray.remote(num_cpus=1)
def write_and_read_elsewhere(client, key):
    client.put("shared", key, {"node": ray.get_runtime_context().get_node_id()}, consistency="strong")
    return client.get("shared", key, consistency="strong")


def test_copies_of_each_shard_sit_on_different_nodes(cluster):
    cfg = {"distributed_memory": {"replication_factor": 3},
           "domains": {"session": {"shards": 2}, "shared": {"shards": 2}}}
    system = erlmcp_ray.start(cfg, namespace="multinode", address=cluster.address)
    try:
        for domain in ("session", "shared"):
            copies = system.config.replication_factor_for(domain)
            assert copies == 3
            for shard in range(system.config.domain(domain).shards):
                handles = [ray.get_actor(shard_name(domain, shard, s), namespace="multinode") for s in range(copies)]
                nodes = [st["node_id"] for st in ray.get([h.stats.remote() for h in handles], timeout=60)]
                assert len(set(nodes)) == 3, (domain, shard, nodes)
        client = system.client()
        try:
            refs = [write_and_read_elsewhere.remote(client, f"k{i}") for i in range(6)]
            results = ray.get(refs, timeout=120)
            assert all(r and "node" in r for r in results)
            assert len({r["node"] for r in results}) >= 2  # the tasks really ran on several nodes
            for i, r in enumerate(results):
                assert client.get("shared", f"k{i}", consistency="strong") == r
            client.flush(timeout=30)
            # node totals add up to the copies each node holds (checked against each copy's own stats)
            by_node: dict[str, int] = {}
            for domain in system.config.domains:
                for shard in range(system.config.domain(domain).shards):
                    for slot in range(system.config.replication_factor_for(domain)):
                        h = ray.get_actor(shard_name(domain, shard, slot), namespace="multinode")
                        st = ray.get(h.stats.remote(), timeout=60)
                        by_node[st["node_id"]] = by_node.get(st["node_id"], 0) + st["bytes"]
            cm = client.get_cluster_memory()
            assert cm["nodes"] == 3 and cm["total_memory_bytes"] == 3 * system.config.limits.max_bytes
            assert {n["node_id"]: n["bytes"] for n in cm["node_data"]} == by_node
            assert sum(by_node.values()) > 0 and all(n["processes"] > 0 for n in cm["node_data"])
        finally:
            client.close()
    finally:
        erlmcp_ray.shutdown("multinode")


def test_auto_select_replicates_a_write_heavy_domain_across_nodes(cluster, tmp_path):
    """On several nodes, moderate durability means replicas (spec Mnesia): the selector adds them,
    each on another node than its owner, while tasks on every node keep writing."""
    ns = "multinode_selector"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "persistence_selector": {"evaluation_interval": 1000},
           "domains": {"notes": {"max_bytes": "10MB", "shards": 2}},
           "client": {"poll_timeout_s": 0.5}}
    system = erlmcp_ray.start(cfg, namespace=ns, address=cluster.address)
    client = system.client()
    try:
        for i in range(300):
            client.put("notes", f"k{i}", i, consistency="strong")
        wait_for(lambda: client.selector.current_strategies()["domains"]["notes"]["backend"] == "replicated",
                 timeout=60, interval=0.2, what="the selector to replicate notes")
        report = client.selector.current_strategies()["domains"]["notes"]
        assert report["copies"] == 2 and "several nodes" in report["migrations"][-1]["reason"]
        for shard in range(2):
            owner = ray.get_actor(shard_name("notes", shard, 0), namespace=ns)
            replica = ray.get_actor(shard_name("notes", shard, 1), namespace=ns)
            o, r = ray.get([owner.stats.remote(), replica.stats.remote()], timeout=60)
            assert o["node_id"] != r["node_id"] and o["replicas"][1]["in_sync"]
        refs = [write_and_read_elsewhere.remote(client, f"after{i}") for i in range(4)]
        assert all(ray.get(refs, timeout=120))
        for i in range(300):
            assert client.get("notes", f"k{i}", consistency="strong") == i
    finally:
        client.close()
        erlmcp_ray.shutdown(ns, purge=True)


@ray.remote(num_cpus=1)
def strong_ops_on_a_node(client, prefix, n):
    for i in range(n):
        client.put("shared", f"{prefix}{i}", i, consistency="strong")
    values = [client.get("shared", f"{prefix}{i}", consistency="strong") for i in range(n)]
    return ray.get_runtime_context().get_node_id(), values, client.stats()["transport"]


def test_the_direct_data_plane_across_nodes(cluster):
    """Copies on three nodes, callers as tasks on several nodes: the callers' strong reads and writes
    (and each replica's apply) go over the copies' endpoints on their nodes' addresses, none over Ray."""
    ns = "multinode_direct"
    cfg = {"distributed_memory": {"replication_factor": 3}, "domains": {"shared": {"shards": 1}}}
    system = erlmcp_ray.start(cfg, namespace=ns, address=cluster.address)
    try:
        client = system.client()
        try:
            handles = [ray.get_actor(shard_name("shared", 0, s), namespace=ns) for s in range(3)]
            stats = ray.get([h.stats.remote() for h in handles], timeout=60)
            assert len({st["node_id"] for st in stats}) == 3
            before = [st["direct"]["requests"] for st in stats]
            results = ray.get([strong_ops_on_a_node.remote(client, f"t{t}:", 30) for t in range(4)], timeout=180)
            assert len({node for node, _, _ in results}) >= 2  # the callers ran on several nodes
            for _node, values, transport in results:
                assert values == list(range(30))
                assert transport["kind"] == "direct" and transport["fallback"] == 0 and transport["direct"] >= 60
            after = [st["direct"]["requests"] for st in ray.get([h.stats.remote() for h in handles], timeout=60)]
            # the owner served every write and read; each replica applied every strong write
            assert after[0] - before[0] >= 240 and all(after[s] - before[s] >= 120 for s in (1, 2)), (before, after)
        finally:
            client.close()
    finally:
        erlmcp_ray.shutdown(ns)
