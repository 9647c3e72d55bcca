"""Live backend migrations by the persistence selector, measured.

Run:  python benchmarks/bench_migration.py [--entries 100000] [--out benchmarks/results/migration.txt]

Starts a Ray of its own and a memory system (durable tier: SQLite in a temporary directory) with one
domain ``notes`` that sets no backend (2 shards). Loads N entries (eventual puts, flushed), then
while a reader thread issues strong gets of random keys back to back (each one reaches an owner),
migrates notes memory -> disk -> replicated -> memory with ``client.selector.migrate``. Reports per
migration: how long it took, the store rows written, and the reader's p50/p99/max latency during it
beside the same reader's figures before any migration (same run).

An owner is one Ray actor with one call thread: while it writes its whole shard to the store
(memory -> disk), calls to that shard wait — that wait is the max column.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from _common import emit, git_revision, pct  # benchmarks/_common.py

import erlmcp_ray


class Reader:
    def __init__(self, client, keys: int) -> None:
        self._c, self._keys = client, keys
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self._c.get("notes", f"k{rng.randrange(self._keys)}", consistency="strong")
            self.samples.append(time.perf_counter() - t0)

    def window(self, fn):
        start = len(self.samples)
        t0 = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t0
        return out, elapsed, self.samples[start:]

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=60)


def _row(name: str, seconds: float, written: object, samples: list[float]) -> str:
    us = [s * 1e6 for s in samples] or [0.0]
    return (f"  {name:<24} {seconds:7.2f} s  {written!s:>9}  {len(samples):7,}  "
            f"{pct(us, 0.5):8,.0f} {pct(us, 0.99):9,.0f} {max(us):11,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="erlmcp_bench_mig_")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cfg = {"durable": {"kind": "sqlite", "data_dir": tmp},
           "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"max_bytes": "1GB", "shards": 2}},
           "client": {"poll_timeout_s": 0.5}}
    system = erlmcp_ray.start(cfg, namespace="bench_migration")
    lines = [f"# bench_migration  {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
             f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
             f"# erlmcp_ray (git {git_revision()}), ray {ray.__version__}, {args.entries:,} entries of ~40 B "
             f"in 2 shards, durable tier SQLite", ""]
    try:
        with system.client() as c:
            for i in range(args.entries):
                c.put("notes", f"k{i}", {"i": i, "pad": "x" * 16})
            c.flush(timeout=600)
            reader = Reader(c, args.entries)
            _, base_s, base = reader.window(lambda: time.sleep(3.0))
            lines.append("strong gets by a reader thread during each step (µs):")
            lines.append(f"  {'step':<24} {'took':>9}  {'to store':>9}  {'gets':>7}  {'p50':>8} {'p99':>9} {'max':>11}")
            lines.append(_row("before (3 s, baseline)", base_s, "-", base))
            for target in ("disk", "replicated", "memory"):
                rec, secs, samples = reader.window(lambda t=target: c.selector.migrate("notes", t))
                lines.append(_row(f"-> {target}", secs, rec.get("written_to_store", 0), samples))
            reader.stop()
            missing = sum(1 for i in range(0, args.entries, max(1, args.entries // 1000))
                          if c.get("notes", f"k{i}", consistency="strong") is None)
            lines.append("")
            lines.append(f"after the three migrations: {missing} of a 1,000-key sample missing (must be 0)")
    finally:
        erlmcp_ray.shutdown("bench_migration", purge=True)
        ray.shutdown()
    emit(lines, args.out)


if __name__ == "__main__":
    main()
