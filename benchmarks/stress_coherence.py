"""The multi-process stale-read stress (issue 9): strong-coherence writes against readers in other
processes that keep moving hot keys between L0 and L1. Target: zero stale reads.

Run:  python benchmarks/stress_coherence.py [--writes 3000] [--readers 3] [--out benchmarks/results/stale_reads.txt]

Starts a Ray of its own (never attaches to another cluster) and, in a fresh namespace, the memory
system with ``shared`` = 1 shard × 2 copies and a 16-entry L0 (so hot keys keep being promoted from
L1). See ``erlmcp_ray._testkit.stress`` for what counts as stale.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import time
import uuid

import ray
from _common import git_revision  # benchmarks/_common.py

import erlmcp_ray
from erlmcp_ray._testkit.stress import stale_read_stress

CONFIG = {
    "domains": {"shared": {"shards": 1}},
    "cache_coordinator": {"invalidation_timeout": 3000, "lease_ms": 6000},
    "client": {"poll_timeout_s": 0.5, "l0_entries": 16},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=3000)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--hot", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cmd = f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, *sys.argv])}"
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ns = f"stress_{uuid.uuid4().hex[:8]}"
    erlmcp_ray.start(CONFIG, namespace=ns)
    t0 = time.monotonic()
    try:
        out = stale_read_stress(ns, writes=args.writes, readers=args.readers, hot_keys=args.hot)
    finally:
        erlmcp_ray.shutdown(ns)
        ray.shutdown()
    lines = [
        f"# stress_coherence  {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"# command: {cmd}",
        f"# erlmcp_ray (git {git_revision()}), ray {ray.__version__}, cpus={os.cpu_count()}",
        f"# system: {CONFIG}",
        "",
        f"strong-coherence writes (consistency=strong, coherence=strong): {out['writes']:,} in "
        f"{out['write_seconds']:.1f} s ({out['write_seconds'] / max(1, out['writes'] - 10) * 1000:.2f} ms each)",
        f"reader processes: {out['readers']}; hot keys read: {out['reads']:,} (each followed by 3 filler reads)",
        f"reader cache tiers over all their reads: L0 hits {out['l0_hits']:,}, L1 hits (promoted to L0) "
        f"{out['l1_hits']:,}, misses {out['misses']:,}",
        f"stale reads (a value older than one whose put had returned before the read began): {out['stale']}"
        f"  (target 0)",
    ]
    if out["examples"]:
        lines.append(f"examples: {out['examples']}")
    lines.append(f"total run {time.monotonic() - t0:.0f} s")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report)
    return 0 if out["stale"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
