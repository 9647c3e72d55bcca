"""``verify_state`` and ``sync`` (spec ``erlmcp_memory_recovery:verify_state/0`` and
``erlmcp_distributed_memory:sync(all)``), as the supervisor runs them over every shard.

verify_state, per shard: the digest of every copy (equal = in sync), the version-vector contexts
(a replica never knows a counter its owner does not: each replica context <= the owner's,
pointwise; a copy that does not answer is listed as ``down``), and for a durable domain the stored rows (every CRC checked by reading them back,
and the stored image's digest beside the owner's). ``ok`` when every copy of every shard agrees,
the contexts are consistent and every stored row reads back; a shard whose store still has
changes pending says so (``store_pending``) and is not counted against ``ok``.

sync: every owner runs a replication round now (and a durable flush), then it waits until each
replica acknowledged everything the owner held when asked, and the coordinator has it.
"""

from __future__ import annotations

import time
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors.options import owner_name, owner_slot, shard_name
from erlmcp_ray.config import DurableMode, MemoryConfig
from erlmcp_ray.core.shard_state import ShardState
from erlmcp_ray.errors import CorruptDataError, OperationTimeoutError, UnavailableError, UnknownDomainError
from erlmcp_ray.storage import open_store

__all__ = ["sync_domains", "verify"]

_CALL_S = 60.0


def _copy_facts(cfg: MemoryConfig, namespace: str, domain: str, shard: int, slot: int) -> tuple | None:
    """``(digest, stats)`` of one copy, or None when it does not answer (down, or Ray restarting it)."""
    try:
        handle = _ray.get_actor(shard_name(domain, shard, slot), namespace)
        return tuple(_ray.get([handle.digest.remote(), handle.stats.remote()], timeout=_CALL_S,
                              what=f"{domain}/{shard} slot {slot}"))
    except UnavailableError:
        return None


def verify(cfg: MemoryConfig, namespace: str) -> dict[str, Any]:
    store = None
    shards = []
    try:
        for domain in cfg.domains:
            durable = cfg.durable_mode_for(domain) is not DurableMode.OFF
            if durable and store is None:
                store = open_store(cfg.durable, namespace)
            for shard in range(cfg.domain(domain).shards):
                # The owner first (after a failover it is not slot 0), then the replicas.
                first = owner_slot(namespace, domain, shard)
                slots = sorted(range(cfg.replication_factor_for(domain)), key=lambda s: s != first)
                copies = [_copy_facts(cfg, namespace, domain, shard, slot) for slot in slots]
                down = [slot for slot, c in zip(slots, copies) if c is None]
                up = [c for c in copies if c is not None]
                owner_ctx = {int(k): v for k, v in copies[0][1]["context"].items()} if copies[0] else {}
                consistent = copies[0] is not None and all(
                    v <= owner_ctx.get(int(k), 0) for _, st in up[1:] for k, v in st["context"].items())
                digests = [None if c is None else c[0] for c in copies]
                entry = {"domain": domain, "shard": shard, "digests": digests,
                         "in_sync": not down and len(set(digests)) == 1, "down": down,
                         "vector_clocks_consistent": consistent, "epochs": [st["epoch"] for _, st in up],
                         "nodes": [st["node_id"] for _, st in up]}
                if durable and copies[0] is not None:
                    entry.update(_check_store(store, domain, shard, digests[0], copies[0][1]))
                shards.append(entry)
    finally:
        if store is not None:
            store.close()
    ok = all(s["in_sync"] and s["vector_clocks_consistent"] and s.get("store_checksums_valid", True)
             for s in shards)
    return {"ok": ok, "shards": shards, "checked_at": time.time(),
            "summary": {"shards": len(shards), "in_sync": sum(s["in_sync"] for s in shards),
                        "store_checked": sum("store_checksums_valid" in s for s in shards)}}


def _check_store(store: Any, domain: str, shard: int, owner_digest: str, owner_stats: dict) -> dict[str, Any]:
    try:
        image = store.load_shard(domain, shard)  # every row's CRC is checked here
    except CorruptDataError as exc:
        return {"store_checksums_valid": False, "store_error": str(exc)}
    state = ShardState(0)
    state.merge(image.records.items())
    return {"store_checksums_valid": True, "store_rows": len(image.records),
            "store_matches_owner": state.digest() == owner_digest,
            "store_pending": owner_stats.get("durable_pending", 0)}


def sync_domains(cfg: MemoryConfig, namespace: str, domains: list[str] | None, timeout_s: float) -> dict[str, Any]:
    names = list(cfg.domains) if domains is None else domains
    for name in names:
        if name not in cfg.domains:
            raise UnknownDomainError(name, known=tuple(cfg.domains))
    started = time.monotonic()
    shards = [(d, s) for d in names for s in range(cfg.domain(d).shards)]
    # Per shard: the owner's handle and the op-log position it must reach (None: ask it again). An
    # owner that is unavailable (Ray restarting it, a failover under way: the topology then names
    # another) is looked up again and asked afresh, until the timeout.
    state: dict[tuple[str, int], list] = {shard: [None, None] for shard in shards}
    problems: dict[tuple[str, int], str] = {}
    while state:
        for shard, entry in list(state.items()):
            try:
                if entry[0] is None:
                    entry[0] = _ray.get_actor(owner_name(namespace, *shard), namespace)
                    entry[1] = _ray.get(entry[0].sync_now.remote(), timeout=_CALL_S, what=f"sync of {shard}")
                p = _ray.get(entry[0].progress.remote(), timeout=_CALL_S, what=f"sync progress of {shard}")
                if p.replicated >= entry[1] and p.published >= entry[1]:
                    del state[shard]
                    problems.pop(shard, None)
            except UnavailableError as exc:
                entry[0] = entry[1] = None
                problems[shard] = str(exc)
        if state and time.monotonic() - started > timeout_s:
            left = ", ".join(f"{d}/{s}" + (f" ({problems[(d, s)]})" if (d, s) in problems else "") for d, s in state)
            raise OperationTimeoutError(f"sync: {left} not replicated within {timeout_s} s")
        if state:
            time.sleep(0.02 if not problems else 0.1)
    return {"domains": names, "shards": len(shards), "seconds": time.monotonic() - started}
