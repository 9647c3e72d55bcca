"""Checkpoint create and restore, measured (issue 11's "Measure", the checkpoint line).

Run:  python benchmarks/bench_recovery.py [--entries 1000000] [--shards 4] [--out benchmarks/results/recovery.txt]

Starts a Ray of its own and a memory system (durable tier: SQLite in a temporary directory) with
one memory domain ``notes`` of ``--shards`` shards, loads N entries (eventual puts, flushed), then
times ``client.recovery.create_checkpoint()`` and ``restore_checkpoint(id)`` (target: <= 5 s each for
1,000,000 entries), and checks a sample of the restored values.

Then, on a replicated domain ``rep`` (one shard, owner + replica) of ``--recovery-entries`` entries,
times ``trigger_recovery`` in the modes peer, delta and full (each including its sync and
verify_state), with the bytes each moved: what the owner read (the checkpoint image, from its
manifest; the replica's snapshot, its keys and records) and what it sent to the replica (the owner's
``syncs.bytes`` counter: keys and records of every delta and snapshot; ``recover`` ends in a new
epoch, so the replica always takes a whole snapshot). Failover is measured by ``bench_failover.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import tempfile
import time
from pathlib import Path

import ray
from _common import emit, git_revision  # benchmarks/_common.py

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--recovery-entries", type=int, default=100_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="erlmcp_bench_rec_")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cfg = {"durable": {"kind": "sqlite", "data_dir": tmp},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"backend": "memory", "max_bytes": "4GB", "shards": args.shards}}}
    system = erlmcp_ray.start(cfg, namespace="bench_recovery")
    lines = [f"# bench_recovery  {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
             f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
             (f"# erlmcp_ray (git {git_revision()}), ray {ray.__version__}, {args.entries:,} entries of ~40 B in "
             f"{args.shards} shards (+ the five default domains, empty), durable tier SQLite"), ""]
    try:
        with system.client() as c:
            t0 = time.perf_counter()
            for i in range(args.entries):
                c.put("notes", f"k{i}", {"i": i, "pad": "x" * 16})
            c.flush(timeout=900)
            lines.append(f"load: {args.entries:,} eventual puts + flush in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            cp = c.recovery.create_checkpoint()
            create_s = time.perf_counter() - t0
            lines.append(f"create_checkpoint: {create_s:.2f} s  ({cp.entries:,} entries, {cp.bytes / 1e6:.1f} MB "
                         f"stored)   target <= 5 s: {'yes' if create_s <= 5 else 'NO'}")
            for i in range(0, args.entries, 2):
                if i > 20_000:
                    break
                c.put("notes", f"k{i}", "changed")
            c.flush(timeout=300)
            lines.append(_timed_restore(c, cp.id))  # from the hot copy
            # The same restore from the durable store: a newer checkpoint holds the hot copy now.
            c.put("notes", "k0", "changed")
            c.flush(timeout=300)
            newer = c.recovery.create_checkpoint()
            lines.append(_timed_restore(c, cp.id))
            c.recovery.delete_checkpoint(newer.id)
            step = max(1, args.entries // 1000)
            wrong = sum(1 for i in range(0, args.entries, step)
                        if c.get("notes", f"k{i}", consistency="strong") != {"i": i, "pad": "x" * 16})
            lines.append(f"after the restore: {wrong} of a 1,000-key sample differ from the checkpoint (must be 0)")
    finally:
        erlmcp_ray.shutdown("bench_recovery", purge=True)
    # A system of its own: delta needs every shard's owner in the incarnation of the checkpoint,
    # and the restore above gave the notes shards new ones.
    cfg["domains"] = {"rep": {"backend": "replicated", "max_bytes": "1GB", "shards": 1}}
    system = erlmcp_ray.start(cfg, namespace="bench_recovery2")
    try:
        with system.client() as c:
            n = args.recovery_entries
            for i in range(n):
                c.put("rep", f"r{i}", {"i": i})
            c.flush(timeout=600)
            rep_cp = c.recovery.create_checkpoint()
            image = next(s for s in rep_cp.shards if s.domain == "rep")
            for i in range(0, n, 10):  # 10 % of the shard changes after the checkpoint
                c.put("rep", f"r{i}", "after")
            c.flush(timeout=300)
            lines += ["", (f"recovery of a replicated shard of {n:,} entries (owner + 1 replica; each run includes "
                      f"its sync and verify_state; checkpoint image {image.bytes / 1e6:.1f} MB):")]
            def owner_stats() -> dict:
                h = ray.get_actor(shard_name("rep", 0, 0), namespace="bench_recovery2")
                return ray.get(h.stats.remote(), timeout=60)

            for mode in ("peer", "delta", "full"):
                before = owner_stats()
                t0 = time.perf_counter()
                status = c.recovery.trigger_recovery(mode)
                secs = time.perf_counter() - t0
                sent = owner_stats()["syncs"]["bytes"] - before["syncs"]["bytes"]
                detail = status["shards"]["rep/0"]
                replica_mb = before["record_bytes"] / 1e6  # the replica holds what the owner holds
                read = {"peer": (0.0, "nothing (the owner's own state)"),
                        "delta": (image.bytes / 1e6, f"the checkpoint image + {detail.get('replayed', 0):,} "
                                                     f"op-log entries (in memory)"),
                        "full": (image.bytes / 1e6 + replica_mb,
                                 f"the replica's snapshot ({replica_mb:.1f} MB) + the checkpoint image "
                                 f"({image.bytes / 1e6:.1f} MB); {detail.get('merged', 0):,} keys changed by the join")}
                read_mb, what = read[mode]
                lines.append(f"  {mode:<6} {secs:6.2f} s  validation ok: {status['validation']['ok']}   "
                             f"moved: {read_mb:.1f} MB read + {sent / 1e6:.1f} MB sent to the replica   read: {what}")
    finally:
        erlmcp_ray.shutdown("bench_recovery2", purge=True)
        ray.shutdown()
    emit(lines, args.out)


def _timed_restore(c, checkpoint_id: str) -> str:  # noqa: ANN001 - a MemoryClient
    t0 = time.perf_counter()
    counts = c.recovery.restore_checkpoint(checkpoint_id)
    restore_s = time.perf_counter() - t0
    sources = "/".join(sorted(set(counts["sources"].values())))
    return (f"restore_checkpoint: {restore_s:.2f} s  ({counts['entries']:,} entries, read from the {sources})   "
            f"target <= 5 s: {'yes' if restore_s <= 5 else 'NO'}")


if __name__ == "__main__":
    main()
