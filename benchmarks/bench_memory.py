"""What memory accounting and pressure checks cost on the write path (issue "Memory limits").

Run:  python benchmarks/bench_memory.py [--entries 100000] [--out benchmarks/results/memory.txt]

1. ``ShardState.apply_local`` with accounting vs a copy of its store step with the accounting
   lines removed, same run, same keys (target: <= 10 % overhead).
2. The owner's per-op pressure work: ``PressureMonitor.would_refuse`` per op plus one ``handle``
   per batch of 64 (what ``ShardActor.write`` does), per op.
3. The documented per-entry overhead vs tracemalloc's figure for 100k entries (target within 20 %).
"""

from __future__ import annotations

import argparse
import heapq
import platform
import statistics
import time

import bench_core  # benchmarks/ is this script's directory, so on sys.path

from erlmcp_ray.core import record as R
from erlmcp_ray.core.pressure import PressureMonitor
from erlmcp_ray.core.shard_state import ENTRY_OVERHEAD, ShardState


class _NoAccounting(ShardState):
    """ShardState whose store step skips the byte/entry accounting (the baseline)."""

    def _store(self, key: str, old: bytes | None, new: bytes) -> int:
        if old is not None and old[10] & R.FLAG_TAGS:
            self._untag(key, old)
        if new[10] & R.FLAG_TAGS and not new[10] & R.FLAG_DELETED:
            for tag in R.record_tags(new):
                self._tagged.setdefault(tag, set()).add(key)
        self._data[key] = new
        seq = self.log.append(key, new)
        flags = new[10]
        if flags & R.FLAG_DELETED:
            self._tombstones[key] = seq
        else:
            if old is not None and old[10] & R.FLAG_DELETED:
                del self._tombstones[key]
            if flags & R.FLAG_EXPIRY:
                heapq.heappush(self._expiry, (R.record_expires_at(new), key))
        return seq


def per_op_us(fn, ops: int, rounds: int = 30) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn(ops)
        samples.append((time.perf_counter_ns() - t0) / ops / 1000)
    return statistics.median(samples)


def bench_accounting(n: int, rounds: int = 60, ops: int = 2000) -> tuple[float, float]:
    """Median us/op of each variant; rounds alternate between them so load on this shared
    2-core machine falls on both alike."""
    keys = [f"key-{i:016d}" for i in range(n)]
    value = b"v" * 100
    states = []
    for cls in (ShardState, _NoAccounting):
        s = cls(0)
        for k in keys:
            s.apply_local(k, value)
        states.append(s)
    samples: list[list[float]] = [[], []]
    pos = 0
    for _ in range(rounds):
        for which, s in enumerate(states):
            t0 = time.perf_counter_ns()
            for j in range(pos, pos + ops):
                s.apply_local(keys[j % n], value)
            samples[which].append((time.perf_counter_ns() - t0) / ops / 1000)
        pos += ops
    return statistics.median(samples[0]), statistics.median(samples[1])


def bench_pressure_checks() -> float:
    mon = PressureMonitor()
    mon.configure("domain:x:0", 10**9, evictable=False)
    used = [0]

    def run(count):
        for i in range(count):
            mon.would_refuse("domain:x:0", 150)
            used[0] += 150
            if i % 64 == 63:
                mon.handle("domain:x:0", used[0] % 10**9, 1000)

    return per_op_us(run, 6400)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n = args.entries
    with_acc, without = bench_accounting(n)
    pressure = bench_pressure_checks()
    measured, documented = bench_core.bench_memory(n)  # the same measurement as the core benchmark
    lines = [
        f"# bench_memory  python {platform.python_version()}  entries={n}  {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        f"# command: python benchmarks/bench_memory.py --entries {n}" + (f" --out {args.out}" if args.out else ""),
        f"{'figure':62} {'result':>16}   target",
        f"{'apply_local with accounting, median us/op':62} {with_acc:16.3f}",
        f"{'apply_local without accounting (same code minus it), us/op':62} {without:16.3f}",
        f"{'accounting overhead on the write path':62} {100 * (with_acc / without - 1):15.1f} %   <= 10 %",
        f"{'owner pressure checks per op (would_refuse + handle/64)':62} {pressure:16.3f}   (us, for scale)",
        f"{'per-entry overhead measured by tracemalloc (beyond key+value)':62} {measured:14.1f} B",
        f"{'per-entry overhead accounted (record metadata + %d)' % ENTRY_OVERHEAD:62} {documented:14.1f} B",
        f"{'accounted vs measured':62} {100 * (documented / measured - 1):+15.1f} %   within 20 %",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
