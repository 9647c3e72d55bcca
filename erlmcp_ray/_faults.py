"""The fault seam: an application-level network partition between chosen processes.

``set_partition(namespace, sides)`` stores a ``core.partition.PartitionRule`` in Ray's key-value
store; every process that sends a message of this system (a client to a shard copy or the
coordinator, an owner to its replicas, the supervisor to the copies) asks ``blocks(src, dst)``
first, and a blocked message fails as ``UnavailableError`` -- what a real partition looks like to
the sender (Ray's own control plane, GCS and object transfers, is not cut). Each process re-reads
the rule at most every ``REFRESH_S``, so a partition (and its end) reaches everyone within that.

Used by the fault suite and by users testing their own agents against a split cluster; costs one
read of the key-value store per process every ``REFRESH_S`` while messages are being sent.
``set_partition`` and ``clear_partition`` return once the change is in effect everywhere (they wait
``REFRESH_S``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from erlmcp_ray import _ray
from erlmcp_ray.core.partition import PartitionRule, partition_key
from erlmcp_ray.errors import UnavailableError

__all__ = ["REFRESH_S", "FaultSeam", "clear_partition", "seam", "set_partition"]

REFRESH_S = 0.2


class FaultSeam:
    def __init__(self, namespace: str, *, read: Callable[[bytes], bytes | None] = _ray.kv_get,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = REFRESH_S) -> None:
        self._key, self._read, self._clock, self._refresh_s = partition_key(namespace), read, clock, refresh_s
        self._rule = PartitionRule([])
        self._raw: bytes | None = None
        self._next = float("-inf")

    def rule(self) -> PartitionRule:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._refresh_s
            try:
                raw = self._read(self._key)
            except Exception:  # noqa: BLE001 - the GCS unreachable: keep the last rule
                raw = self._raw
            if raw != self._raw:
                self._raw, self._rule = raw, PartitionRule.decode(raw)
        return self._rule

    def refresh(self) -> None:
        """Read the rule now (an operator's call after the network came back)."""
        self._next = float("-inf")

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
