"""The multi-process stale-read stress: strong-coherence writes against readers in other processes.

One writer (this process) puts ``writes`` strong writes with ``coherence="strong"`` to a few hot
keys, each value larger than the last, and notes when each ``put`` returned. Reader actors, each a
process with its own client, read the hot keys between reads of enough filler keys to push them
out of L0 into L1 and back (a hot key's L1 → L0 promotion races the invalidations), noting when
each read started. Machines running Linux share one monotonic clock between processes, so a read
is stale when it returned a value older than one whose ``put`` had returned before the read began.

Used by ``tests/faults/test_ordering.py`` (a short run) and ``benchmarks/stress_coherence.py``.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

__all__ = ["stale_read_stress"]


class _Reader:
    def __init__(self, namespace: str, domain: str, hot: list[str], filler: list[str], seed: int,
                 switch_interval_s: float | None) -> None:
        import random
        import sys

        import erlmcp_ray

        if switch_interval_s is not None:
            # Switch threads far more often than CPython's 5 ms: the reader's and the coherence
            # thread's steps interleave at many more points, which is what this stress is for.
            sys.setswitchinterval(switch_interval_s)
        self._client = erlmcp_ray.connect(namespace)
        self._domain, self._hot, self._filler = domain, hot, filler
        self._rng = random.Random(seed)

    def warm(self) -> int:
        for k in self._filler + self._hot:
            self._client.get(self._domain, k)
        return self._client.stats()["cache"]["l1_size"]

    def run(self, seconds: float, filler_per_hot: int) -> dict[str, Any]:
        c, domain, rng = self._client, self._domain, self._rng
        reads: list[tuple[str, float, int]] = []
        before = c.stats()["cache"]
        f, nf = 0, len(self._filler)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            key = self._hot[rng.randrange(len(self._hot))]
            t0 = time.monotonic()
            value = c.get(domain, key, 0)
            reads.append((key, t0, value))
            for _ in range(filler_per_hot):  # pushes hot keys out of L0 (FIFO) into L1, and back
                c.get(domain, self._filler[f])
                f = (f + 1) % nf
        after = c.stats()["cache"]
        return {"reads": reads, "l0_hits": after["l0_hits"] - before["l0_hits"],
                "l1_hits": after["l1_hits"] - before["l1_hits"], "misses": after["misses"] - before["misses"]}

    def close(self) -> None:
        self._client.close()


def stale_read_stress(namespace: str, *, domain: str = "shared", writes: int = 1000, readers: int = 2,
                      hot_keys: int = 4, filler_keys: int = 600, filler_per_hot: int = 3,
                      switch_interval_s: float | None = 1e-5, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run the stress against the system in ``namespace``; returns counts (``stale`` should be 0)."""
    import ray

    import erlmcp_ray

    writer = erlmcp_ray.connect(namespace)
    hot = [f"hot:{i}" for i in range(hot_keys)]
    filler = [f"filler:{i}" for i in range(filler_keys)]
    for k in filler:
        writer.put(domain, k, k)
    for k in hot:
        writer.put(domain, k, 0, consistency="strong")
    writer.flush(timeout=60)
    actor = ray.remote(num_cpus=0)(_Reader)
    procs = [actor.remote(namespace, domain, hot, filler, seed, switch_interval_s) for seed in range(readers)]
    l1_sizes = ray.get([p.warm.remote() for p in procs], timeout=timeout_s)
    acked: dict[str, list[tuple[float, int]]] = {k: [(0.0, 0)] for k in hot}
    # Readers run while the writer writes: give them about as long as the writes will take.
    t0 = time.monotonic()
    for i in range(1, 11):
        key = hot[i % hot_keys]
        writer.put(domain, key, i, consistency="strong", coherence="strong")
        acked[key].append((time.monotonic(), i))
    per_write = (time.monotonic() - t0) / 10
    runs = [p.run.remote(per_write * writes + 1.0, filler_per_hot) for p in procs]
    started = time.monotonic()
    for i in range(11, writes + 11):
        key = hot[i % hot_keys]
        writer.put(domain, key, i, consistency="strong", coherence="strong")
        acked[key].append((time.monotonic(), i))
    write_s = time.monotonic() - started
    results = ray.get(runs, timeout=timeout_s)
    ray.get([p.close.remote() for p in procs], timeout=60)
    for p in procs:
        ray.kill(p)
    writer.close()
    stale, examples, reads = 0, [], 0
    times = {k: [t for t, _ in acked[k]] for k in hot}
    for r in results:
        for key, t_read, value in r["reads"]:
            reads += 1
            # the newest value whose put had returned before this read began
            i = bisect.bisect_left(times[key], t_read) - 1
            floor = acked[key][i][1] if i >= 0 else 0
            if value < floor:
                stale += 1
                if len(examples) < 5:
                    examples.append({"key": key, "read": value, "acked_before_read": floor})
    return {"writes": writes + 10, "write_seconds": write_s, "readers": readers, "reads": reads,
            "l0_hits": sum(r["l0_hits"] for r in results), "l1_hits": sum(r["l1_hits"] for r in results),
            "misses": sum(r["misses"] for r in results), "reader_l1_sizes": l1_sizes, "stale": stale,
            "examples": examples}
