"""A bounded operation log with sequence numbers: the source of replication deltas.

Like Redis's replication backlog: it keeps the last ``capacity`` operations
(and up to twice that between trims). ``since(seq)`` gives every operation after
``seq``, or ``None`` when the log no longer reaches back that far, in which case
the follower needs a full state transfer instead of a delta.
"""

from __future__ import annotations

__all__ = ["OpLog"]

Op = tuple[int, str, bytes]  # (seq, key, record)


class OpLog:
    __slots__ = ("_base", "_capacity", "_ops")

    def __init__(self, capacity: int = 65536, start_seq: int = 0) -> None:
        if capacity < 1:
            raise ValueError("op-log capacity must be at least 1")
        self._capacity = capacity
        self._ops: list[Op] = []
        self._base = start_seq + 1  # seq of self._ops[0]

    @property
    def last_seq(self) -> int:
        return self._base + len(self._ops) - 1

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still held (``last_seq + 1`` when empty)."""
        return self._base

    def __len__(self) -> int:
        return len(self._ops)

    def append(self, key: str, record: bytes) -> int:
        seq = self._base + len(self._ops)
        self._ops.append((seq, key, record))
        if len(self._ops) >= 2 * self._capacity:
            # Trim in bulk so append stays amortised O(1) (a deque cannot slice).
            drop = len(self._ops) - self._capacity
            del self._ops[:drop]
            self._base += drop
        return seq

    def since(self, seq: int) -> list[Op] | None:
        """Operations with sequence number > ``seq``, oldest first; None if trimmed away."""
        if seq < self._base - 1:
            return None
        if seq > self.last_seq:
            raise ValueError(f"seq {seq} is ahead of this log (last is {self.last_seq})")
        return self._ops[seq - self._base + 1 :]

    def trim(self) -> None:
        """Keep only the last ``capacity`` operations now (append trims lazily, at 2×)."""
        drop = len(self._ops) - self._capacity
        if drop > 0:
            del self._ops[:drop]
            self._base += drop

    def reset(self, start_seq: int) -> None:
        """Forget every operation and continue numbering after ``start_seq``."""
        self._ops = []
        self._base = start_seq + 1
