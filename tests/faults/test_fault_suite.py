"""The fault suite (so far): a strong workload on a few keys from several clients, every operation
recorded, while one fault strikes half-way; then each key's history must be linearizable (no
acknowledged strong write lost, none seen out of order), and after a sync every copy must agree
(``verify_state().ok``). An owner killed for good is replaced by its promoted replica (the supervisor),
and a new copy is created in its slot; a partition cuts an owner and one client off for four seconds
(a replica is promoted on the other side; the sides merge when it ends); pauses and node loss are in
``test_failover.py`` and ``test_node_loss.py``, the partition's eventual side in ``test_partition.py``."""

from __future__ import annotations

import threading
import time

import pytest

import erlmcp_ray
from erlmcp_ray.actors.options import COORDINATOR, SUPERVISOR, shard_name
from erlmcp_ray.errors import UnavailableError
from erlmcp_ray.testing import check_linearizable, kill_actor, owner_slot, partition_owner, wait_consistent
from tests.conftest import wait_for
from tests.workloads import keys_on_shard, strong_history_through

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "t_fault_suite"


@pytest.fixture(scope="module", params=["direct", "ray"])
def system(ray_local, tmp_path_factory, request):
    """The system, once on each data path: the direct endpoints (the default), then Ray actor calls."""
    cfg = {"transport": {"kind": request.param},
           "durable": {"kind": "sqlite", "data_dir": str(tmp_path_factory.mktemp("store"))},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 2}},
           "client": {"poll_timeout_s": 0.5, "call_timeout_s": 20.0}}
    sysm = erlmcp_ray.start(cfg, namespace=NS)
    yield sysm
    erlmcp_ray.shutdown(NS, purge=True)


def _kill(name: str) -> None:
    kill_actor(NS, name)  # Ray restarts it


def _recovery_cut_short(client) -> None:
    """A recovery runs; its supervisor is killed in the middle (Ray restarts it, empty); the operator
    runs one again until it completes."""
    errors: list = []
    t = threading.Thread(target=lambda: _catch(errors, client.recovery.trigger_recovery, "full"))
    t.start()
    time.sleep(0.05)
    _kill(SUPERVISOR)
    t.join(60)

    def rerun() -> bool:
        try:
            return client.recovery.trigger_recovery("peer")["status"] == "completed"
        except UnavailableError:  # still restarting (ray.kill is asynchronous)
            return False

    wait_for(rerun, timeout=60, interval=0.5, what="a recovery run after the supervisor restarted")


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the cut-short call may fail; that is the fault
        errors.append(exc)


def _partition(clients) -> threading.Timer:
    """reg/0's owner and the second client are cut off from everything else for four seconds."""
    return partition_owner(NS, "reg", 0, owner_slot(clients[0], "reg", 0), cut_clients=clients[1:],
                           main_clients=clients[:1], seconds=4.0)


FAULTS = {
    "owner_kill": lambda c: _kill(shard_name("reg", 0, 0)),
    "replica_kill": lambda c: _kill(shard_name("reg", 1, 1)),
    "coordinator_kill": lambda c: _kill(COORDINATOR),
    "supervisor_kill_during_recovery": _recovery_cut_short,
    # last: the owner of reg/0 is slot 1 from here on
    "owner_gone_for_good": lambda c: kill_actor(NS, shard_name("reg", 0, 0), restart=False),
    "partition_and_heal": _partition,
}


def _strike(fault: str, clients: list, heals: list) -> None:
    if fault == "partition_and_heal":
        heals.append(_partition(clients))
    else:
        FAULTS[fault](clients[0])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_strong_history_stays_linearizable_through(system, fault):
    clients = [system.client() for _ in range(2)]
    heals: list[threading.Timer] = []  # a partition's heal: waited for, so it never outlives the test
    try:
        # fresh keys (initial value None), all on the shard the fault strikes
        keys = keys_on_shard(f"{fault}:", 3, 1 if fault == "replica_kill" else 0, 2)
        history = strong_history_through(lambda: _strike(fault, clients, heals), clients, threads=4, ops=40, keys=keys,
                                         domain="reg")
        result = check_linearizable(history)
        assert result.ok, result.explanation
        acked = sum(1 for op in history if op.kind == "put" and op.completed != float("inf"))
        assert acked > 20  # the workload really ran through the fault
        for heal in heals:
            heal.join(30)
        wait_consistent(clients[0])  # every copy agrees after the fault
    finally:
        for heal in heals:
            heal.join(30)
        for c in clients:
            c.close()
