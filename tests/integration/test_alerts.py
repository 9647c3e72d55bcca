"""Alert rules evaluated by the supervisor on a real Ray: a memory rule fires after its window, its
trigger_eviction action evicts an LRU domain below the threshold, the rule resolves, and a
subscriber gets both events."""

from __future__ import annotations

import pytest

from erlmcp_ray.core.alerts import AlertEvent
from erlmcp_ray.errors import InvalidValueError
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray]


def test_a_memory_rule_fires_evicts_and_resolves(ray_local, tmp_path):
    ns = "t_alerts"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "memory_monitoring": {"check_interval": 200},
           "alerts": [{"metric": "memory_usage", "threshold": 0.5, "window": 600, "action": "trigger_eviction"}],
           "domains": {"lru": {"backend": "memory", "max_bytes": "64KB", "eviction": "lru", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        events: list[AlertEvent] = []
        sub = c.subscribe_alerts(events.append, interval_s=0.2)
        with pytest.raises(InvalidValueError):
            c.subscribe_alerts("not callable")
        for i in range(400):  # ~70 % of the domain's 64 KiB: past the rule's 50 %
            c.put("lru", f"k{i:04d}", "x" * 64, consistency="strong")
        used = c.get_domain_stats("lru")["bytes"] / 65536
        assert used > 0.5, used
        wait_for(lambda: [e.state for e in events] == ["firing", "resolved"], timeout=30, interval=0.2,
                 what="the rule to fire, evict and resolve")
        firing, resolved = events
        assert firing.subject == "lru" and firing.value > 0.5 and firing.result["evicted"] > 0
        assert resolved.value < 0.5
        assert c.get_domain_stats("lru")["bytes"] / 65536 <= 0.5 * 0.9 + 0.02
        assert c.get("lru", "k0000", consistency="strong") is None  # the least recently used went first
        assert c.get("lru", "k0399", consistency="strong") is not None
        status = c.alerts()
        assert status["fired"] == 1 and status["resolved"] == 1 and status["active"] == []
        sub.cancel()


def test_the_memory_monitor_collects_garbage_on_a_node_past_its_thresholds(ray_local, tmp_path):
    ns = "t_alerts_monitor"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "limits": {"max_bytes": "1MB"},
           "memory_monitoring": {"check_interval": 200, "memory_threshold": 0.05, "binary_threshold": "64KB",
                                 "auto_gc": True},
           "alerts": [],
           "domains": {"notes": {"backend": "replicated", "max_bytes": "10MB", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        for i in range(200):  # ~100 KB of records on the (one) node: past 5 % of 1 MB and past 64 KB
            c.put("notes", f"k{i}", "y" * 400, consistency="strong")

        def fired() -> set:
            return {(e["metric"], e["action"]) for e in c.alerts()["events"] if e["state"] == "firing"}

        wait_for(lambda: fired() >= {("node_memory_usage", "force_gc_node"), ("node_binary_bytes", "force_gc_node")},
                 timeout=30, interval=0.3, what="the memory monitor's two rules")
        event = next(e for e in c.alerts()["events"] if e["metric"] == "node_memory_usage")
        assert event["subject"] == c.get_cluster_memory()["node_data"][0]["node_id"]
        assert event["result"]["copies"] >= 2  # every shard copy on the node collected garbage
        assert event["value"] > 0.05
