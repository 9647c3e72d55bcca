"""The one place that builds Ray actor options and names.

Every system actor is detached (it outlives the driver that started it), named
in the system's namespace, takes no CPU (memory actors are I/O-bound and must
not starve user tasks), and is restarted by Ray when its process dies — its
constructor then recovers state from its peers, since a restarted actor starts
empty.
"""

from __future__ import annotations

from typing import Any

import ray

from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.shard_copy import ShardSettings

__all__ = [
    "CONTROL",
    "COORDINATOR",
    "RAY_HEALTH_FOR_FAILOVER",
    "SUPERVISOR",
    "actor_class",
    "coordinator_options",
    "owner_name",
    "owner_slot",
    "shard_name",
    "shard_options",
    "shard_settings",
    "supervisor_options",
]

COORDINATOR = "erlmcp:coordinator"
SUPERVISOR = "erlmcp:supervisor"
#: Resources each shard copy reserves in its placement-group bundle. A bundle may
#: not be empty; a little "memory" fits every node, including a head with no CPUs.
SHARD_BUNDLE = {"memory": 1024 * 1024}
#: Ray's node health checks as the README recommends for failover (``_system_config`` of the head, or
#: ``RAY_<name>`` environment variables): Ray declares a dead node dead in ~1.5 s instead of ~14 s,
#: so it reschedules the lost copies that much sooner.
RAY_HEALTH_FOR_FAILOVER = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                           "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
#: A shard actor's second thread, for the supervisor's health checks: a long call on the main one
#: (a checkpoint of a large shard) must not look like a dead copy.
CONTROL = "control"


def shard_name(domain: str, shard: int, slot: int) -> str:
    return f"erlmcp:shard:{domain}:{shard}:{slot}"


def owner_slot(namespace: str, domain: str, shard: int) -> int:
    """The slot that owns ``domain``/``shard`` now (the supervisor's topology, in Ray's KV store)."""
    from erlmcp_ray import _ray
    from erlmcp_ray.core.layout import Layout, layout_key

    return Layout.decode(_ray.kv_get(layout_key(namespace))).owner(domain, shard)


def owner_name(namespace: str, domain: str, shard: int) -> str:
    return shard_name(domain, shard, owner_slot(namespace, domain, shard))


def shard_options(namespace: str, domain: str, shard: int, slot: int, scheduling_strategy: Any = None) -> dict:
    opts = {
        "name": shard_name(domain, shard, slot),
        "namespace": namespace,
        "lifetime": "detached",
        "num_cpus": 0,
        # One thread: calls from one client run in the order it sent them, which
        # write-behind batches rely on. Replication runs on a thread of its own.
        "max_concurrency": 1,
        "concurrency_groups": {CONTROL: 1},
        "max_restarts": -1,
        # Ray must not retry writes by itself: the client retries with the same
        # idempotency key, which the owner recognises.
        "max_task_retries": 0,
    }
    if scheduling_strategy is not None:
        opts["scheduling_strategy"] = scheduling_strategy
    return opts


def _system_actor(name: str, namespace: str, max_concurrency: int) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "num_cpus": 0,
        "max_concurrency": max_concurrency,
        "max_restarts": -1,
        "max_task_retries": 0,
    }


def coordinator_options(namespace: str) -> dict:
    return _system_actor(COORDINATOR, namespace, 1000)  # async actor: many long polls wait at once


def supervisor_options(namespace: str) -> dict:
    # Its threads run migrations, checkpoints and recoveries that take seconds; strategies(),
    # get_recovery_status() and an operator's auto_select() must still answer meanwhile.
    return _system_actor(SUPERVISOR, namespace, 4)


def shard_settings(config: MemoryConfig, domain: str) -> ShardSettings:
    """How the shard copies of ``domain`` behave under ``config`` (the running one: the persistence
    selector's choice applied)."""
    dcfg = config.domain(domain)
    staleness = dcfg.staleness_ms
    return ShardSettings(
        domain_config=dcfg.model_dump(mode="json"),
        # An evictable domain's shards share its max_bytes: each evicts past its part.
        max_bytes=dcfg.max_bytes // dcfg.shards,
        max_entries=None if dcfg.max_entries is None else max(1, dcfg.max_entries // dcfg.shards),
        staleness_ms=staleness,
        # Heartbeats keep a replica's staleness bound fresh; a quarter of the window
        # leaves room for a late one and the transit time.
        heartbeat_ms=min(250.0, max(10.0, staleness / 4)),
        sync_timeout_s=min(5.0, config.client.call_timeout_s),
        min_insync=dcfg.min_insync,
        lease_s=config.distributed_memory.failure_timeout_ms / 2000.0,
        durable_mode=config.durable_mode_for(domain).value,
        store=config.durable.model_dump(mode="json"),
        flush_s=config.durable.flush_ms / 1000.0,
        max_backlog=config.durable.max_backlog,
        direct=config.transport.kind.value == "direct",
        max_frame=config.transport.max_frame,
        tls=config.transport.tls(),
    )


def actor_class(cls: type, options: dict) -> Any:
    """``ray.remote(**options)(cls)``: actor classes stay undecorated elsewhere."""
    return ray.remote(**options)(cls)
