"""Helpers every benchmark script shares (this directory is on sys.path when one runs)."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank)."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def git_revision() -> str:
    """``git describe --always --dirty`` of the checkout the benchmarks live in."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], check=False, capture_output=True,
                             text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001 - a report without a revision is still a report
        return "?"


def emit(lines: list[str], out: os.PathLike | None) -> None:
    """Print a report and, with ``--out``, write it there too."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)


def per_op_median_us(fn: Callable[[], object], batches: int = 200, per_batch: int = 500) -> tuple[float, float]:
    """Median and p99 (µs per op) over batches; one op is too short for the timer alone."""
    samples = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter_ns() - t0) / per_batch / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]
