"""Failover by promotion (real Ray, one node): an owner that is gone for good, and an owner paused
with SIGSTOP (a zombie that wakes up after its replica was promoted)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import ray

import erlmcp_ray
from erlmcp_ray.actors.options import SUPERVISOR, shard_name
from erlmcp_ray.core.codec import encode_value
from erlmcp_ray.core.wire import write_op
from erlmcp_ray.testing import check_linearizable, end_partition, partition, wait_consistent
from tests.conftest import running_system, wait_for
from tests.workloads import strong_history_through

pytestmark = [pytest.mark.ray, pytest.mark.slow]


#: every test here runs on both data paths: the direct endpoints (the default) and Ray actor calls
TRANSPORTS = pytest.mark.parametrize("transport", ["direct", "ray"])


def _config(tmp_path, transport: str = "direct", **domain) -> dict:
    """One shard of a replicated domain, failed over 1 s after its owner stops answering."""
    return {"transport": {"kind": transport},
            "durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
            "distributed_memory": {"checkpoint_interval": 0, "failure_timeout_ms": 1000},
            "persistence_selector": {"auto_select": False},
            "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 1, **domain}},
            "client": {"poll_timeout_s": 0.5, "call_timeout_s": 20.0}}


def _owner(client) -> dict:
    return client.recovery.get_failover_status()["owners"].get("reg/0", {"slot": 0, "epoch": 0})


def _pid(ns: str, slot: int) -> int:
    actor = ray.get_actor(shard_name("reg", 0, slot), namespace=ns)
    return ray.get(actor.memory.remote(), timeout=30)["pid"]


def _dead(actor) -> bool:
    try:
        ray.get(actor.ping.remote(), timeout=5)
    except ray.exceptions.RayActorError:
        return True
    return False


@TRANSPORTS
def test_an_owner_gone_for_good_is_replaced_by_its_replica(ray_local, tmp_path, transport):
    ns = f"t_failover_gone_{transport}"
    with running_system(_config(tmp_path, transport), ns) as sysm:
        c = sysm.client()
        try:
            for i in range(50):
                c.put("reg", f"k{i}", i, consistency="strong")
            c.put("reg", "ev", "eventual")
            c.flush()
            victim = ray.get_actor(shard_name("reg", 0, 0), namespace=ns)
            pid = ray.get(victim.memory.remote(), timeout=30)["pid"]
            ray.kill(victim, no_restart=True)
            killed = time.monotonic()
            # ray.kill is asynchronous: a put sent at once could still reach the old owner -- over Ray
            # until Ray marks it dead, over its direct endpoint until its process is gone
            wait_for(lambda: _dead(victim) and not psutil.pid_exists(pid), timeout=10, interval=0.05,
                     what="the owner's death")
            c.put("reg", "after", 1, consistency="strong")  # retried until the promoted replica takes it
            took = time.monotonic() - killed
            owner = _owner(c)
            assert owner["slot"] == 1 and owner["epoch"] >= 2, owner
            assert took < 10, took
            # every acknowledged write is on the new owner
            assert [c.get("reg", f"k{i}", consistency="strong") for i in range(50)] == list(range(50))
            assert c.get("reg", "ev", consistency="strong") == "eventual"
            history = c.recovery.get_failover_status()["history"]
            assert [h["kind"] for h in history].count("promotion") == 1
            # slot 0 was gone: the supervisor created it again, as a replica that catches up
            wait_for(lambda: c.recovery.verify_state()["ok"], timeout=30, interval=0.5,
                     what="the replacement copy to catch up")
            stats = ray.get(ray.get_actor(shard_name("reg", 0, 0), namespace=ns).stats.remote(), timeout=30)
            assert stats["role"] == "replica" and stats["entries"] == 52
            # a second client started now routes to the new owner at once
            c2 = sysm.client()
            c2.put("reg", "from-c2", 2, consistency="strong")
            assert c.get("reg", "from-c2", consistency="strong") == 2
            c2.close()
        finally:
            c.close()


@TRANSPORTS
def test_a_paused_owner_gets_no_write_acknowledged_after_its_replica_was_promoted(ray_local, tmp_path, transport):
    ns = f"t_failover_zombie_{transport}"
    # Three copies, two needed for a strong write: the promoted replica and the third copy take
    # writes while the old owner is paused.
    with running_system(_config(tmp_path, transport, replication_factor=3, min_insync=2), ns) as sysm:
        c = sysm.client()
        try:
            c.put("reg", "x", "before", consistency="strong")
            c.sync()  # the replicas in sync with the owner (a replica never synced is never promoted)
            pid = _pid(ns, 0)
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_for(lambda: _owner(c)["slot"] != 0, timeout=20, interval=0.2, what="the promotion")
                c.put("reg", "x", "after", consistency="strong")
                # Writes sent straight to the zombie (a client with a stale topology) wait in its queue
                zombie = ray.get_actor(shard_name("reg", 0, 0), namespace=ns)
                stale = [zombie.write.remote("stale-client", i, [write_op("x", encode_value(f"zombie{i}"))],
                                             True) for i in range(3)]
                reads = [zombie.read.remote("x", None) for _ in range(2)]
            finally:
                os.kill(pid, signal.SIGCONT)
            # ... and are refused when it wakes: its lease ran out long ago, and it adopts the topology
            for ref in stale + reads:
                with pytest.raises(Exception, match="lease|not the owner"):
                    ray.get(ref, timeout=30)
            wait_for(lambda: ray.get(zombie.stats.remote(), timeout=30)["role"] == "replica", timeout=10,
                     what="the woken owner to become a replica")
            assert c.get("reg", "x", consistency="strong") == "after"
            c.sync()
            wait_for(lambda: c.recovery.verify_state()["ok"], timeout=30, interval=0.5, what="copies to agree")
        finally:
            c.close()


@contextlib.contextmanager
def _three_copies(tmp_path, transport: str, ns: str, value: str) -> Iterator[tuple]:
    """3 copies (min_insync 2) holding ``x`` = ``value`` (a strong put): yields the client and the
    owner's handle; any partition is ended and the client closed afterwards."""
    with running_system(_config(tmp_path, transport, replication_factor=3, min_insync=2), ns) as sysm:
        c = sysm.client()
        owner = ray.get_actor(shard_name("reg", 0, 0), namespace=ns)
        try:
            c.put("reg", "x", value, consistency="strong")
            yield c, owner
        finally:
            end_partition(ns)
            c.close()


@TRANSPORTS
def test_a_health_check_that_waited_in_a_paused_owners_queue_renews_no_lease(ray_local, tmp_path, transport):
    """Found by CI (the test above failed in one full run, having passed in every earlier one): a
    supervisor's health check sent just before the owner was paused waits in its queue, and on
    waking the owner ran it before the queued stale writes -- renewing its lease from when the check
    was *received*, after its replica had been promoted. Here that check is sent on purpose, and
    the supervisor, the other copies and the client are cut off from the woken owner so that
    nothing tells it of the promotion (the client's strong write would: it reaches the old owner as
    a replica, at the new epoch): its lease alone must refuse the stale writes and reads (a check
    renews from when it was sent)."""
    ns = f"t_failover_late_check_{transport}"
    with _three_copies(tmp_path, transport, ns, "before") as (c, zombie):
        c.sync()
        pid = _pid(ns, 0)
        facts = ray.get(zombie.health.remote(), timeout=30)  # an answer, as the supervisor takes one
        partition(ns, [shard_name("reg", 0, 0)], [shard_name("reg", 0, "[12]"), SUPERVISOR, f"client:{c.client_id}"])
        os.kill(pid, signal.SIGSTOP)
        try:
            # the supervisor's next check, sent at once: it waits in the paused owner's queue
            check = zombie.health.remote(0, facts["epoch"], (facts["check_token"], 0.0))
            wait_for(lambda: _owner(c)["slot"] != 0, timeout=20, interval=0.2, what="the promotion")
            c.put("reg", "x", "after", consistency="strong")
            stale = [zombie.write.remote("stale-client", i, [write_op("x", encode_value(f"zombie{i}"))],
                                         True) for i in range(3)]
            reads = [zombie.read.remote("x", None) for _ in range(2)]
        finally:
            os.kill(pid, signal.SIGCONT)
        ran = ray.get(check, timeout=30)
        assert ran["is_owner"], ran  # it ran, and the zombie still thinks it owns
        for ref in stale + reads:
            with pytest.raises(Exception, match="lease"):
                ray.get(ref, timeout=30)
        end_partition(ns)
        wait_for(lambda: ray.get(zombie.stats.remote(), timeout=30)["role"] == "replica", timeout=10,
                 what="the woken owner to become a replica")
        assert c.get("reg", "x", consistency="strong") == "after"


def _read_owner(owner, key: str, *, reads: int = 0, seconds: float = 0.0,
                pause_s: float = 0.0) -> tuple[int, int]:
    """Read ``key`` at the owner ``reads`` times, or for ``seconds``: (served, refused for the lease)."""
    served = refused = 0
    end = time.monotonic() + seconds
    while served + refused < reads or time.monotonic() < end:
        try:
            answer = ray.get(owner.read.remote(key, None), timeout=30)
        except Exception as exc:  # Ray wraps the copy's UnavailableError
            if "lease" not in str(exc):
                raise
            refused += 1
        else:
            assert answer.record is not None
            served += 1
        time.sleep(pause_s)
    return served, refused


@TRANSPORTS
def test_the_supervisors_checks_alone_keep_the_lease_of_an_owner_cut_off_from_its_replicas(ray_local, tmp_path,
                                                                                          transport):
    """An owner whose replicas cannot be reached, but which answers the supervisor (so no failover),
    keeps its lease through the supervisor's checks: each returns the token of the copy's previous
    answer, and the owner renews from when the check was sent. Without them nothing renews it: it
    would refuse every owner read once lease_s (0.5 s here) ran out. (A few reads may meet a lapse
    between two checks on a loaded machine: at least 80 % must be served.)"""
    ns = f"t_failover_check_lease_{transport}"
    with _three_copies(tmp_path, transport, ns, "v") as (c, owner):
        partition(ns, [shard_name("reg", 0, 0)], [shard_name("reg", 0, "[12]")])
        time.sleep(1.5)  # three leases' worth: none of the owner's replication rounds is answered now
        served, refused = _read_owner(owner, "x", reads=40, pause_s=0.05)
        assert served >= 0.8 * (served + refused), (served, refused)
        assert _owner(c)["slot"] == 0  # no failover meanwhile


@TRANSPORTS
def test_a_frozen_copy_does_not_slow_the_checks_that_keep_another_owners_lease(ray_local, tmp_path,
                                                                               transport):
    """The supervisor's round waits up to a period for its checks' answers; a copy that never answers
    (frozen) makes every round take that long. The rounds must still start one period apart, not a
    period after the last one ended (checks two periods apart are a lease apart), and each answer's
    receipt must be taken when it came, not when the round stopped waiting (the owner's next check
    counts its lease from it): else an owner living on the checks alone (cut off from its replicas)
    refuses reads for a moment every cycle."""
    ns = f"t_failover_frozen_copy_{transport}"
    with _three_copies(tmp_path, transport, ns, "v") as (c, owner):
        frozen = _pid(ns, 2)
        try:
            partition(ns, [shard_name("reg", 0, 0)], [shard_name("reg", 0, "[12]")])
            os.kill(frozen, signal.SIGSTOP)
            time.sleep(1.5)  # three leases' worth: the owner lives on the supervisor's checks alone
            served, refused = _read_owner(owner, "x", seconds=4.0)
            # 0 of ~3,500 in 4 runs; rounds a period after the last one ended: 38-41; answers taken
            # when the slowest came: 38-57; both (before the fix): ~1,000
            assert refused <= 0.005 * (served + refused), (served, refused)
            assert _owner(c)["slot"] == 0  # no failover meanwhile
        finally:
            os.kill(frozen, signal.SIGCONT)


@TRANSPORTS
def test_strong_history_stays_linearizable_through_a_pause_and_failover(ray_local, tmp_path, transport):
    ns = f"t_failover_history_{transport}"
    with running_system(_config(tmp_path, transport, replication_factor=3, min_insync=2), ns) as sysm:
        clients = [sysm.client() for _ in range(2)]
        pid = _pid(ns, 0)

        def pause() -> None:
            os.kill(pid, signal.SIGSTOP)

            def wake() -> None:  # 3 s, or until the replica was promoted (15 s at most): under a loaded
                start = time.monotonic()  # run the promotion (1 s failure timeout) took longer than 3 s
                while time.monotonic() - start < 15 and (time.monotonic() - start < 3 or _owner(clients[0])["slot"] == 0):
                    time.sleep(0.1)
                os.kill(pid, signal.SIGCONT)

            threading.Thread(target=wake, daemon=True).start()

        try:
            history = strong_history_through(pause, clients, threads=4, ops=40, keys=3, domain="reg",
                                             prefix="pause:")
            result = check_linearizable(history)
            assert result.ok, result.explanation
            assert _owner(clients[0])["slot"] != 0
            acked_after = [op for op in history if op.kind == "put" and op.completed != float("inf")]
            assert len(acked_after) > 20
            time.sleep(1.0)  # the woken owner adopts the topology at the next check
            wait_consistent(clients[0])
        finally:
            for c in clients:
                c.close()


def test_failover_config_key_is_validated():
    with pytest.raises(erlmcp_ray.ConfigError, match="failure_timeout_ms"):
        erlmcp_ray.MemoryConfig.load({"distributed_memory": {"failure_timeout_ms": 10}})


@TRANSPORTS
def test_a_paused_replica_holds_up_no_strong_read_when_min_insync_copies_remain(ray_local, tmp_path, transport):
    """3 copies, min_insync 2, one replica paused (SIGSTOP): strong writes are acknowledged by the
    owner and the other replica, and a strong read of a key just written -- which the owner serves
    only once a replica confirmed holding it -- must not wait for the paused one (a replication round
    waiting out its sync timeout for a paused replica held every such read up for seconds)."""
    ns = f"t_failover_paused_replica_{transport}"
    cfg = _config(tmp_path, transport, replication_factor=3, min_insync=2)
    cfg["distributed_memory"]["failure_timeout_ms"] = 20000  # the paused replica is not replaced meanwhile
    with running_system(cfg, ns) as sysm:
        writer, reader = sysm.client(), sysm.client()
        pid = _pid(ns, 2)
        try:
            writer.put("reg", "warm", 0, consistency="strong")
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(0.5)  # replication rounds are under way with slot 2 frozen
                took = []
                started = time.monotonic()
                while time.monotonic() - started < 4.0:
                    i = len(took)
                    writer.put("reg", f"p{i}", i, consistency="strong")
                    t0 = time.monotonic()
                    assert reader.get("reg", f"p{i}", consistency="strong") == i
                    took.append(time.monotonic() - t0)
            finally:
                os.kill(pid, signal.SIGCONT)
            took.sort()
            assert len(took) >= 20, f"{len(took)} put/get pairs in 4 s"
            assert took[len(took) // 2] < 0.1 and took[-1] < 1.0, f"strong gets took {took[len(took) // 2]:.3f} s " \
                                                                  f"p50, {took[-1]:.3f} s at most"
        finally:
            writer.close()
            reader.close()
