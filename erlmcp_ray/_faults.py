"""The fault seam: an application-level network partition between chosen processes.

``set_partition(namespace, sides)`` stores a ``core.partition.PartitionRule`` in Ray's key-value
store; every process that sends a message of this system (a client to a shard copy or the
coordinator, an owner to its replicas, the supervisor to the copies) asks ``blocks(src, dst)``
first, and a blocked message fails as ``UnavailableError`` -- what a real partition looks like to
the sender (Ray's own control plane, GCS and object transfers, is not cut). No process decides
with a rule read more than ``REFRESH_S`` ago, so a partition (and its end) reaches everyone within
that. A process sending messages re-reads it in a background thread once it is half that old (no
call waits for the key-value store: it used to cost the one call that came next ~1 ms); one that
was idle longer reads it before its next message.

Used by the fault suite and by users testing their own agents against a split cluster; costs one
read of the key-value store per process every ``REFRESH_S / 2`` to ``REFRESH_S`` while messages are
being sent.
``set_partition`` and ``clear_partition`` return once the change is in effect everywhere (they wait
``REFRESH_S``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from erlmcp_ray import _ray
from erlmcp_ray.core.partition import PartitionRule, partition_key
from erlmcp_ray.errors import UnavailableError

__all__ = ["REFRESH_S", "FaultSeam", "clear_partition", "seam", "set_partition"]

REFRESH_S = 0.2

log = logging.getLogger("erlmcp_ray.faults")


class _Worker:
    """One daemon thread, started on first use, running the functions handed to it in turn (handing
    one over is a queue put: starting a thread for each cost its caller ~0.1-0.5 ms here)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, fn: Callable[[], None]) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="erlmcp-fault-seam", daemon=True)
                    self._thread.start()
        self._jobs.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._jobs.get()
            try:
                fn()
            except Exception:  # a bad rule in the store: the next read tries again
                log.exception("fault seam: reading the partition rule failed")


_background = _Worker()  # every seam of this process shares it


class FaultSeam:
    """``spawn(fn)`` runs ``fn`` in the background (this process's seam thread; tests inject their own)."""

    def __init__(self, namespace: str, *, read: Callable[[bytes], bytes | None] = _ray.kv_get,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = REFRESH_S,
                 spawn: Callable[[Callable[[], None]], None] = _background) -> None:
        self._key, self._read, self._clock, self._refresh_s = partition_key(namespace), read, clock, refresh_s
        self._spawn = spawn
        self._rule = PartitionRule([])
        self._raw: bytes | None = None
        self._read_at = float("-inf")  # when the read that gave the rule started
        self._floor = float("-inf")  # refresh(): a read started before this is not taken
        self._lock = threading.Lock()
        self._refreshing = False

    def rule(self) -> PartitionRule:
        age = self._clock() - self._read_at
        if age >= self._refresh_s:
            self._load()  # too old to decide with: read it first
        elif age >= self._refresh_s / 2 and not self._refreshing:
            self._refreshing = True  # (two threads may both start one: harmless)
            self._spawn(self._load_in_background)
        return self._rule

    def _load(self) -> None:
        started = self._clock()
        try:
            raw = self._read(self._key)
        except Exception:  # noqa: BLE001 - the GCS unreachable: keep the last rule until the next try
            raw = self._raw
        with self._lock:
            if started >= max(self._read_at, self._floor):  # not older than what we hold, nor than refresh()
                self._read_at = started
                if raw != self._raw:
                    self._raw, self._rule = raw, PartitionRule.decode(raw)

    def _load_in_background(self) -> None:
        try:
            self._load()
        finally:
            self._refreshing = False

    def refresh(self) -> None:
        """Read the rule before the next message (an operator's call after the network came back);
        a background read in flight now does not count."""
        with self._lock:
            self._floor = self._clock()
            self._read_at = float("-inf")

    def blocks(self, src: str, dst: str) -> bool:
        return self.rule().blocks(src, dst)

    def check(self, src: str, dst: str) -> None:
        """``UnavailableError`` when a partition cuts ``src`` off from ``dst``."""
        if self.rule().blocks(src, dst):
            raise UnavailableError(f"{dst} is unreachable from {src} (a network partition)")


_seams: dict[str, FaultSeam] = {}
_lock = threading.Lock()


def seam(namespace: str) -> FaultSeam:
    """This process's seam for one system namespace."""
    s = _seams.get(namespace)
    if s is None:
        with _lock:
            s = _seams.setdefault(namespace, FaultSeam(namespace))
    return s


def set_partition(namespace: str, sides: Iterable[Iterable[str]]) -> PartitionRule:
    """Cut the system in ``namespace`` into ``sides`` (lists of place patterns, see
    ``core.partition``); returns once in effect everywhere."""
    rule = PartitionRule(sides)
    _ray.kv_put(partition_key(namespace), rule.encode())
    time.sleep(REFRESH_S * 1.25)  # every process's cached rule has expired: in effect everywhere
    return rule


def clear_partition(namespace: str) -> None:
    """End the partition; returns once every process reaches every other again."""
    _ray.kv_del(partition_key(namespace))
    time.sleep(REFRESH_S * 1.25)
