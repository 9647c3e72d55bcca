"""Placement and reads on a real 3-node Ray cluster (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name

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
