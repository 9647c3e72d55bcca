"""``erlmcp_ray.explore``: a system's state as DataFrames (on the in-process FakeTransport: no Ray),
and the trace and policy helpers the notebooks use."""

from __future__ import annotations

import pytest

from erlmcp_ray import explore
from erlmcp_ray.testing import FakeTransport

pd = pytest.importorskip("pandas")


@pytest.fixture
def client():
    fake = FakeTransport({"domains": {"shared": {"shards": 2, "replication_factor": 2}}})
    c = fake.client()
    for i in range(40):
        c.put("shared", f"k{i}", "v" * 50, consistency="strong")
    for i in range(10):
        c.get("shared", f"k{i}")
    c.get("shared", "missing")
    yield c
    c.close()


def test_domains_nodes_and_topology_agree_with_the_stats_calls(client):
    domains = explore.domains(client)
    assert domains.loc["shared", "entries"] == 40 == client.get_domain_stats("shared")["entries"]
    assert domains.loc["shared", "shards"] == 2 and domains.loc["shared", "copies"] == 2
    assert set(domains.index) == set(client.config.domains)
    topo = explore.topology(client)
    shared = topo[topo.domain == "shared"]
    assert len(shared) == 4 and shared.groupby("shard")["owner"].sum().eq(1).all()
    assert shared["bytes"].sum() == 2 * domains.loc["shared", "bytes"]  # two copies of every byte
    nodes = explore.nodes(client)
    assert list(nodes.index) == ["fake-node"] and nodes.loc["fake-node", "entries"] == 80


def test_replica_lag_has_a_row_per_replica(client):
    lag = explore.replica_lag(client)
    assert len(lag[lag.domain == "shared"]) == 2 and (lag["ops_behind"] >= 0).all()


def test_hit_ratios_split_this_clients_reads_by_tier(client):
    hits = explore.hit_ratios(client)
    mine = hits[hits.client == client.client_id].set_index("tier")
    stats = client.stats()["cache"]
    assert mine.loc["miss", "reads"] == stats["misses"] >= 1
    assert mine.loc["L0", "reads"] + mine.loc["L1", "reads"] == stats["hits"]
    assert mine["share"].sum() == pytest.approx(1.0)


def test_latencies_time_every_level_and_clean_up(client):
    lat = explore.latencies(client, "shared", n=5)
    assert len(lat) == 3 * 2 * 5 and set(lat.level) == {"eventual", "bounded_stale", "strong"}
    assert (lat.us > 0).all() and client.keys("shared", "latency:*") == []


def test_traces_and_policy_hit_ratios():
    keys = explore.load_trace("gli")
    assert len(keys) == 6015 and len(set(keys)) == 2529
    frame = explore.policy_hit_ratios(keys, [100, 1000], ["lru", "arc"])
    assert list(frame.columns) == ["policy", "size", "hit_ratio", "ops_per_s"] and len(frame) == 4
    assert frame[frame["size"] == 1000].hit_ratio.min() > frame[frame["size"] == 100].hit_ratio.max()
    with pytest.raises(FileNotFoundError, match="no trace 'nope'"):
        explore.load_trace("nope")
