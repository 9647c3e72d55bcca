"""``erlmcp-ray status`` from another process: the domains, nodes, clients and alerts of a running
system, as tables and as JSON (real Ray; the command runs as a separate process)."""

from __future__ import annotations

import pytest
import ray

from tests.conftest import running_system, wait_for
from tests.integration.test_cli_recover import _cli, _json

pytestmark = [pytest.mark.ray]


def test_status_shows_domains_nodes_clients_and_a_firing_alert(ray_local, tmp_path):
    ns = "t_cli_status"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "memory_monitoring": {"check_interval": 200},
           "alerts": [{"metric": "memory_usage", "threshold": 0.001, "window": 200, "action": "alert_operator"}],
           "domains": {"reg": {"backend": "replicated", "max_bytes": "1MB", "shards": 2}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        for i in range(30):
            c.put("reg", f"k{i}", "v" * 50, consistency="strong")
            c.get("reg", f"k{i}")
        wait_for(lambda: c.alerts()["active"] != [], timeout=30, interval=0.2, what="the rule to fire")
        address = ray.get_runtime_context().gcs_address

        done = _cli("status", "--address", address, "--namespace", ns, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        out = _json(done.stdout)
        reg = next(d for d in out["domains"] if d["domain"] == "reg")
        assert {d["domain"] for d in out["domains"]} == set(c.config.domains)
        assert reg["domain"] == "reg" and reg["entries"] == 30 and reg["shards"] == 2 and reg["copies"] == 2
        assert reg["bytes"] == c.get_domain_stats("reg")["bytes"] > 0
        node_id = ray.get_runtime_context().get_node_id()
        assert {p["node"] for p in reg["placement"].values()} == {node_id}
        assert [p["owner"] for p in reg["placement"].values()].count(True) == 2  # one owner per shard
        [node] = out["nodes"]
        assert node["node_id"] == node_id and node["entries"] == 60  # 30 entries x 2 copies; the rest empty
        assert node["copies"] == sum(d["shards"] * d["copies"] for d in out["domains"])
        assert c.client_id in {x["client"] for x in out["clients"]}
        assert [a["metric"] for a in out["alerts"]["active"]] == ["memory_usage"]

        text = _cli("status", "--address", address, "--namespace", ns)
        assert text.returncode == 0, text.stderr[-3000:]
        for part in ("DOMAINS", "NODES", "CLIENTS", "ALERTS  firing now: 1", "FIRING memory_usage of reg"):
            assert part in text.stdout, (part, text.stdout)

        missing = _cli("status", "--address", address, "--namespace", "t_cli_status_nothing")
        assert missing.returncode == 3 and "Traceback" not in missing.stderr
