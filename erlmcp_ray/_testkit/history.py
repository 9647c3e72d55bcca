"""Record operations on keys from many threads or processes, and check them for linearizability.

``HistoryRecorder`` notes when each ``put``/``get`` was invoked and when it returned (or that it
failed: definitely not applied, or indeterminate — a timeout may or may not have happened).
``check_linearizable`` decides, key by key (a register per key: linearizability composes), whether
some order of the operations, each placed between its invocation and its return, explains every
value read. It is the Wing & Gong search with Lowe's memoisation of (set of operations placed,
register value), the algorithm behind Knossos and Porcupine. Values must be hashable; use a
fresh value per put so that a read names the write it saw.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["HistoryRecorder", "LinearizabilityResult", "Operation", "check_linearizable"]

_PENDING = object()


@dataclass(frozen=True)
class Operation:
    process: Hashable
    kind: str  # "put" or "get"
    key: Hashable
    value: Any  # put: the value written; get: the value read
    invoked: float
    completed: float  # math.inf: indeterminate (may have taken effect at any later time, or never)


@dataclass(frozen=True)
class LinearizabilityResult:
    ok: bool
    keys: int
    operations: int
    key: Hashable = None  # the first key with no valid order
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok


class HistoryRecorder:
    """Thread-safe: ``with rec.op(process, "put", key, value): client.put(...)``, or
    ``token = rec.invoke(...)`` then ``rec.ok(token, value_read)`` / ``rec.fail(token, definite=...)``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, tuple] = {}
        self._done: list[Operation] = []
        self._ids = itertools.count()

    def invoke(self, process: Hashable, kind: str, key: Hashable, value: Any = None) -> int:
        if kind not in ("put", "get"):
            raise ValueError(f"kind must be 'put' or 'get', got {kind!r}")
        token = next(self._ids)
        with self._lock:
            self._open[token] = (process, kind, key, value, self._clock())
        return token

    def ok(self, token: int, value: Any = _PENDING) -> None:
        now = self._clock()
        with self._lock:
            process, kind, key, written, invoked = self._open.pop(token)
            self._done.append(Operation(process, kind, key, written if kind == "put" else value, invoked, now))

    def fail(self, token: int, *, definite: bool) -> None:
        """The operation raised: ``definite`` — it did not happen; else it may or may not have."""
        with self._lock:
            process, kind, key, written, invoked = self._open.pop(token)
            if not definite and kind == "put":
                self._done.append(Operation(process, kind, key, written, invoked, math.inf))

    def add(self, operations: Iterable[Operation]) -> None:
        """Operations recorded elsewhere (another process's recorder)."""
        with self._lock:
            self._done.extend(operations)

    def history(self) -> list[Operation]:
        with self._lock:
            return list(self._done)


def check_linearizable(history: Iterable[Operation], initial: Any = None) -> LinearizabilityResult:
    """Is there, for every key, a total order of its operations consistent with real time in which
    every get reads the latest put (or ``initial``)?"""
    by_key: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    total = sum(len(ops) for ops in by_key.values())
    for key, ops in by_key.items():
        problem = _check_register(ops, initial)
        if problem:
            return LinearizabilityResult(False, len(by_key), total, key, problem)
    return LinearizabilityResult(True, len(by_key), total)


def _check_register(ops: list[Operation], initial: Any) -> str:
    ops = sorted(ops, key=lambda o: o.invoked)
    n = len(ops)
    required = 0  # operations that must be placed: all but indeterminate puts
    for i, op in enumerate(ops):
        if op.completed != math.inf:
            required |= 1 << i
    seen: set[tuple[int, Any]] = set()
    # Depth-first over (placed set, register value); an explicit stack, as histories are long.
    stack = [(0, initial)]
    best = 0
    while stack:
        placed, value = stack.pop()
        if placed & required == required:
            return ""
        if (placed, value) in seen:
            continue
        seen.add((placed, value))
        best = max(best, (placed & required).bit_count())
        # The next operation may be any unplaced one invoked before every unplaced required
        # operation returned (nothing that had already finished may come after it).
        horizon = min((ops[i].completed for i in range(n) if not placed >> i & 1 and required >> i & 1),
                      default=math.inf)
        for i in range(n):
            if placed >> i & 1:
                continue
            op = ops[i]
            if op.invoked > horizon:
                break  # sorted by invocation: the rest are later still
            if op.kind == "put":
                stack.append((placed | 1 << i, op.value))
            elif op.value == value:
                stack.append((placed | 1 << i, value))
    return (f"no order explains the {n} operations on this key; at most {best} of the "
            f"{required.bit_count()} completed ones could be placed:\n{_table(ops)}")


def _table(ops: list[Operation]) -> str:
    """The operations in invocation order, times in ms from the first invocation (what to read when
    a history fails: which read saw what, and what overlapped it)."""
    t0 = ops[0].invoked if ops else 0.0
    rows = []
    for op in ops:
        done = "indeterminate" if op.completed == math.inf else f"{(op.completed - t0) * 1e3:9.1f}"
        rows.append(f"  {(op.invoked - t0) * 1e3:9.1f} .. {done:>13}  p{op.process} {op.kind} {op.value!r}")
    return "\n".join(rows)
