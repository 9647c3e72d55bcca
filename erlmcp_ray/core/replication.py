"""Pure bookkeeping for shard owners and replicas (no Ray, no threads).

* ``IdempotencyTable`` — every mutating call carries ``(client_id, request_seq)``;
  a retried call gets the first call's answer instead of applying again.
* ``ReplicaProgress`` — the owner's view of each replica: how far it acked in the
  owner's op-log, when it last answered, whether it is in sync.
* ``Freshness`` — a replica's view of how stale it is: the time it last caught
  up with its owner, plus the transit time the owner measured.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Freshness", "IdempotencyTable", "ReplicaProgress"]

_MISSING = object()


class IdempotencyTable:
    """Answers of recent mutating calls, by (client id, request seq); oldest dropped first."""

    def __init__(self, capacity: int = 16384) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def lookup(self, client_id: str, seq: int) -> Any:
        """The stored answer, or ``IdempotencyTable.MISSING``."""
        return self._answers.get((client_id, seq), _MISSING)

    def remember(self, client_id: str, seq: int, answer: Any) -> None:
        self._answers[(client_id, seq)] = answer
        if len(self._answers) > self._capacity:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)

    MISSING = _MISSING


@dataclass
class ReplicaProgress:
    """Owner-side state of one replica."""

    slot: int
    acked_seq: int | None = None  # None: unknown, send a full snapshot
    in_sync: bool = True
    last_ack_at: float = 0.0
    failures: int = 0
    rtt_s: float = 0.0

    def acked(self, seq: int, now: float, rtt_s: float) -> None:
        self.acked_seq = seq
        self.in_sync = True
        self.last_ack_at = now
        self.failures = 0
        self.rtt_s = rtt_s

    def failed(self, now: float, out_of_sync_after_s: float) -> None:
        self.failures += 1
        if now - self.last_ack_at > out_of_sync_after_s:
            self.in_sync = False


@dataclass
class Freshness:
    """Replica-side staleness: how long ago (plus transit) this copy matched its owner."""

    clock: Callable[[], float] = field(default=time.monotonic)
    caught_up_at: float | None = None
    transit_s: float = 0.0

    def caught_up(self, transit_s: float) -> None:
        self.caught_up_at = self.clock()
        self.transit_s = transit_s

    def staleness_ms(self) -> float:
        """Upper bound on how far behind the owner this copy may be; inf before the first sync."""
        if self.caught_up_at is None:
            return float("inf")
        return (self.clock() - self.caught_up_at + self.transit_s) * 1000.0
