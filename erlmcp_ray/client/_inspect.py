"""The inspection calls of ``MemoryClient``: sync status, domain stats, cluster memory, GC, compaction.

Each asks every shard copy concerned (one call each, in parallel) and sums the answers.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._settings import DomainRoute
from erlmcp_ray.client._transport import SUPERVISOR, Copy, Transport
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.pressure import level_for

__all__ = ["Inspector"]


class Inspector:
    def __init__(self, *, transport: Transport, routes: dict[str, DomainRoute], config: MemoryConfig,
                 domain: Callable[[Any], DomainRoute], check_open: Callable[[], None], timeout_s: float) -> None:
        self._transport, self._routes, self.config = transport, routes, config
        self._domain, self._check_open, self._timeout = domain, check_open, timeout_s

    def _gather(self, targets: list[Copy], method: str, timeout: float | None = None, args: tuple = ()) -> list[Any]:
        self._check_open()
        pending = [self._transport.submit(t, method, *args) for t in targets]
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        return [self._transport.result(p, max(0.001, deadline - time.monotonic()), method) for p in pending]

    def sync_status(self) -> dict[str, Any]:
        """Per domain and shard: each copy's seq, staleness and sync counters."""
        out: dict[str, Any] = {}
        for d in self._routes.values():
            shards = []
            for shard in range(d.shards):
                copies = self._gather([Copy(d.name, shard, slot) for slot in range(d.copies)], "stats")
                owner = copies.pop(d.owner(shard))
                syncs = owner["syncs"]
                shards.append({
                    "shard": shard, "seq": owner["seq"], "replicated_seq": owner["replicated_seq"],
                    "published_seq": owner["published_seq"], "syncs": syncs,
                    # the spec's sync stats, by its names
                    "syncs_completed": syncs["completed"], "syncs_failed": syncs["failed"],
                    "bytes_synced": syncs["bytes"], "last_sync_time": syncs["last_sync_time"],
                    "replicas": [{"slot": c["slot"], "seq_lag": owner["seq"] - (owner["replicas"].get(c["slot"], {})
                                  .get("acked_seq") or 0), "staleness_ms": c["staleness_ms"],
                                  "rtt_ms": owner["replicas"].get(c["slot"], {}).get("rtt_ms", 0.0),
                                  "node_id": c["node_id"]} for c in copies],
                })
            out[d.name] = shards
        return out

    def get_domain_stats(self, domain: str) -> dict[str, Any]:
        """Entries, bytes, limit, shards and copies of ``domain`` (owner copies are counted once)."""
        d = self._domain(domain)
        owners = self._gather([Copy(d.name, s, d.owner(s)) for s in range(d.shards)], "stats")
        cfg = self.config.domain(domain)
        return {
            "domain": domain, "entries": sum(o["entries"] for o in owners),
            "bytes": sum(o["bytes"] for o in owners), "limit": cfg.max_bytes,
            "tombstones": sum(o["tombstones"] for o in owners), "shards": d.shards, "replicas": d.copies - 1,
            "consistency": d.consistency.value, "conflicts_resolved": sum(o["conflicts_resolved"] for o in owners),
            "eviction": cfg.eviction.value, "evictions": sum(o["evictions"] for o in owners),
            "refused_writes": sum(o["refused_writes"] for o in owners),
            # the domain is as pressed as its most pressed shard
            "pressure": _worst([(o["pressure"] or {}).get("level", "low") for o in owners]),
            **self._persistence(domain),
        }

    def _persistence(self, domain: str) -> dict[str, Any]:
        """The domain's backend as running, who chose it, and the persistence selector's migrations."""
        report = self._transport.call(SUPERVISOR, "strategies", timeout=self._timeout)["domains"][domain]
        return {"backend": report["backend"], "backend_selected_by": report["selected_by"],
                "durable": report["durable"], "migrations": report["migrations"]}

    def keys(self, domain: str, pattern: str = "*", tag: str | None = None) -> list[str]:
        """The live keys of ``domain`` matching the glob ``pattern`` (or carrying ``tag``), as its
        shard owners hold them, sorted."""
        d = self._domain(domain)
        answers = self._gather([Copy(d.name, s, d.owner(s)) for s in range(d.shards)], "find",
                               args=(tag, None if tag is not None else pattern))
        return sorted(k for keys in answers for k in keys)

    def l2_entries(self, timeout: float) -> int:
        """Entries the shards hold (the L2 tier), each shard counted once (at its owner); every owner
        must answer within ``timeout`` s in all."""
        owners = [Copy(d.name, s, d.owner(s)) for d in self._routes.values() for s in range(d.shards)]
        return sum(st["entries"] for st in self._gather(owners, "stats", timeout))

    def _all_copies(self, method: str) -> list[dict]:
        return self._gather([Copy(d.name, shard, slot) for d in self._routes.values()
                             for shard in range(d.shards) for slot in range(d.copies)], method)

    def get_cluster_memory(self) -> dict[str, Any]:
        """The spec's cluster memory: nodes, total bytes, and per node the copies it holds and the
        memory of our actors there (RSS), against the per-node limits and their pressure level.

        Each node also carries the spec's memory stats: ``total`` (the node's RAM), ``processes``
        (resident memory of this system's shard processes there), ``ets`` (the accounted bytes of the
        shard data they hold: what ETS tables hold in erlmcp), ``system`` (the node's memory in use by
        everything else: the OS, Ray, other processes) and ``used_percent`` (all memory in use over
        ``total``, in %)."""
        limits = self.config.limits

        def blank(node_id: str, address: Any) -> dict[str, Any]:
            return {"node_id": node_id, "address": address, "memory_total": 0, "processes": 0, "actors": 0,
                    "bytes": 0, "entries": 0, "copies": [], "memory_used": 0}

        per_node = {n["NodeID"]: blank(n["NodeID"], n.get("NodeManagerAddress"))
                    for n in self._transport.alive_nodes()}
        for m in self._all_copies("memory"):
            node = per_node.setdefault(m["node_id"], blank(m["node_id"], None))
            node["memory_total"] = m["node_memory_total"]
            node["memory_used"] = m.get("node_memory_used", 0)
            node["processes"] += m["rss"]
            node["actors"] += 1
            node["bytes"] += m["bytes"]
            node["entries"] += m["entries"]
            node["copies"].append((m["domain"], m["shard"], m["slot"], m["bytes"]))
        for node in per_node.values():
            total, used = node["memory_total"], node.pop("memory_used")
            node.update(total=total, ets=node["bytes"], system=max(0, used - node["processes"]),
                        used_percent=100.0 * used / total if total else 0.0)
            ratio = max(node["bytes"] / limits.max_bytes, node["entries"] / limits.max_entries)
            node.update(limit_bytes=limits.max_bytes, max_entries=limits.max_entries, used_ratio=ratio,
                        pressure=str(level_for(ratio)), warn=ratio >= limits.warn_percent)
        return {"nodes": len(per_node), "total_memory_bytes": len(per_node) * limits.max_bytes,
                "used_bytes": sum(n["bytes"] for n in per_node.values()),
                "node_data": sorted(per_node.values(), key=lambda n: n["node_id"])}

    def force_gc(self) -> dict[str, Any]:
        """Purge expired entries and collect garbage in every shard copy and in this client;
        returns what was freed."""
        results = self._all_copies("force_gc")
        return {"copies": len(results),
                "expired_purged": sum(r["expired_purged"] for r in results),
                "accounted_bytes_freed": sum(r["accounted_bytes_freed"] for r in results),
                "rss_bytes_freed": sum(r["rss_bytes_freed"] for r in results),
                "client_objects_collected": gc.collect()}

    def compact(self) -> dict[str, Any]:
        """Shrink every shard copy's structures (dicts, expiry heap, op-log); returns what was freed."""
        results = self._all_copies("compact")
        return {"copies": len(results),
                "expiry_items_dropped": sum(r["expiry_items_dropped"] for r in results),
                "log_ops_dropped": sum(r["log_ops_dropped"] for r in results),
                "rss_bytes_freed": sum(r["rss_bytes_freed"] for r in results)}


def _worst(levels: list[str]) -> str:
    order = ["low", "medium", "high", "critical"]
    return max(levels, key=order.index) if levels else "low"

