"""The persistence selector (spec ``erlmcp_persistence_selector``): which backend suits a workload.

``recommend_strategy(characteristics)`` walks the spec's selection tree and returns a ``Strategy``
(the backend, in this port's names, and the reason)::

    durability high    single_node -> disk (spec DETS)       multi_node -> replicated (spec Mnesia)
    data < 100 MB and reads > 90 %                      -> memory (spec ETS)
    durability none                                     -> memory
    durability moderate  single_node -> disk             multi_node -> replicated

One deliberate difference from the spec's drawing: there the small-and-read-mostly shortcut to ETS
comes first, so even ``durability_requirement = high`` data would get a backend that loses
everything on a restart. Here a high durability requirement is honoured first — what a user of
Redis persistence or Hazelcast MapStore would expect. The spec's own example (1 MB, 95 % reads,
moderate, multi_node) still gets memory.

Pure: no Ray. Measuring the backends on a running system (``benchmark_strategies``) and switching a
domain's backend live (``auto_select``) come with the durable domains (issue 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from erlmcp_ray.config import Backend
from erlmcp_ray.errors import InvalidValueError

__all__ = [
    "READ_MOSTLY",
    "SMALL_DATA_BYTES",
    "Strategy",
    "recommend_for_cache",
    "recommend_for_registry",
    "recommend_for_session",
    "recommend_strategy",
]

#: The spec's "Data Size < 100MB?" (bytes, as the spec's 100 * 1024 * 1024).
SMALL_DATA_BYTES = 100 * 1024 * 1024
#: The spec's "Read Ratio > 90%?".
READ_MOSTLY = 0.90

_DURABILITY = ("none", "moderate", "high")
_TOPOLOGY = ("single_node", "multi_node")
_SPEC_NAMES = {Backend.MEMORY: "ETS", Backend.DISK: "DETS", Backend.REPLICATED: "Mnesia"}


@dataclass(frozen=True)
class Strategy:
    backend: Backend
    reason: str
    characteristics: dict

    @property
    def spec_name(self) -> str:
        """The spec's name for the backend: ETS, DETS or Mnesia."""
        return _SPEC_NAMES[self.backend]


def recommend_strategy(characteristics: dict[str, Any]) -> Strategy:
    """The backend for a workload: ``data_size`` (bytes), ``read_ratio`` (0..1), ``durability_requirement``
    (none | moderate | high), ``cluster_topology`` (single_node | multi_node). Missing keys take the
    defaults 0 bytes, 0.5, moderate, multi_node."""
    c = _checked(characteristics)
    size, reads, durability, topology = c["data_size"], c["read_ratio"], c["durability_requirement"], \
        c["cluster_topology"]
    if durability == "high":
        if topology == "single_node":
            return Strategy(Backend.DISK, "high durability on a single node: one copy written through to disk", c)
        return Strategy(Backend.REPLICATED, "high durability on several nodes: copies on different nodes", c)
    if size < SMALL_DATA_BYTES and reads > READ_MOSTLY:
        return Strategy(Backend.MEMORY, f"small ({_mb(size)} < 100 MB) and read-mostly ({reads:.0%} > 90 %): "
                        f"in-memory reads are fastest and the data is cheap to rebuild", c)
    if durability == "none":
        return Strategy(Backend.MEMORY, "no durability required: memory is fastest", c)
    if topology == "single_node":
        return Strategy(Backend.DISK, "moderate durability on a single node: survive a restart from disk", c)
    return Strategy(Backend.REPLICATED, "moderate durability on several nodes: survive a node loss via replicas", c)


def recommend_for_session() -> Strategy:
    """Agent sessions: medium size, mixed reads and writes, should survive a node loss."""
    return recommend_strategy({"data_size": SMALL_DATA_BYTES, "read_ratio": 0.7,
                               "durability_requirement": "moderate", "cluster_topology": "multi_node"})


def recommend_for_cache() -> Strategy:
    """A cache of an outside source: small, read-mostly, rebuilt from the source when lost."""
    return recommend_strategy({"data_size": 10 * 1024 * 1024, "read_ratio": 0.95,
                               "durability_requirement": "none", "cluster_topology": "multi_node"})


def recommend_for_registry() -> Strategy:
    """A registry of agents and tools: small and read-mostly (the spec keeps it in ETS)."""
    return recommend_strategy({"data_size": 1024 * 1024, "read_ratio": 0.98,
                               "durability_requirement": "moderate", "cluster_topology": "multi_node"})


def _checked(characteristics: Any) -> dict[str, Any]:
    if not isinstance(characteristics, dict):
        raise InvalidValueError("characteristics must be a dict", where="characteristics")
    unknown = set(characteristics) - {"data_size", "read_ratio", "durability_requirement", "cluster_topology"}
    if unknown:
        raise InvalidValueError(f"unknown characteristics {sorted(unknown)}; expected data_size, read_ratio, "
                                f"durability_requirement, cluster_topology", where="characteristics")
    c = {"data_size": 0, "read_ratio": 0.5, "durability_requirement": "moderate", "cluster_topology": "multi_node",
         **characteristics}
    size, reads = c["data_size"], c["read_ratio"]
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size < 0:
        raise InvalidValueError(f"data_size must be a number of bytes >= 0, got {size!r}", where="data_size")
    if isinstance(reads, bool) or not isinstance(reads, (int, float)) or not 0 <= reads <= 1:
        raise InvalidValueError(f"read_ratio must be a number in 0..1, got {reads!r}", where="read_ratio")
    for name, allowed in (("durability_requirement", _DURABILITY), ("cluster_topology", _TOPOLOGY)):
        value = c[name]
        if isinstance(value, str):
            value = c[name] = value.strip().lower().replace("-", "_")
        if value not in allowed:
            raise InvalidValueError(f"{name} must be one of {', '.join(allowed)}, got {c[name]!r}", where=name)
    return c


def _mb(size: float) -> str:
    return f"{size / (1024 * 1024):.0f} MB"
