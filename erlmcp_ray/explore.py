"""A running system's state as pandas DataFrames, for notebooks (``notebooks/``) and operators.

    from erlmcp_ray import explore
    explore.domains(client)        # one row per domain: entries, bytes, limit, used, pressure, lag, ...
    explore.nodes(client)          # one row per Ray node: what its copies hold against the node limits
    explore.topology(client)       # one row per shard copy: domain, shard, slot, owner?, node, bytes
    explore.replica_lag(client)    # one row per replica: operations behind, staleness, round trip
    explore.hit_ratios(client)     # one row per client and tier: hits, and the share of its reads
    explore.latencies(client, domain, n)   # one row per timed operation: level, op, microseconds
    explore.policy_hit_ratios(keys, sizes) # one row per (policy, cache size): hit ratio of a key trace

Each asks the system once (the same calls as ``erlmcp-ray status``); nothing is cached. Needs the
``notebooks`` extra (``pip install 'erlmcp_ray[notebooks]'``) for pandas.
"""

from __future__ import annotations

import gzip
import lzma
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from erlmcp_ray import status as _status

__all__ = ["domains", "hit_ratios", "latencies", "load_trace", "nodes", "policy_hit_ratios", "replica_lag",
           "topology"]

#: the traces shipped with the notebooks (small LIRS traces; see notebooks/data/README.md)
TRACES = Path(__file__).resolve().parent.parent / "notebooks" / "data"


def _pd() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - the extra is not installed
        raise ImportError("erlmcp_ray.explore needs pandas: pip install 'erlmcp_ray[notebooks]'") from exc
    return pd


def domains(client: Any) -> Any:
    """One row per domain (index: domain)."""
    rows = _status.domains(client)
    frame = _pd().DataFrame([{k: v for k, v in r.items() if k != "placement"} for r in rows])
    return frame.set_index("domain")


def nodes(client: Any) -> Any:
    """One row per Ray node (index: node_id): copies, bytes and entries held, their ratio to the
    node limits, pressure, refused shards, the node's RAM in use and our processes' memory."""
    return _pd().DataFrame(_status.nodes(client)).set_index("node_id")


def topology(client: Any) -> Any:
    """One row per shard copy: domain, shard, slot, whether it is the owner, its node, its bytes."""
    return _pd().DataFrame(_status.copies(client), columns=["domain", "shard", "slot", "owner", "node_id", "bytes"])


def replica_lag(client: Any) -> Any:
    """One row per replica: how many operations it is behind its owner, how stale its view may be
    (ms), the last replication round trip (ms) and its node."""
    rows = [{"domain": domain, "shard": s["shard"], "replica": r["slot"], "ops_behind": r["seq_lag"],
             "staleness_ms": r["staleness_ms"], "rtt_ms": r["rtt_ms"], "node_id": r["node_id"]}
            for domain, shards in client.sync_status().items() for s in shards for r in s["replicas"]]
    return _pd().DataFrame(rows, columns=["domain", "shard", "replica", "ops_behind", "staleness_ms", "rtt_ms",
                                          "node_id"])


def hit_ratios(client: Any) -> Any:
    """One row per live client and tier (L0, L1, miss): reads and their share of that client's
    reads (from the counters each client sends the coordinator, and this client's own, fresh)."""
    reports = client.coordinator.client_reports()
    reports[client.client_id] = client._report_now()
    rows = []
    for cid, r in sorted(reports.items()):
        total = r["l0_hits"] + r["l1_hits"] + r["misses"]
        for tier, n in (("L0", r["l0_hits"]), ("L1", r["l1_hits"]), ("miss", r["misses"])):
            rows.append({"client": cid, "tier": tier, "reads": n, "share": n / total if total else 0.0})
    return _pd().DataFrame(rows, columns=["client", "tier", "reads", "share"])


def latencies(client: Any, domain: str, n: int = 200, levels: Sequence[str] = ("eventual", "bounded_stale",
                                                                                 "strong")) -> Any:
    """Time ``n`` puts and ``n`` gets at each consistency level (keys ``latency:*`` of ``domain``,
    deleted after): one row per operation with its level, op and microseconds."""
    rows = []
    clock = time.perf_counter_ns
    value = {"payload": "x" * 64}
    for level in levels:
        for op in ("put", "get"):
            for i in range(n):
                key = f"latency:{level}:{i}"
                t0 = clock()
                if op == "put":
                    client.put(domain, key, value, consistency=level)
                else:
                    client.get(domain, key, consistency=level)
                rows.append({"level": level, "op": op, "us": (clock() - t0) / 1000})
    client.flush()
    for level in levels:
        for i in range(n):
            client.delete(domain, f"latency:{level}:{i}")
    client.flush()
    return _pd().DataFrame(rows, columns=["level", "op", "us"])


def load_trace(name: str, folder: str | Path = TRACES) -> list[int]:
    """The keys of a LIRS-format trace (one integer per line, ``*`` skipped), ``name.trace.gz`` or
    ``name.trace.xz`` in ``folder``."""
    folder = Path(folder)
    gz, xz = folder / f"{name}.trace.gz", folder / f"{name}.trace.xz"
    if gz.exists():
        with gzip.open(gz, "rt") as f:
            return [int(tok) for tok in f.read().split() if tok != "*"]
    if xz.exists():
        with lzma.open(xz, "rt") as f:
            return [int(tok) for tok in f.read().split() if tok != "*"]
    raise FileNotFoundError(f"no trace {name!r} in {folder} (looked for {gz.name} and {xz.name})")


def policy_hit_ratios(keys: Sequence[Any], sizes: Iterable[int], policies: Iterable[str] | None = None) -> Any:
    """The hit ratio of every eviction policy (or ``policies``) replaying ``keys`` at each cache
    size (entries): one row per (policy, size), with ops/s."""
    from erlmcp_ray.eviction import benchmark_policies

    rows = []
    for size in sizes:
        for r in benchmark_policies(keys, size, list(policies) if policies is not None else None):
            rows.append({"policy": r["policy"], "size": size, "hit_ratio": r["hit_ratio"], "ops_per_s": r["ops_per_s"]})
    return _pd().DataFrame(rows, columns=["policy", "size", "hit_ratio", "ops_per_s"])
