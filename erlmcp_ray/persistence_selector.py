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

``benchmark_strategies(characteristics)`` measures instead of estimating: it starts a scratch
memory system (a fresh namespace on this process's Ray) with one domain per backend, runs a short
workload with the given read ratio against each, and shuts it down (purging what it stored).
On a running system, ``client.selector`` reaches the supervisor actor (``actors/supervisor.py``): with
``persistence_selector.auto_select`` on, every ``evaluation_interval`` it measures each domain that
sets no backend (its size and read ratio, what its shards served) and migrates it live when the
recommendation changes (``core/auto_select.py`` decides, the actor moves it).
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
import uuid
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


def benchmark_strategies(characteristics: dict[str, Any], *, ops: int = 2000, keys: int = 200,
                         value_bytes: int = 256, redis_url: str | None = None) -> list[dict[str, Any]]:
    """Measure each backend on this machine with the workload's read ratio: per backend, read and write
    p50/p99 (µs, strong: every operation reaches the shard), ops/s, what survives what, and whether it
    is the recommended one. Backends: memory, disk (SQLite), replicated (durable write_through on
    SQLite), and disk on Redis when ``redis_url`` is given. Needs Ray (started here if it is not)."""
    import ray

    import erlmcp_ray

    c = _checked(characteristics)
    if not isinstance(ops, int) or ops < 1 or not isinstance(keys, int) or keys < 1:
        raise InvalidValueError("ops and keys must be positive ints", where="ops")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    recommended = recommend_strategy(c).backend
    runs = [({"kind": "sqlite", "data_dir": tempfile.mkdtemp(prefix="erlmcp_bench_")},
             [("memory", Backend.MEMORY, {"backend": "memory"}, "none: lost when its actor dies"),
              ("disk/sqlite", Backend.DISK, {"backend": "disk"}, "a process or node restart (SQLite file)"),
              ("replicated", Backend.REPLICATED, {"backend": "replicated", "durable": "write_through"},
               "a node loss (replicas) and a full restart (SQLite file)")])]
    if redis_url is not None:
        runs.append(({"kind": "redis", "redis_url": redis_url},
                     [("disk/redis", Backend.DISK, {"backend": "disk"}, "a restart of everything but Redis")]))
    value = b"x" * value_bytes
    out = []
    for durable, backends in runs:
        namespace = f"erlmcp_bench_{uuid.uuid4().hex[:8]}"
        cfg = {"durable": durable, "client": {"poll_timeout_s": 0.5},
               "domains": {f"b{i}": {**spec, "max_bytes": "256MB"} for i, (_, _, spec, _) in enumerate(backends)}}
        system = erlmcp_ray.start(cfg, namespace=namespace)
        try:
            with system.client() as client:
                for i, (name, backend, _spec, survives) in enumerate(backends):
                    reads, writes, elapsed = _workload(client, f"b{i}", c["read_ratio"], ops, keys, value)
                    out.append({
                        "backend": name, "spec_name": _SPEC_NAMES[backend], "ops": ops,
                        "ops_per_s": ops / elapsed,
                        "read_p50_us": _q(reads, 0.5), "read_p99_us": _q(reads, 0.99),
                        "write_p50_us": _q(writes, 0.5), "write_p99_us": _q(writes, 0.99),
                        "survives": survives, "recommended": backend is recommended and name != "disk/redis",
                    })
        finally:
            erlmcp_ray.shutdown(namespace, purge=True)
    return out


def _workload(client: Any, domain: str, read_ratio: float, ops: int, keys: int,
              value: bytes) -> tuple[list[float], list[float], float]:
    rng = random.Random(0)
    for k in range(keys):
        client.put(domain, f"k{k}", value, consistency="strong")
    reads: list[float] = []
    writes: list[float] = []
    start = time.perf_counter()
    for _ in range(ops):
        key = f"k{rng.randrange(keys)}"
        t = time.perf_counter()
        if rng.random() < read_ratio:
            client.get(domain, key, consistency="strong")
            reads.append(time.perf_counter() - t)
        else:
            client.put(domain, key, value, consistency="strong")
            writes.append(time.perf_counter() - t)
    return reads, writes, time.perf_counter() - start


def _q(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    if q == 0.5:
        return statistics.median(samples) * 1e6
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] * 1e6


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
