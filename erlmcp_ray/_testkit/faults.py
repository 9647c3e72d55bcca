"""Faults to strike a running system with (real Ray): kill a shard copy or a system actor, pause a
copy's process, cut an owner and some clients off for a while. The fault suite and
``benchmarks/bench_faults.py`` use them; shipped in ``erlmcp_ray.testing`` for users' own tests."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["failover_cluster", "kill_actor", "owner_slot", "partition_owner", "pause_copy", "wait_consistent"]


def _handle(name: str, namespace: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=namespace)


def kill_actor(namespace: str, name: str, *, restart: bool = True) -> None:
    """Kill the named actor (a shard copy ``erlmcp:shard:{domain}:{shard}:{slot}``, the coordinator,
    the supervisor); Ray restarts it unless ``restart`` is False (gone for good)."""
    import ray

    ray.kill(_handle(name, namespace), no_restart=not restart)


def failover_cluster(workers: int = 3) -> Any:
    """A ``ray.cluster_utils.Cluster`` on this machine for node-loss tests: a head whose "memory" is
    too small for a shard copy's bundle (so every copy sits on a worker node, and the driver and the
    system actors on the head, which must survive) with Ray's node health checks shortened
    (``RAY_HEALTH_FOR_FAILOVER``), and ``workers`` one-CPU worker nodes; ready when it returns."""
    from ray.cluster_utils import Cluster

    from erlmcp_ray.actors.options import RAY_HEALTH_FOR_FAILOVER

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "memory": 256 * 1024,
                                                            "_system_config": RAY_HEALTH_FOR_FAILOVER})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def wait_consistent(client: Any, timeout: float = 30.0) -> dict:
    """Anti-entropy now (``client.sync()``), then wait until ``verify_state()`` finds every copy
    equal; its report. ``TimeoutError`` naming the shards still apart."""
    import time

    deadline = time.monotonic() + timeout
    report: dict = {}
    while True:
        try:
            client.sync()
            report = client.recovery.verify_state()
            if report["ok"]:
                return report
        except Exception as exc:  # noqa: BLE001 - an actor restarting: ask again
            report = {"error": f"{type(exc).__name__}: {exc}"}
        if time.monotonic() > deadline:
            apart = [f"{s['domain']}/{s['shard']}" for s in report.get("shards", []) if not s.get("in_sync", True)]
            raise TimeoutError(f"copies still differ after {timeout} s: {apart or report}")
        time.sleep(0.5)


def owner_slot(client: Any, domain: str, shard: int) -> int:
    """The slot that owns ``domain``/``shard`` now (the supervisor's topology)."""
    owners = client.recovery.get_failover_status()["owners"]
    return owners.get(f"{domain}/{shard}", {"slot": 0})["slot"]


def pause_copy(namespace: str, domain: str, shard: int, slot: int, seconds: float) -> threading.Timer:
    """SIGSTOP the process of a shard copy for ``seconds`` (then SIGCONT): a zombie, as a long GC
    pause or a frozen VM makes one. Returns the timer that resumes it."""
    import ray

    from erlmcp_ray.actors.options import shard_name

    pid = ray.get(_handle(shard_name(domain, shard, slot), namespace).memory.remote(), timeout=60)["pid"]
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    timer.start()
    return timer


def partition_owner(namespace: str, domain: str, shard: int, slot: int, *, cut_clients: list, main_clients: list,
                    seconds: float) -> threading.Timer:
    """Cut the copy in ``slot`` (usually the owner) and ``cut_clients`` off from every other copy of the
    shard, the supervisor and ``main_clients`` for ``seconds``; returns the timer that ends it."""
    from erlmcp_ray import _faults
    from erlmcp_ray.actors.options import SUPERVISOR, shard_name

    _faults.set_partition(namespace, [
        [shard_name(domain, shard, slot), *(f"client:{c.client_id}" for c in cut_clients)],
        [shard_name(domain, shard, "*"), SUPERVISOR, *(f"client:{c.client_id}" for c in main_clients)],
    ])
    timer = threading.Timer(seconds, _faults.clear_partition, (namespace,))
    timer.start()
    return timer
