"""The recovery API on a real Ray with a real SQLite store: auto brings a one-copy owner that Ray
restarted empty back from the latest checkpoint; full joins the durable store's rows; snapshot
drops (and counts) what changed since the checkpoint; delta replays the op-log; peer re-seeds the
replicas; status goes through the spec's steps; bad modes are refused."""

from __future__ import annotations

import time

import pytest
import ray

from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.errors import InvalidValueError
from erlmcp_ray.storage import SQLiteStore
from tests.conftest import running_system

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path) -> dict:
    return {
        "durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
        "distributed_memory": {"checkpoint_interval": 0},
        "persistence_selector": {"auto_select": False},
        "domains": {
            "notes": {"backend": "replicated", "max_bytes": "10MB", "shards": 2},
            "disk": {"backend": "disk", "max_bytes": "10MB"},
            "scratch": {"backend": "memory", "max_bytes": "10MB"},
        },
        "client": {"poll_timeout_s": 0.5},
    }


def test_recovery_modes_on_a_running_system(ray_local, tmp_path):
    ns = "t_recovery"
    with running_system(_config(tmp_path), ns) as system, system.client() as c:
        for i in range(40):
            for domain in ("notes", "disk", "scratch"):
                c.put(domain, f"k{i}", i, consistency="strong")
        cp = c.recovery.create_checkpoint()

        # a one-copy memory owner that Ray restarts comes back from the latest checkpoint (what was
        # written after it is lost with the process); auto recovery then joins the checkpoint again
        c.put("scratch", "late", 1, consistency="strong")
        owner = ray.get_actor(shard_name("scratch", 0, 0), namespace=ns)
        ray.kill(owner, no_restart=False)
        time.sleep(1.0)  # ray.kill is asynchronous
        assert c.get("scratch", "k1", consistency="strong") == 1  # from the checkpoint
        assert c.get("scratch", "late", consistency="strong") is None  # written after it: lost
        status = c.recovery.trigger_recovery("auto")
        assert status["status"] == "completed" and status["progress"] == 100 and status["step"] == "reintegrate"
        scratch = status["shards"]["scratch/0"]
        assert scratch["mode"] == "full" and "latest checkpoint" in scratch["reason"]
        assert "checkpoint" in scratch["sources"] and scratch["merged"] == 0  # it had all of it already
        assert status["validation"]["ok"]
        for i in range(40):
            assert c.get("scratch", f"k{i}", consistency="strong") == i
        assert c.recovery.get_recovery_status()["status"] == "completed"

        # full joins the durable store's rows (here: one the owner never had, at its epoch)
        store = SQLiteStore(tmp_path / f"{ns}.db")
        try:
            epoch = store.epoch("disk", 0)
            extra = ray.get(ray.get_actor(shard_name("disk", 0, 0), namespace=ns).snapshot.remote(), timeout=30)
            rec = next(r for k, r in extra["records"] if k == "k3")
            store.write_batch("disk", 0, epoch, [("from_store", rec)])
        finally:
            store.close()
        status = c.recovery.recover_domain("disk")
        assert status["shards"]["disk/0"]["merged"] >= 1
        assert c.get("disk", "from_store", consistency="strong") == 3

        # snapshot: what changed since the checkpoint is dropped, and counted
        for i in range(5):
            c.put("notes", f"new{i}", i, consistency="strong")
        status = c.recovery.trigger_recovery("snapshot")
        dropped = sum(s["dropped"] for key, s in status["shards"].items() if key.startswith("notes/"))
        assert dropped == 5
        assert all(c.get("notes", f"new{i}", consistency="strong") is None for i in range(5))
        assert c.get("notes", "k9", consistency="strong") == 9

        # delta needs the owner that took the checkpoint: the snapshot restore made new incarnations
        with pytest.raises(InvalidValueError, match="op-log"):
            c.recovery.trigger_recovery("delta")
        c.put("notes", "after", 1, consistency="strong")

        # peer: replicas re-seeded from their owner under a new epoch
        before = {s: ray.get(ray.get_actor(shard_name("notes", s, 0), namespace=ns).ping.remote(), timeout=30)
                  for s in range(2)}
        status = c.recovery.trigger_recovery("peer")
        assert all(status["shards"][f"notes/{s}"]["epoch"] == before[s] + 1 for s in range(2))
        assert status["validation"]["ok"]
        assert c.get("notes", "after", consistency="strong") == 1

        with pytest.raises(InvalidValueError):
            c.recovery.trigger_recovery("everything")
        with pytest.raises(InvalidValueError):
            c.recovery.recover_node("")


def test_delta_recovery_replays_the_op_log_since_the_checkpoint(ray_local, tmp_path):
    ns = "t_recovery_delta"
    cfg = _config(tmp_path)
    cfg["domains"] = {"notes": {"backend": "replicated", "max_bytes": "10MB"}}
    with running_system(cfg, ns) as system, system.client() as c:
        for i in range(20):
            c.put("notes", f"k{i}", i, consistency="strong")
        c.recovery.create_checkpoint()
        for i in range(20, 30):
            c.put("notes", f"k{i}", i, consistency="strong")
        c.delete("notes", "k0", consistency="strong")
        status = c.recovery.trigger_recovery("delta")
        replayed = status["shards"]["notes/0"]["replayed"]
        assert status["shards"]["notes/0"]["mode"] == "delta" and replayed == 11
        assert c.get("notes", "k0", consistency="strong") is None
        assert all(c.get("notes", f"k{i}", consistency="strong") == i for i in range(1, 30))
        assert status["validation"]["ok"]
