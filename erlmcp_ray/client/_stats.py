"""Counters and latency samples a client keeps, safe to bump from any of its threads."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

__all__ = ["Counters", "Latencies"]

COUNTER_NAMES = ("replica_reads", "owner_reads", "stale_replica_fallbacks", "buffered_puts", "batches_sent",
                 "batch_retries", "strong_writes", "sync_writes", "events_delivered", "gaps", "write_errors",
                 "polls", "invalidations_received", "shared_fetches", "owner_restarts_seen", "resent_after_restart",
                 "writes_stashed")


class Counters:
    """Named counters; ``add`` is one locked increment (callers, the write-behind thread and the
    coherence thread all count)."""

    def __init__(self, names: tuple[str, ...] = COUNTER_NAMES) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Latencies:
    """The last 4096 samples (seconds) per operation; percentiles in ms."""

    def __init__(self, names: tuple[str, ...] = ("remote_get", "strong_put", "sync_put")) -> None:
        self._samples = {n: deque(maxlen=4096) for n in names}

    def add(self, name: str, seconds: float) -> None:
        self._samples[name].append(seconds)  # deque.append is atomic

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, samples in self._samples.items():
            s = list(samples)  # a copy first: other threads keep appending
            s.sort()
            out[name] = ({"count": 0, "p50": 0.0, "p99": 0.0} if not s else
                         {"count": len(s), "p50": s[len(s) // 2] * 1000,
                          "p99": s[min(len(s) - 1, int(len(s) * 0.99))] * 1000})
        return out
