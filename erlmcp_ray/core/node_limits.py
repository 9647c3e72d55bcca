"""Per-node limits enforced (spec "Per-Node Limits" and "Limit Enforcement"): pure, no Ray.

A node holds shard copies of several domains. Each domain enforces its own ``max_bytes`` on every
write; ``limits.max_bytes`` / ``limits.max_entries`` bound what one *node* holds across them all.
The supervisor measures every copy each ``memory_monitoring.check_interval`` and hands the usage,
grouped by node, to :meth:`NodeBudget.observe`, which returns what to do (the warning at
``limits.warn_percent`` is an alert rule, ``node_usage``, not this class's business):

- the node's level follows the spec's pressure levels on ``max(bytes / max_bytes, entries /
  max_entries)``, with the same hysteresis as a domain's (``core.pressure``);
- at HIGH (>= 80 %) the node sheds down to the HIGH line, at CRITICAL (> 90 %) down to the MEDIUM
  line (60 %): :class:`NodeEvict` asks the owners of the *evictable* shards with a copy on the
  node (their domain has an eviction policy) to free the excess, each in proportion to what its
  copy there holds. An owner's eviction shrinks every copy of its shard, the one on this node too;
- at CRITICAL, when what the evictable copies hold cannot cover the excess, the node refuses growth:
  the shards (not evictable) with a copy on the node are *refused* until the node leaves CRITICAL
  (below 85 %), and their owners refuse writes that would grow them -- reads, deletes and shrinking
  writes go on, as for a domain at CRITICAL.

The supervisor pushes ``refused()`` to the owners each round (an owner that restarted, or a new
owner after a failover, learns it at the next check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from erlmcp_ray.core.pressure import CRITICAL, DEFAULT_THRESHOLDS, HIGH, PressureLevel, Thresholds, level_for

__all__ = ["CopyUsage", "NodeBudget", "NodeEvict", "refusal_message"]

Shard = tuple[str, int]  # (domain, shard)


@dataclass(frozen=True, slots=True)
class CopyUsage:
    """One shard copy on a node: what it holds, and whether its domain has an eviction policy."""

    shard: Shard
    slot: int
    bytes: int
    entries: int
    evictable: bool


@dataclass(frozen=True, slots=True)
class NodeEvict:
    """Ask each shard's owner to free ``(bytes, entries)`` (its share of the node's excess)."""

    node: str
    level: PressureLevel
    shares: dict[Shard, tuple[int, int]]


def refusal_message(node: str, ratio: float) -> str:
    return (f"node {node} holds {ratio:.0%} of its limits (limits.max_bytes / max_entries): writes that grow "
            f"shards with a copy there are refused until deletes, eviction elsewhere or higher limits bring "
            f"it below 85 %")


@dataclass(slots=True)
class _Node:
    level: PressureLevel = PressureLevel.LOW
    ratio: float = 0.0
    bytes: int = 0
    entries: int = 0
    refused: frozenset[Shard] = frozenset()
    evictions_asked: int = 0


class NodeBudget:
    """Levels and actions of every node against ``limits`` (see the module docstring)."""

    def __init__(self, max_bytes: int, max_entries: int, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        if max_bytes <= 0 or max_entries <= 0:
            raise ValueError(f"node limits must be > 0, got max_bytes={max_bytes}, max_entries={max_entries}")
        self.max_bytes, self.max_entries, self.thresholds = max_bytes, max_entries, thresholds
        self._nodes: dict[str, _Node] = {}

    def ratio(self, nbytes: int, entries: int) -> float:
        return max(nbytes / self.max_bytes, entries / self.max_entries)

    def observe(self, usage: dict[str, list[CopyUsage]]) -> list[NodeEvict]:
        """One round's usage per node; the evictions to ask for. A node that no longer reports is
        forgotten (its refusals lifted)."""
        for gone in set(self._nodes) - set(usage):
            del self._nodes[gone]
        return [e for node_id, copies in usage.items() if (e := self._observe(node_id, copies)) is not None]

    def _observe(self, node_id: str, copies: list[CopyUsage]) -> NodeEvict | None:
        node = self._nodes.setdefault(node_id, _Node())
        node.bytes, node.entries = sum(c.bytes for c in copies), sum(c.entries for c in copies)
        node.ratio = self.ratio(node.bytes, node.entries)
        node.level = level_for(node.ratio, node.level, self.thresholds)
        if node.level < CRITICAL:
            node.refused = frozenset()
        if node.level < HIGH:
            return None
        line = self.thresholds.high if node.level == HIGH else self.thresholds.medium
        excess_bytes = max(0, node.bytes - math.floor(line * self.max_bytes))
        excess_entries = max(0, node.entries - math.floor(line * self.max_entries))
        evictable = [c for c in copies if c.evictable]
        ev_bytes, ev_entries = sum(c.bytes for c in evictable), sum(c.entries for c in evictable)
        if node.level == CRITICAL and (ev_bytes < excess_bytes or ev_entries < excess_entries):
            node.refused = frozenset(c.shard for c in copies if not c.evictable)
        # else: a refusal holds until the node leaves CRITICAL (evicting will bring it down)
        shares: dict[Shard, tuple[int, int]] = {}
        for c in evictable:
            b = min(c.bytes, math.ceil(excess_bytes * c.bytes / ev_bytes)) if ev_bytes else 0
            e = min(c.entries, math.ceil(excess_entries * c.entries / ev_entries)) if ev_entries else 0
            if b or e:
                old = shares.get(c.shard, (0, 0))
                shares[c.shard] = (old[0] + b, old[1] + e)
        if not shares:
            return None
        node.evictions_asked += 1
        return NodeEvict(node_id, node.level, shares)

    def refused(self) -> dict[Shard, str]:
        """Every refused shard and why (the first node that refuses it), to push each round."""
        out: dict[Shard, str] = {}
        for node_id, node in self._nodes.items():
            for shard in node.refused:
                out.setdefault(shard, refusal_message(node_id, node.ratio))
        return out

    def snapshot(self) -> dict[str, dict]:
        """Per node: level, ratio, bytes, entries, refused shards, eviction rounds asked."""
        return {n: {"level": str(s.level), "ratio": s.ratio, "bytes": s.bytes, "entries": s.entries,
                    "refused": sorted(f"{d}/{i}" for d, i in s.refused), "evictions_asked": s.evictions_asked}
                for n, s in self._nodes.items()}
