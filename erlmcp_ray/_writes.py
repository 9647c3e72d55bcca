"""Client-side write machinery: the write-behind buffer and strong group commit.

Both take the function that actually talks to Ray as a constructor argument,
so their logic is tested without a cluster.

Write-behind (eventual puts): ``add`` coalesces by key (the last write to a key
wins, as in a write-back cache), and ``take`` hands out everything buffered,
grouped by owner. The sending thread lives in the client.

Group commit (strong puts): concurrent callers writing to one shard form a
queue; the first becomes the leader and sends every queued op in one call,
then hands leadership to the next waiter, so N concurrent strong writes cost
about one round trip per batch instead of N.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["GroupCommit", "WriteBuffer"]

Op = tuple[str, Any, Any, tuple]  # (key, data | None, ttl_ms | None, tags)


class WriteBuffer:
    """Coalescing buffer of eventual writes, keyed by (domain, shard) then key."""

    def __init__(self) -> None:
        self._ops: dict[tuple[str, int], dict[str, Op]] = {}
        self._n = 0

    def add(self, domain: str, shard: int, op: Op) -> None:
        group = self._ops.get((domain, shard))
        if group is None:
            group = self._ops[(domain, shard)] = {}
        if op[0] not in group:
            self._n += 1
        group[op[0]] = op

    def peek(self, domain: str, shard: int, key: str) -> Op | None:
        group = self._ops.get((domain, shard))
        return None if group is None else group.get(key)

    def pop(self, domain: str, shard: int, key: str) -> Op | None:
        group = self._ops.get((domain, shard))
        if group is None or key not in group:
            return None
        self._n -= 1
        return group.pop(key)

    def take(self, max_batch: int) -> list[tuple[str, int, list[Op]]]:
        """Everything buffered, as ``(domain, shard, ops)`` batches of at most ``max_batch``."""
        out = []
        for (domain, shard), group in self._ops.items():
            ops = list(group.values())
            for i in range(0, len(ops), max_batch):
                out.append((domain, shard, ops[i : i + max_batch]))
        self._ops = {}
        self._n = 0
        return out

    def __len__(self) -> int:
        return self._n


class _Waiter:
    __slots__ = ("event", "lead", "op", "outcome")

    def __init__(self, op: Op) -> None:
        self.op = op
        self.event = threading.Event()
        self.lead = False
        self.outcome: tuple[bool, Any] | None = None  # (ok, result-or-exception)


class GroupCommit:
    """Batches concurrent synchronous writes per shard (leader/follower)."""

    def __init__(self, send: Callable[[str, int, list[Op]], list[Any]]) -> None:
        self._send = send  # (domain, shard, ops) -> one result per op; raises for the whole batch
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, int], list[_Waiter]] = {}
        self._leading: set[tuple[str, int]] = set()
        self.batches = 0
        self.ops = 0

    def submit(self, domain: str, shard: int, op: Op) -> Any:
        me = _Waiter(op)
        key = (domain, shard)
        with self._lock:
            self._queues.setdefault(key, []).append(me)
            if key in self._leading:
                lead = False
            else:
                self._leading.add(key)
                lead = True
        if not lead:
            me.event.wait()
            if not me.lead:
                return self._outcome(me)
        self._lead(key, me)
        return self._outcome(me)

    def _lead(self, key: tuple[str, int], me: _Waiter) -> None:
        while me.outcome is None:
            with self._lock:
                batch, self._queues[key] = self._queues[key], []
            try:
                results = self._send(key[0], key[1], [w.op for w in batch])
                # an exception in place of a result fails that op alone (e.g. refused under pressure)
                outcomes = [(not isinstance(r, BaseException), r) for r in results]
            except Exception as exc:  # noqa: BLE001 - every op in the batch gets the error
                outcomes = [(False, exc)] * len(batch)
            self.batches += 1
            self.ops += len(batch)
            for w, outcome in zip(batch, outcomes):
                w.outcome = outcome
                if w is not me:
                    w.event.set()
        with self._lock:
            queue = self._queues[key]
            if queue:  # hand over: the next waiter leads, we return
                nxt = queue[0]
                nxt.lead = True
                nxt.event.set()
            else:
                self._leading.discard(key)

    @staticmethod
    def _outcome(w: _Waiter) -> Any:
        ok, value = w.outcome  # type: ignore[misc]
        if ok:
            return value
        raise value
