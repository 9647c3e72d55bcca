"""What each shard copy's and the coordinator's process sets for itself when its actor starts.

Ray gives every actor a worker process of its own, so these settings touch nothing of the user's.
"""

from __future__ import annotations

import gc

__all__ = ["GC_YOUNG", "gc_stats", "tune_gc"]

#: The young generation's threshold: collect it after this many new container objects, not
#: CPython's default 700. Decoding a batch of writes and applying it make a few short-lived lists
#: and dicts per op, and at 700 the collector ran every couple of hundred ops; this process holds
#: no reference cycles worth collecting that often. Measured (an A/B noted at the top of
#: benchmarks/results/direct.txt, 2026-12-07): owner CPU per eventual put 7.1 -> 5.3 us, replica 4.5 -> 3.3 us.
GC_YOUNG = 50_000


def tune_gc() -> None:
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def gc_stats() -> dict:
    """The collector's thresholds and how often each generation was collected (for ``stats()``)."""
    return {"threshold": list(gc.get_threshold()), "collections": [s["collections"] for s in gc.get_stats()]}
