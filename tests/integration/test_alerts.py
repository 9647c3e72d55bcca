"""Alert rules evaluated by the supervisor on a real Ray: a memory rule fires after its window, its
trigger_eviction action evicts an LRU domain below the threshold, the rule resolves, and a
subscriber gets both events."""

from __future__ import annotations

import time

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


def test_node_limits_evict_the_evictable_and_then_refuse_the_rest_until_deletes(ray_local, tmp_path):
    """limits.max_bytes bounds what one node holds across domains: past 80 % its evictable domain
    sheds data, and when that cannot bring it down, growing writes to the other domain are refused
    (MemoryPressureError naming the node) until deletes bring it below 85 %."""
    from erlmcp_ray.errors import MemoryPressureError

    ns = "t_alerts_node_limits"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "limits": {"max_bytes": "200KB", "warn_percent": 0.5},
           "memory_monitoring": {"check_interval": 200, "memory_threshold": 1.0, "binary_threshold": "1GB"},
           "alerts": [],
           "domains": {"lru": {"backend": "memory", "max_bytes": "10MB", "eviction": "lru", "shards": 1},
                       "reg": {"backend": "memory", "max_bytes": "10MB", "shards": 1}}}
    limit = 200 * 1000
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        def node() -> dict:
            return c.get_cluster_memory()["node_data"][0]

        for i in range(300):  # ~ 300 x 700 B: past 90 % of the node's 200 KB, all of it evictable
            c.put("lru", f"k{i:04d}", "x" * 600, consistency="strong")
        wait_for(lambda: c.alerts()["node_evictions"] > 0, timeout=30, interval=0.2, what="the node to evict")
        wait_for(lambda: node()["bytes"] <= 0.8 * limit, timeout=30, interval=0.2, what="the node under 80 %")
        assert c.get("lru", "k0000", consistency="strong") is None  # least recently used went first
        def warned() -> list:  # the rule fires after its window (the writes may all land in one check)
            return [e for e in c.alerts()["events"] if e["metric"] == "node_usage"]

        wait_for(lambda: warned(), timeout=30, interval=0.2, what="the node_usage warning")
        assert warned()[0]["state"] == "firing" and warned()[0]["threshold"] == 0.5

        for i in range(300):
            c.delete("lru", f"k{i:04d}", consistency="strong")
        written = 0
        with pytest.raises(MemoryPressureError, match="node .* of its limits"):
            for i in range(2000):  # nothing evictable: the node refuses once past 90 %
                c.put("reg", f"r{i:04d}", "y" * 600, consistency="strong")
                written += 1
                if i % 20 == 19:
                    time.sleep(0.25)  # a check between two bursts of ~7 % of the limit
        assert 0.9 * limit < node()["bytes"] < 1.3 * limit, (written, node())
        c.put("reg", "r0000", "short", consistency="strong")  # a shrinking write still goes through
        assert c.get("reg", "r0000", consistency="strong") == "short"
        for i in range(1, written // 2):
            c.delete("reg", f"r{i:04d}", consistency="strong")
        wait_for(lambda: _accepts(c), timeout=30, interval=0.3, what="growth accepted again below 85 %")
        assert c.alerts()["nodes"][node()["node_id"]]["refused"] == []


def _accepts(c) -> bool:
    from erlmcp_ray.errors import MemoryPressureError

    try:
        c.put("reg", "again", "z" * 100, consistency="strong")
    except MemoryPressureError:
        return False
    return True


def test_a_user_callable_action_is_called_with_the_event_in_the_supervisor(ray_local, tmp_path):
    ns = "t_alerts_callable"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "memory_monitoring": {"check_interval": 200},
           # builtins:repr stands for a user's function: its return value becomes the event's result
           "alerts": [{"metric": "memory_usage", "threshold": 0.01, "window": 200, "action": "builtins:repr"}],
           "domains": {"notes": {"backend": "memory", "max_bytes": "64KB", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        for i in range(50):
            c.put("notes", f"k{i}", "v" * 64, consistency="strong")
        wait_for(lambda: any(e["state"] == "firing" for e in c.alerts()["events"]), timeout=30, interval=0.2,
                 what="the rule to fire")
        [event] = [e for e in c.alerts()["events"] if e["state"] == "firing"]
        assert event["result"].startswith("AlertEvent(") and "'notes'" in event["result"]


def test_a_subscriber_keeps_getting_events_after_the_supervisor_restarts(ray_local, tmp_path):
    """A restarted supervisor numbers its events from 1 again: a subscriber that had read up to
    event N must not skip the new incarnation's first N events (the rule firing again after its
    window, evaluated afresh)."""
    from erlmcp_ray.actors.options import SUPERVISOR
    from erlmcp_ray.testing import kill_actor

    ns = "t_alerts_restart"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "memory_monitoring": {"enabled": False, "check_interval": 200},
           "alerts": [{"metric": "memory_usage", "threshold": 0.001, "window": 400, "action": "alert_operator"}],
           "domains": {"notes": {"backend": "memory", "max_bytes": "1MB", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        events: list[AlertEvent] = []
        sub = c.subscribe_alerts(events.append, interval_s=0.1)
        for i in range(20):
            c.put("notes", f"k{i}", "v" * 100, consistency="strong")
        wait_for(lambda: [e.state for e in events] == ["firing"], timeout=30, interval=0.1, what="the first firing")
        first = c.alerts()["incarnation"]
        kill_actor(ns, SUPERVISOR)
        wait_for(lambda: len(events) >= 2, timeout=60, interval=0.2, what="the restarted supervisor's firing")
        assert [(e.state, e.metric, e.subject) for e in events] == [("firing", "memory_usage", "notes")] * 2
        assert c.alerts()["incarnation"] != first
        sub.cancel()
