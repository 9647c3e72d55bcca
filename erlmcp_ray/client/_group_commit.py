"""Group commit of synchronous writes: concurrent callers writing to one shard share a round trip.

The first caller to find no round in progress for its shard becomes the leader and sends
every queued op in one call, then hands leadership to the next waiter; N concurrent strong
writes cost about one round trip per batch instead of N. The send function is passed in,
so this is tested without Ray.

Every wait is bounded: a follower still queued when ``timeout_s`` runs out leaves the queue
and raises ``OperationTimeoutError`` (its op was never sent); one whose op is already in a
leader's round waits for that round, which is bounded by the leader's own call timeouts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from erlmcp_ray.errors import OperationTimeoutError

__all__ = ["GroupCommit"]


class _Gate:
    """A one-shot ``threading.Event`` for one waiter: a lock held from creation until ``set``.
    (An Event is a Condition and two locks to build, and a waiter lock per wait: several
    microseconds on every strong write, which 16 threads pay one after another under the GIL.)"""

    __slots__ = ("_lock", "_open")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._open = False

    def set(self) -> None:
        if not self._open:
            self._open = True
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        if self._open:
            return True
        if not self._lock.acquire(True, max(0.0, timeout)):
            return False
        self._lock.release()  # open for good: a later wait passes at once
        return True


class _Waiter:
    __slots__ = ("event", "lead", "op", "outcome", "taken")

    def __init__(self, op: Any) -> None:
        self.op = op
        self.event = _Gate()
        self.lead = False
        self.taken = False  # in a leader's round
        self.outcome: tuple[bool, Any] | None = None  # (ok, result-or-exception)


class GroupCommit:
    """Batches concurrent synchronous writes per shard (leader/follower)."""

    def __init__(self, send: Callable[[str, int, list], list[Any]], timeout_s: float = 30.0) -> None:
        self._send = send  # (domain, shard, ops) -> one result per op; raises for the whole batch
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, int], list[_Waiter]] = {}
        self._leading: set[tuple[str, int]] = set()
        self.batches = 0
        self.ops = 0
        #: callers in ``submit`` now, over every shard (1: a lone caller)
        self.callers = 0

    def submit(self, domain: str, shard: int, op: Any) -> Any:
        me = _Waiter(op)
        key = (domain, shard)
        with self._lock:
            self.callers += 1
            self._queues.setdefault(key, []).append(me)
            lead = key not in self._leading
            if lead:
                self._leading.add(key)
        try:
            if lead or self._follow(key, me):
                self._lead(key, me)
            return self._outcome(me)
        finally:
            with self._lock:
                self.callers -= 1

    def _follow(self, key: tuple[str, int], me: _Waiter) -> bool:
        """Wait for our outcome; True when leadership was handed to us instead."""
        if not me.event.wait(self._timeout_s):
            with self._lock:
                if not me.taken and not me.lead:
                    self._queues[key].remove(me)
                    raise OperationTimeoutError(
                        f"a strong write waited {self._timeout_s} s for its turn and was not sent")
            # Our op is in a round already (or we were just made leader): that round is bounded
            # by the leader's own call timeouts; wait for it once more, then give up.
            if not me.event.wait(self._timeout_s * 2):
                raise OperationTimeoutError("a strong write's round did not finish; it may or may not have happened")
        return me.lead and me.outcome is None

    def _lead(self, key: tuple[str, int], me: _Waiter) -> None:
        while me.outcome is None:
            with self._lock:
                batch, self._queues[key] = self._queues[key], []
                for w in batch:
                    w.taken = True
            try:
                results = self._send(key[0], key[1], [w.op for w in batch])
                # an exception in place of a result fails that op alone (e.g. refused under pressure)
                outcomes = [(not isinstance(r, BaseException), r) for r in results]
            except Exception as exc:  # noqa: BLE001 - every op in the batch gets the error
                outcomes = [(False, exc)] * len(batch)
            with self._lock:
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
