"""The fault suite as a table: per fault, operations, linearizability violations, acknowledged writes
lost, and the time for every copy to agree again.

Run:  python benchmarks/bench_faults.py [--ops 40] [--out benchmarks/results/faults.txt]

One local Ray (this machine), one memory system: a replicated domain ``reg`` of 2 shards, three copies,
two needed for a strong write (``min_insync: 2``), ``failure_timeout_ms`` 1000, on SQLite. For each fault
in turn: four threads on two clients make random strong puts and gets on three fresh keys (``ops``
each), and one thread makes eventual puts of fresh keys (one every 5 ms) on a third client; the fault
strikes half-way through the strong operations (in the partition, the eventual writer is on the cut
side: its writes go to the cut-off owner's stash and reach the rest at the heal). Then:

- *violations*: keys whose strong history ``check_linearizable`` rejects (target 0);
- *strong lost*: keys whose last acknowledged strong put is not what a strong read finds once the
  system settled (``lost_writes``; target 0);
- *eventual lost*: eventual puts that returned, whose write ``flush()`` did not report failed, and that
  a strong read does not find after the settle (target 0); *eventual failed* counts those ``flush()``
  reported (told to the writer, so not silent);
- *converge s*: from the end of the workload until ``verify_state().ok`` (every copy equal).

Faults, in this order (the last leaves reg/0 owned by slot 1): owner kill (Ray restarts it), replica
kill, coordinator kill, supervisor killed in the middle of a recovery, owner paused 3 s
(SIGSTOP/SIGCONT: a zombie), owner and one strong client partitioned away for 4 s, owner killed for
good. A node's loss is measured by ``bench_failover.py``; a Redis outage by ``tests/faults/test_redis_outage.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, git_revision

NS = "bench_faults"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=40, help="strong operations per thread (4 threads)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import ray

    import erlmcp_ray
    from erlmcp_ray.actors.options import COORDINATOR, SUPERVISOR, shard_name
    from erlmcp_ray.errors import ErlmcpRayError
    from erlmcp_ray.testing import (
        check_linearizable,
        keys_on_shard,
        kill_actor,
        lost_writes,
        owner_slot,
        partition_owner,
        pause_copy,
        strong_history_through,
    )

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    data = tempfile.mkdtemp(prefix="bench_faults_")
    cfg = {"durable": {"kind": "sqlite", "data_dir": data},
           "distributed_memory": {"checkpoint_interval": 0, "failure_timeout_ms": 1000},
           "persistence_selector": {"auto_select": False},
           "domains": {"reg": {"backend": "replicated", "max_bytes": "50MB", "shards": 2,
                               "replication_factor": 3, "min_insync": 2}},
           "client": {"poll_timeout_s": 0.5, "call_timeout_s": 20.0}}
    system = erlmcp_ray.start(cfg, namespace=NS)
    clients = [system.client() for _ in range(2)]
    writer = system.client()

    def recovery_cut_short() -> None:
        t = threading.Thread(target=_quietly, args=(clients[0].recovery.trigger_recovery, "full"))
        t.start()
        time.sleep(0.05)
        kill_actor(NS, SUPERVISOR)
        t.join(60)
        _until(lambda: clients[0].recovery.trigger_recovery("peer")["status"] == "completed", 60)

    faults = {
        "owner kill": lambda: kill_actor(NS, shard_name("reg", 0, owner_slot(clients[0], "reg", 0))),
        "replica kill": lambda: kill_actor(NS, shard_name("reg", 1, 1 if owner_slot(clients[0], "reg", 1) != 1 else 2)),
        "coordinator kill": lambda: kill_actor(NS, COORDINATOR),
        "supervisor kill mid-recovery": recovery_cut_short,
        "owner paused 3 s": lambda: pause_copy(NS, "reg", 0, owner_slot(clients[0], "reg", 0), 3.0),
        "partition 4 s (owner + client)": lambda: partition_owner(
            NS, "reg", 0, owner_slot(clients[0], "reg", 0), cut_clients=[*clients[1:], writer],
            main_clients=clients[:1], seconds=4.0),
        "owner gone for good": lambda: kill_actor(NS, shard_name("reg", 0, owner_slot(clients[0], "reg", 0)),
                                                  restart=False),
    }
    rows = []
    for n, (name, fault) in enumerate(faults.items()):
        prefix = f"f{n}:"
        stop = threading.Event()
        acked: list[str] = []

        def eventual(prefix: str = prefix, stop: threading.Event = stop, acked: list = acked) -> None:
            i = 0
            while not stop.is_set():
                key = f"{prefix}ev{i}"
                writer.put("reg", key, i)
                acked.append(key)
                i += 1
                time.sleep(0.005)

        failed_before, stashed_before = writer.counters["write_errors"], writer.counters["writes_stashed"]
        ev = threading.Thread(target=eventual)
        ev.start()
        started = time.monotonic()
        keys = keys_on_shard(prefix, 3, 1 if name == "replica kill" else 0, 2)  # on the shard struck
        history = strong_history_through(fault, clients, threads=4, ops=args.ops, keys=keys, domain="reg")
        stop.set()
        ev.join()
        try:
            writer.flush(timeout=60)
        except ErlmcpRayError:
            pass  # counted below: the writer was told
        ev_failed = writer.counters["write_errors"] - failed_before
        stashed = writer.counters["writes_stashed"] - stashed_before
        workload_s = time.monotonic() - started
        t0 = time.monotonic()
        _until(lambda: clients[0].recovery.verify_state()["ok"], 120, also=clients[0].sync)
        converge_s = time.monotonic() - t0
        result = check_linearizable(history)
        keys = sorted({op.key for op in history})
        final = {k: clients[0].get("reg", k, consistency="strong") for k in keys}
        lost = lost_writes(history, final)
        found = sum(1 for k in acked if clients[0].get("reg", k, consistency="strong") is not None)
        strong_ops = len(history)
        rows.append((name, strong_ops, sum(1 for op in history if op.completed == float("inf")), len(acked),
                     0 if result.ok else 1, len(lost), len(acked) - found - ev_failed, ev_failed, stashed,
                     workload_s, converge_s))
        print(f"{name}: {rows[-1]}", flush=True)

    for c in [*clients, writer]:
        c.close()
    erlmcp_ray.shutdown(NS, purge=True)
    ray.shutdown()

    lines = [f"# bench_faults -- {_dt.datetime.now().isoformat(timespec='seconds')} -- rev {git_revision()}",
             f"# command: python benchmarks/{os.path.basename(__file__)} {shlex.join(sys.argv[1:])}",
             "# one local Ray on 2 cores; reg: 2 shards x 3 copies, min_insync 2, failure_timeout_ms 1000, SQLite",
             "# strong: 4 threads x --ops random puts/gets on 3 keys; eventual: one writer, a fresh key every 5 ms",
             "",
             f"{'fault':32} {'strong ops':>10} {'indefinite':>10} {'eventual':>8} {'violations':>10} "
             f"{'strong lost':>11} {'ev. lost':>8} {'ev. failed':>10} {'stashed':>7} {'workload s':>10} "
             f"{'converge s':>10}"]
    for r in rows:
        lines.append(f"{r[0]:32} {r[1]:>10} {r[2]:>10} {r[3]:>8} {r[4]:>10} {r[5]:>11} {r[6]:>8} {r[7]:>10} "
                     f"{r[8]:>7} {r[9]:>10.2f} {r[10]:>10.2f}")
    lines += ["", "violations: keys whose strong history is not linearizable (0 or 1 per fault: the first found); "
              "indefinite: strong ops that failed or timed out (may or may not have happened); ev. failed: "
              "eventual writes flush() reported failed (the writer was told); stashed: eventual writes a copy "
              "cut off from its owner took (merged by the heal)"]
    emit(lines, args.out)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the cut-short call may fail: that is the fault
        print(f"  (the cut-short call failed: {type(exc).__name__})", flush=True)


def _until(check, timeout: float, also=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if also is not None:
                also()
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - unavailable while restarting: ask again
            pass
        time.sleep(0.3)
    raise TimeoutError(f"not done within {timeout} s")


if __name__ == "__main__":
    main()
