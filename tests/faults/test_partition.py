"""A network partition at the application level (real Ray, one node, the fault seam of
``erlmcp_ray.testing.partition``): the owner and one client cut off from the rest.

Promised: eventual writes are accepted on both sides; strong writes succeed on at most one side (the
one that can still gather ``min_insync`` copies), never on the cut-off owner's; after the partition
ends, the heal merges the sides by the CRDT join, counts the conflicts, delivers each losing version
to subscribers as a ``MemoryConflict``, and no acknowledged write is lost."""

from __future__ import annotations

import time

import pytest

from erlmcp_ray import MemoryConflict, MemoryUpdate
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.errors import OperationTimeoutError, ReplicationError, UnavailableError
from erlmcp_ray.testing import end_partition, kill_actor, partition
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


#: both data paths: the direct endpoints (the default) and Ray actor calls
TRANSPORTS = pytest.mark.parametrize("transport", ["direct", "ray"])


def _config(tmp_path, transport: str = "direct") -> dict:
    return {"transport": {"kind": transport},
            "durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
            "distributed_memory": {"checkpoint_interval": 0, "failure_timeout_ms": 1000},
            "persistence_selector": {"auto_select": False},
            "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 1,
                                "replication_factor": 3, "min_insync": 2}},
            "client": {"poll_timeout_s": 0.5, "call_timeout_s": 4.0}}


def _owner(client) -> int:
    return client.recovery.get_failover_status()["owners"].get("reg/0", {"slot": 0})["slot"]


@TRANSPORTS
def test_both_sides_take_eventual_writes_and_the_heal_merges_them(ray_local, tmp_path, transport):
    ns = f"t_partition_{transport}"
    with running_system(_config(tmp_path, transport), ns) as sysm:
        cut, main = sysm.client(), sysm.client()  # `cut` is on the old owner's (minority) side
        updates, conflicts = [], []
        main.subscribe("reg", lambda ev: (conflicts if isinstance(ev, MemoryConflict) else updates).append(ev))
        try:
            for i in range(5):
                main.put("reg", f"c{i}", "before", consistency="strong")
            main.sync()
            partition(ns, [shard_name("reg", 0, 0), f"client:{cut.client_id}"],
                      [shard_name("reg", 0, "[12]"), "erlmcp:supervisor", f"client:{main.client_id}"])
            time.sleep(1.0)  # the cut-off owner's lease ran out (the rule is in effect already)
            # the cut-off side: eventual writes are taken (by the old owner, into its stash) ...
            for i in range(20):
                cut.put("reg", f"cut{i}", i)
            for i in range(5):
                cut.put("reg", f"c{i}", "cut side (earlier)")
            cut.flush()
            assert cut.stats()["tiers"]["writes_stashed"] >= 25
            # ... strong ones are not
            with pytest.raises((UnavailableError, ReplicationError, OperationTimeoutError)):
                cut.put("reg", "strong", "cut side", consistency="strong")
            # the main side: a replica was promoted; strong and eventual writes both work
            wait_for(lambda: _owner(main) != 0, timeout=20, interval=0.2, what="the promotion on the main side")
            main.put("reg", "strong", "main side", consistency="strong")
            for i in range(5):
                main.put("reg", f"c{i}", "main side (later)", consistency="strong")
            for i in range(20):
                main.put("reg", f"main{i}", i)
            main.flush()
            # the sides have not met: the cut side's writes are not on the main side yet
            assert main.get("reg", "cut0", consistency="strong") is None
            assert cut.get("reg", "cut0") == 0  # its own writes, read back on its side
        finally:
            end_partition(ns)
        # The supervisor heals by itself once the sides reach each other; heal_partition() forces it.
        result = main.recovery.heal_partition()
        assert result["merged"] and result["nodes"] >= 1, result
        heals = [h for h in main.recovery.get_failover_status()["history"] if h["kind"] == "heal"]
        assert sum(h["conflicts"] for h in heals) == 5, heals
        assert sum(h["stashed"] for h in heals) >= 25, heals
        # no acknowledged write is lost: every one of both sides is on the owner
        assert [main.get("reg", f"cut{i}", consistency="strong") for i in range(20)] == list(range(20))
        assert [main.get("reg", f"main{i}", consistency="strong") for i in range(20)] == list(range(20))
        assert main.get("reg", "strong", consistency="strong") == "main side"
        # concurrent writes of one key: the last writer's value wins everywhere ...
        assert {main.get("reg", f"c{i}", consistency="strong") for i in range(5)} == {"main side (later)"}
        wait_for(lambda: cut.get("reg", "c0") == "main side (later)", timeout=10, interval=0.2,
                 what="the cut-off client's cache to drop its losing value")
        # ... and the losing versions reached the subscriber as conflict events
        wait_for(lambda: len(conflicts) >= 5, timeout=10, interval=0.2, what="conflict events")
        assert {(e.key, e.value) for e in conflicts} == {(f"c{i}", "cut side (earlier)") for i in range(5)}
        assert all(isinstance(e, MemoryUpdate) for e in updates)
        main.sync()
        wait_for(lambda: main.recovery.verify_state()["ok"], timeout=30, interval=0.5, what="copies to agree")
        cut.close()
        main.close()


def test_a_stash_lost_with_its_copy_is_counted(ray_local, tmp_path):
    """Eventual writes stashed on a replica (its owner cut off from the client) are in that replica's
    memory only until the heal: if it restarts first, they are gone -- and the supervisor, which saw
    the stash in its health checks, says so (``stash_lost``, a ``stash_lost`` history record)."""
    ns = "t_partition_stash_lost"
    cfg = _config(tmp_path)
    cfg["distributed_memory"]["failure_timeout_ms"] = 20000  # no failover meanwhile: the stash stays put
    with running_system(cfg, ns) as sysm:
        c = sysm.client()
        try:
            c.put("reg", "x", 0, consistency="strong")
            # the owner alone on one side: the client and the supervisor cannot reach it (no heal either)
            partition(ns, [shard_name("reg", 0, 0)],
                      [f"client:{c.client_id}", shard_name("reg", 0, "[12]"), "erlmcp:supervisor"])
            for i in range(10):
                c.put("reg", f"s{i}", i)
            c.flush()
            assert c.stats()["tiers"]["writes_stashed"] == 10
            status = lambda: c.recovery.get_failover_status()
            wait_for(lambda: sum(status()["stashed"].values()) == 10, timeout=30, interval=0.5,
                     what="the supervisor to see the stash")
            holder = next(k for k in status()["stashed"])
            kill_actor(ns, shard_name(*holder.split("/")[:2], holder.split("/")[2]))  # Ray restarts it
            wait_for(lambda: status()["stash_lost"] == 10, timeout=30, interval=0.5, what="the loss to be counted")
            assert any(h["kind"] == "stash_lost" and h["keys"] == 10 for h in status()["history"])
        finally:
            end_partition(ns)
            c.close()


@TRANSPORTS
def test_a_cut_off_owner_never_serves_a_strong_write_its_replicas_lack(ray_local, tmp_path, transport):
    """Found by the fault suite's partition_and_heal history: the owner, cut off with one client,
    took that client's strong write (its replicas unreachable, so it could never be acknowledged)
    and, while it still held its lease, served it to the same client's strong reads; the promoted
    replica then served the older value -- a read that went back in time. An owner read of a key
    serves its last strong write only once the replicas it needs confirmed holding it."""
    import threading

    import ray

    ns = f"t_partition_unconfirmed_{transport}"
    cfg = _config(tmp_path, transport)
    cfg["distributed_memory"]["failure_timeout_ms"] = 6000  # the cut-off owner's lease lasts 3 s
    with running_system(cfg, ns) as sysm:
        cut, main = sysm.client(), sysm.client()
        owner = ray.get_actor(shard_name("reg", 0, 0), namespace=ns)
        outcome: list = []
        try:
            cut.put("reg", "k", "before", consistency="strong")
            writes = ray.get(owner.stats.remote(), timeout=30)["writes"]
            partition(ns, [shard_name("reg", 0, 0), f"client:{cut.client_id}"],
                      [shard_name("reg", 0, "[12]"), "erlmcp:supervisor", f"client:{main.client_id}"])
            started = time.monotonic()

            def strong_put() -> None:
                try:
                    cut.put("reg", "k", "cut side", consistency="strong")
                    outcome.append("acknowledged")
                except (UnavailableError, ReplicationError, OperationTimeoutError) as exc:
                    outcome.append(exc)

            writer = threading.Thread(target=strong_put)
            writer.start()
            # the owner applied it (its replicas never will: the client cannot reach them)
            wait_for(lambda: ray.get(owner.stats.remote(), timeout=30)["writes"] > writes, timeout=10,
                     interval=0.02, what="the owner to apply the cut-off write")
            assert time.monotonic() - started < 2.5  # asked while the old owner still holds its lease
            try:
                seen = cut.get("reg", "k", consistency="strong")
            except (UnavailableError, OperationTimeoutError):
                seen = "(no answer)"
            assert seen != "cut side"  # never served: the replicas do not hold it
            writer.join(30)
            assert outcome and outcome[0] != "acknowledged"
        finally:
            end_partition(ns)
            cut.close()
            main.close()
