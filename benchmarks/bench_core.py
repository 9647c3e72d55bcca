"""Benchmarks of the pure core (issue "Foundation"): codec, apply_local, merge, memory per entry.

Run:  python benchmarks/bench_core.py [--entries 100000] [--out benchmarks/results/core.txt]
Prints a table; targets from the issue are shown beside each figure.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import tracemalloc

from _common import per_op_median_us

from erlmcp_ray.core.codec import decode_value, encode_value
from erlmcp_ray.core.shard_state import ENTRY_OVERHEAD, ShardState

SMALL = {"model": "gpt-4", "tokens": 1500, "agent": "agent-7", "tags": ["plan", "tool"], "score": 0.93}


def bench_codec() -> tuple[float, float]:
    data = encode_value(SMALL)
    assert len(data) <= 200
    return per_op_median_us(lambda: decode_value(encode_value(SMALL)))


def filled(n: int, slot: int = 0, value_len: int = 100) -> ShardState:
    s = ShardState(slot)
    v = b"v" * value_len
    for i in range(n):
        s.apply_local(f"key-{i:016d}", v)  # 20-byte keys
    return s


def bench_apply_local(n: int) -> tuple[float, float]:
    s = filled(n)
    keys = [f"key-{i:016d}" for i in range(n)]
    value = encode_value(SMALL)
    it = iter(range(10**9))

    def op():
        s.apply_local(keys[next(it) % n], value)

    return per_op_median_us(op)


def bench_merge(n: int) -> tuple[float, int, int]:
    base = filled(n, 0)
    a = ShardState(0)
    a.merge(base)
    b = ShardState(1)
    b.merge(base)
    # Diverge: each side rewrites a different half, and both rewrite a tenth (concurrent).
    for i in range(0, n, 2):
        a.apply_local(f"key-{i:016d}", b"a" * 100)
    for i in range(1, n, 2):
        b.apply_local(f"key-{i:016d}", b"b" * 100)
    for i in range(0, n, 10):
        b.apply_local(f"key-{i:016d}", b"c" * 100)
    t0 = time.perf_counter()
    result = a.merge(b)
    elapsed = time.perf_counter() - t0
    b.merge(a)
    assert a.digest() == b.digest()
    return elapsed, result.changed, result.conflicts


def bench_memory(n: int) -> tuple[float, float]:
    """Bytes per entry held beyond the key's and value's own bytes (tracemalloc)."""
    raw_keys = [f"key-{i:016d}".encode() for i in range(n)]
    values = [bytes([i % 256]) * 100 for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s = ShardState(0, oplog_capacity=4096)
    for k, v in zip(raw_keys, values):
        # The key str is made here, as an actor decoding a request makes it, so its
        # object header counts against the shard; the value's bytes live inside the
        # record the shard builds. The op-log keeps its last 4096..8192 operations.
        s.apply_local(k.decode(), v)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    keys = [k.decode() for k in raw_keys]
    beyond = (held - sum(len(k) + len(v) for k, v in zip(keys, values))) / n
    accounted = (s.bytes_used - sum(len(k) + len(v) for k, v in zip(keys, values))) / n
    return beyond, accounted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n = args.entries
    lines = [
        f"# bench_core  python {platform.python_version()}  {platform.machine()}  entries={n}",
        f"# command: python benchmarks/bench_core.py --entries {n}" + (f" --out {args.out}" if args.out else ""),
        f"{'figure':52} {'result':>22}   target",
    ]
    med, p99 = bench_codec()
    lines.append(f"{'encode+decode small dict (<=200 B), median/p99 us':52} {med:10.2f} / {p99:8.2f}   <= 2 us median")
    med, p99 = bench_apply_local(n)
    lines.append(f"{'apply_local on a %d-entry shard, median/p99 us' % n:52} {med:10.2f} / {p99:8.2f}   <= 5 us median")
    elapsed, changed, conflicts = bench_merge(n)
    lines.append(f"{'merge two diverged %d-entry states, s' % n:52} {elapsed:22.3f}   <= 1 s"
                 f"   ({changed} keys changed, {conflicts} conflicts resolved)")
    beyond, accounted = bench_memory(n)
    lines.append(f"{'memory per entry beyond key+value bytes (tracemalloc)':52} {beyond:20.1f} B   <= 200 B")
    lines.append(f"{'  accounted per entry beyond key+value (ENTRY_OVERHEAD=%d)' % ENTRY_OVERHEAD:52} {accounted:20.1f} B")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
