"""Failover, measured: from a shard owner's node dying to strong writes succeeding again.

Run:  python benchmarks/bench_failover.py [--trials 5] [--failure-timeout-ms 1000] [--out benchmarks/results/failover.txt]

A ``ray.cluster_utils.Cluster`` on this machine: a head (the driver; no shard copy fits its "memory")
and three worker nodes, with Ray's node health checks tuned (below). One replicated domain ``reg``
of 8 shards; two layouts are measured:

- ``rf3/min2``: three copies, two must hold a strong write (the Kafka-style setting for failover: the
  promoted replica and the third copy take writes at once);
- ``rf2/min2``: two copies, both must hold it (the default ``min_insync``): writes resume only once a
  replacement copy caught up, so this measures promotion + replacement.

Each trial: one writer thread makes strong puts of increasing values to keys of one shard whose owner
sits on a worker node (one without the coordinator or supervisor when there is one); every shard copy's process on that node is killed
(SIGKILL) and the node removed without a graceful shutdown (its raylet killed: a worker process
outlives its raylet for a while and would keep serving under its lease); the time until the first put *started after the removal* succeeds is the
failover time. Then the writer stops, every key is read back (lost = a key whose value is older than
its last acknowledged put), a fresh worker node is added, and the trial waits for ``verify_state().ok``
(the replacement copy in sync: "heal" time). Reported: p50 and max over the trials, and the lost
writes (target 0).

Ray's own node-death detection is ~14 s with its defaults; the supervisor's health checks do not wait
for it (a copy is failed after ``failure_timeout_ms`` without an answer), but Ray must have seen the
node die before it reschedules the lost copy, so the head runs with ``health_check_period_ms=500``,
``health_check_timeout_ms=500``, ``health_check_failure_threshold=3``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from _common import emit, git_revision  # benchmarks/_common.py

import erlmcp_ray
from erlmcp_ray.actors.options import COORDINATOR, RAY_HEALTH_FOR_FAILOVER, SUPERVISOR, shard_name
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.testing import failover_cluster

RAY_HEALTH = RAY_HEALTH_FOR_FAILOVER


class Writer(threading.Thread):
    """Strong puts of 1, 2, 3, ... to a few keys, each recorded (start, end, ok)."""

    def __init__(self, client, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.keys = client, keys
        self.records: list[tuple[float, float, bool, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        value = 0
        while not self.stop.is_set():
            value += 1
            key = self.keys[value % len(self.keys)]
            t0 = time.monotonic()
            try:
                self.client.put("reg", key, value, consistency="strong")
                ok = True
            except erlmcp_ray.ErlmcpRayError:
                ok = False
            self.records.append((t0, time.monotonic(), ok, key, value))


def owner_node(client, shard: int) -> tuple[int, str]:
    owners = client.recovery.get_failover_status()["owners"]
    slot = owners.get(f"reg/{shard}", {"slot": 0})["slot"]
    actor = ray.get_actor(shard_name("reg", shard, slot), namespace=NS)
    return slot, ray.get(actor.stats.remote(), timeout=30)["node_id"]


NS = "bench_failover"


def copy_pids(shards: int, client) -> list[tuple[str, int]]:
    """(node id, pid) of every copy of every shard of every domain."""
    out = []
    for domain in client.config.domains:
        for shard in range(client.config.domain(domain).shards):
            for slot in range(client.config.replication_factor_for(domain)):
                try:
                    m = ray.get(ray.get_actor(shard_name(domain, shard, slot), namespace=NS).memory.remote(), timeout=30)
                    out.append((m["node_id"], m["pid"]))
                except Exception:  # noqa: BLE001, S110 - a copy being restarted: not on the victim
                    pass
    return out


def system_nodes() -> set[str]:
    """The nodes of the coordinator and the supervisor (Ray places them anywhere)."""
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.name in (COORDINATOR, SUPERVISOR)}


def trial(cluster, client, head_id: str, shards: int) -> dict:  # a ray.cluster_utils.Cluster
    # a shard whose owner is on a worker node, preferably one without a system actor (else the trial
    # measures the supervisor's restart too, and says so)
    system = system_nodes()
    owners = [(shard, *owner_node(client, shard)) for shard in range(shards)]
    candidates = [o for o in owners if o[2] != head_id]
    shard, slot, node_id = min(candidates, key=lambda o: o[2] in system)
    with_system = node_id in system
    keys = [k for k in (f"f{i}" for i in range(10_000)) if shard_for(k, shards) == shard][:4]
    writer = Writer(client, keys)
    writer.start()
    time.sleep(1.0)
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    # A node's death takes its processes with it. remove_node kills the raylet, but a worker process
    # notices only later (and meanwhile still serves, under its lease): kill the shard copies first.
    doomed = [p for p in copy_pids(shards, client) if p[0] == node_id]
    killed, killed_wall = time.monotonic(), time.time()
    for _node, pid in doomed:
        os.kill(pid, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)
    deadline = killed + 60
    while time.monotonic() < deadline and not any(r[0] > killed and r[2] for r in writer.records):
        time.sleep(0.01)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(60)
    after = [r for r in writer.records if r[0] > killed and r[2]]
    failover_s = after[0][1] - killed if after else float("inf")
    last_acked: dict[str, int] = {}
    for _t0, _t1, ok, key, value in writer.records:
        if ok:
            last_acked[key] = max(last_acked.get(key, 0), value)
    lost = sum(1 for key, value in last_acked.items() if (client.get("reg", key, consistency="strong") or 0) < value)
    cluster.add_node(num_cpus=1)
    t0 = time.monotonic()
    client.sync(timeout=60)
    while time.monotonic() < t0 + 120 and not client.recovery.verify_state()["ok"]:
        time.sleep(0.2)
    heal_s = time.monotonic() - t0
    # where the time went: the supervisor's detection, its promotion, then the client finding the new owner
    promo = next((h for h in client.recovery.get_failover_status()["history"] if h["kind"] == "promotion"
                  and h["domain"] == "reg" and h["shard"] == shard and h["at"] >= killed_wall - 0.5), None)
    detect_s = promo["at"] - killed_wall if promo else float("nan")
    promote_s = promo["seconds"] if promo else float("nan")
    return {"failover_s": failover_s, "detect_s": detect_s, "promote_s": promote_s,
            "client_s": failover_s - detect_s - promote_s, "lost": lost, "system_actor_lost": with_system, "acked": sum(r[2] for r in writer.records),
            "failed_ops": sum(not r[2] for r in writer.records), "heal_s": heal_s, "shard": shard, "from_slot": slot}


def run_layout(name: str, domain: dict, args: argparse.Namespace, lines: list[str]) -> None:
    # too little "memory" on the head for a shard copy's bundle: copies on the workers, system actors on the head
    cluster = failover_cluster(3)
    ray.init(address=cluster.address, namespace=NS, log_to_driver=False, logging_level="ERROR")
    tmp = tempfile.mkdtemp(prefix="erlmcp_bench_failover_")
    cfg = {"durable": {"kind": "sqlite", "data_dir": tmp},
           "distributed_memory": {"checkpoint_interval": 0, "failure_timeout_ms": args.failure_timeout_ms},
           "persistence_selector": {"auto_select": False},
           "domains": {"reg": {"backend": "replicated", "max_bytes": "64MB", "shards": args.shards, **domain}},
           "client": {"call_timeout_s": 30.0}}
    system = erlmcp_ray.start(cfg, namespace=NS)
    head_id = ray.get_runtime_context().get_node_id()
    results = []
    try:
        with system.client() as client:
            for i in range(args.trials):
                r = trial(cluster, client, head_id, args.shards)
                results.append(r)
                print(f"{name} trial {i + 1}: {r}", flush=True)
    finally:
        erlmcp_ray.shutdown(NS, purge=True)
        ray.shutdown()
        cluster.shutdown()
    fo = [r["failover_s"] for r in results]
    marked = ", ".join(f"{r['failover_s']:.2f}" + ("*" if r["system_actor_lost"] else "") for r in results)
    def p50(k: str) -> float:
        return statistics.median(r[k] for r in results if not r["system_actor_lost"]) if any(
            not r["system_actor_lost"] for r in results) else float("nan")

    lines.append(f"{name:9s} trials without a system actor lost: detection p50 {p50('detect_s'):.2f} s, promotion "
                 f"{p50('promote_s'):.2f} s, client re-route + write {p50('client_s'):.2f} s")
    lines.append(f"{name:9s} failover p50 {statistics.median(fo):.2f} s  max {max(fo):.2f} s  "
                 f"(each: {marked}; * = the supervisor or coordinator died too)  strong writes lost: {sum(r['lost'] for r in results)} "
                 f"of {sum(r['acked'] for r in results)} acknowledged  failed (not acknowledged): "
                 f"{sum(r['failed_ops'] for r in results)}  replacement in sync (verify_state ok) p50 "
                 f"{statistics.median(r['heal_s'] for r in results):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--failure-timeout-ms", type=int, default=1000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = [f"# bench_failover  {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
             f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
             (f"# erlmcp_ray (git {git_revision()}), ray {ray.__version__}; ray.cluster_utils.Cluster: head + 3 "
              f"workers on one 2-core machine; Ray health checks {RAY_HEALTH}; "
              f"failure_timeout_ms={args.failure_timeout_ms} (owner lease {args.failure_timeout_ms / 2:.0f} ms); "
              f"{args.trials} trials per layout, target failover p50 <= 2 s, 0 lost"), ""]
    run_layout("rf3/min2", {"replication_factor": 3, "min_insync": 2}, args, lines)
    run_layout("rf2/min2", {"replication_factor": 2}, args, lines)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
