"""The operator's ``erlmcp-ray`` commands against a running system, each run as a separate process
(real Ray): put/get/keys/delete, checkpoints, verify, metrics (a Prometheus scrape), bench; exit codes
and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import ray

from tests.conftest import running_system
from tests.integration.test_cli_recover import _cli, _json
from tests.integration.test_telemetry import _free_port

pytestmark = [pytest.mark.ray]


def test_an_operator_reads_writes_lists_checkpoints_verifies_and_measures(ray_local, tmp_path):
    ns = "t_cli_ops"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 2}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        where = ("--address", ray.get_runtime_context().gcs_address, "--namespace", ns)

        assert _cli("put", "reg", "user:1", '{"name": "ada", "n": 1}', *where).returncode == 0
        assert _cli("put", "reg", "user:2", "plain text", "--tag", "vip", *where).returncode == 0
        assert c.get("reg", "user:1", consistency="strong") == {"name": "ada", "n": 1}  # JSON parsed
        assert c.get("reg", "user:2", consistency="strong") == "plain text"
        got = _cli("get", "reg", "user:1", *where)
        assert got.returncode == 0 and json.loads(got.stdout) == {"name": "ada", "n": 1}
        detail = _json(_cli("get", "reg", "user:2", "--json", *where).stdout)
        assert detail["tags"] == ["vip"] and detail["version"]["timestamp"] > 0
        missing = _cli("get", "reg", "nobody", *where)
        assert missing.returncode == 1 and "no key 'nobody'" in missing.stderr

        for i in range(3, 12):
            c.put("reg", f"user:{i}", i)
        listed = _cli("keys", "reg", "user:1*", *where)
        assert listed.returncode == 0 and listed.stdout.split() == ["user:1", "user:10", "user:11"]
        assert _json(_cli("keys", "reg", "--tag", "vip", "--json", *where).stdout)["keys"] == ["user:2"]
        limited = _cli("keys", "reg", "--limit", "2", *where)
        assert len(limited.stdout.split()) == 2 and "more (11 in all)" in limited.stderr

        made = _cli("checkpoint", "create", "--json", *where)
        assert made.returncode == 0, made.stderr[-2000:]
        cp = _json(made.stdout)["id"]
        assert cp in _cli("checkpoint", "list", *where).stdout
        assert _cli("delete", "reg", "user:1", *where).stdout.startswith("deleted 'user:1'")
        assert c.get("reg", "user:1", consistency="strong") is None
        restored = _cli("checkpoint", "restore", cp, *where)
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert c.get("reg", "user:1", consistency="strong") == {"name": "ada", "n": 1}
        assert _cli("checkpoint", "delete", cp, *where).returncode == 0
        assert cp not in _cli("checkpoint", "list", *where).stdout
        bad = _cli("checkpoint", "restore", "no-such-checkpoint", *where)
        assert bad.returncode == 1 and bad.stderr.startswith("failed: ") and "Traceback" not in bad.stderr
        assert "Traceback" in _cli("--debug", "checkpoint", "restore", "no-such-checkpoint", *where).stderr

        verified = _cli("verify", *where)
        assert verified.returncode == 0 and "verify: ok" in verified.stdout, verified.stderr[-2000:]

        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "erlmcp_ray.cli", "metrics", "--port", str(port),
                                   "--bind", "127.0.0.1", "--seconds", "60", *where],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline, text = time.monotonic() + 60, ""
            while time.monotonic() < deadline and "erlmcp_memory_used" not in text:
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                except OSError:
                    time.sleep(0.5)
            assert "erlmcp_memory_used" in text and 'domain="reg"' in text
        finally:
            server.terminate()
            server.wait(timeout=30)

        measured = _cli("bench", "--ops", "50", "--domain", "reg", "--json", *where)
        assert measured.returncode == 0, measured.stderr[-2000:]
        rows = {r["name"]: r for r in json.loads(measured.stdout[measured.stdout.index("[\n"):])}
        assert set(rows) == {"bare Ray actor call", "strong put", "strong get", "eventual put (caller)",
                             "L0 get (hit)", "strong delete"}
        assert all(r["ops"] == 50 and r["median_us"] > 0 for r in rows.values())
        assert c.keys("reg", "bench:*") == []  # deleted after

        assert _cli("put", "nodomain", "k", "v", *where).returncode == 1
        assert _cli("get", "reg", *where).returncode == 2  # usage
