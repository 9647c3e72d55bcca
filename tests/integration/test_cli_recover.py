"""``erlmcp-ray recover``: an operator's process attaches to the running cluster and runs the recovery
API (real Ray; the command runs as a separate process, as an operator would run it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import ray

from tests.conftest import running_system

pytestmark = [pytest.mark.ray]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erlmcp_ray.cli", *args], check=False, capture_output=True, text=True,
                          timeout=300)


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def test_recover_runs_a_recovery_and_a_heal_from_another_process(ray_local, tmp_path):
    ns = "t_cli_recover"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 2}}}
    with running_system(cfg, ns) as sysm:
        c = sysm.client()
        try:
            for i in range(20):
                c.put("reg", f"k{i}", i, consistency="strong")
            address = ray.get_runtime_context().gcs_address
            done = _cli("recover", "full", "--address", address, "--namespace", ns, "--json")
            assert done.returncode == 0, done.stderr[-3000:]
            out = _json(done.stdout)
            assert out["recovery"]["status"] == "completed" and out["recovery"]["mode"] == "full"
            assert {"reg/0", "reg/1"} <= set(out["recovery"]["shards"]) and out["verify"]["ok"]
            assert [c.get("reg", f"k{i}", consistency="strong") for i in range(20)] == list(range(20))

            healed = _cli("recover", "--heal", "--no-verify", "--address", address, "--namespace", ns)
            assert healed.returncode == 0, healed.stderr[-3000:]
            assert "heal: 0 stashed writes merged into 0 shard(s), 0 conflicts resolved" in healed.stdout

            missing = _cli("recover", "--address", address, "--namespace", "t_cli_nothing_here")
            assert missing.returncode == 3
            assert "no memory system reachable in namespace 't_cli_nothing_here'" in missing.stderr
            assert "Traceback" not in missing.stderr
        finally:
            c.close()


def test_recover_refuses_an_unknown_mode():
    bad = _cli("recover", "sideways")
    assert bad.returncode == 2 and "sideways" in bad.stderr
