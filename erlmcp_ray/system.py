"""Lifecycle: ``start``, ``connect``, ``shutdown`` and the ``MemorySystem`` handle.

``start`` creates, in one Ray namespace, the coordinator and for every domain
``shards × copies`` shard actors. The copies of one shard share a detached
placement group whose bundles are spread over nodes (STRICT_SPREAD when the
cluster has at least as many alive nodes as copies, SPREAD otherwise), so losing
a node loses at most one copy of each shard. Beside them runs the supervisor
(``actors/supervisor.py``): it migrates domains that set no backend, and takes checkpoints.

The layout (``core.layout``: what the selector chose) is written to Ray's KV store before any
actor starts, from the durable store's copy when there is one, so a full restart brings a
domain back on the backend it had been moved to.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from typing import Any

import psutil
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from erlmcp_ray import _ray
from erlmcp_ray.actors.coordinator import CoordinatorActor
from erlmcp_ray.actors.options import (
    COORDINATOR,
    SHARD_BUNDLE,
    SUPERVISOR,
    actor_class,
    coordinator_options,
    owner_name,
    shard_name,
    shard_options,
    shard_settings,
    supervisor_options,
)
from erlmcp_ray.actors.shard import ShardActor
from erlmcp_ray.actors.supervisor import SupervisorActor, history_key
from erlmcp_ray.client import MemoryClient, connect_client, release_shared
from erlmcp_ray.client._direct_transport import close_shared_pool
from erlmcp_ray.config import Backend, DurableKind, DurableMode, MemoryConfig
from erlmcp_ray.core.layout import LAYOUT_BLOB, Layout, layout_key
from erlmcp_ray.direct import secret_key
from erlmcp_ray.errors import ConfigError, InvalidValueError, UnavailableError
from erlmcp_ray.storage import open_store

__all__ = ["MemorySystem", "connect", "shutdown", "start"]

log = logging.getLogger(__name__)
_START_TIMEOUT_S = 120.0


class MemorySystem:
    """A running memory system in ``namespace``."""

    def __init__(self, namespace: str, config: MemoryConfig) -> None:
        self.namespace = namespace
        self.config = config
        #: ``erlmcp_ray.telemetry.Telemetry`` on the ``meter_provider`` given to ``start`` (None: none given)
        self.telemetry: Any = None
        self._telemetry_client: MemoryClient | None = None

    def _observe(self, meter_provider: Any) -> None:
        from erlmcp_ray.telemetry import Telemetry

        self._telemetry_client = self.client()
        self.telemetry = Telemetry(self._telemetry_client, meter_provider)

    def client(self) -> MemoryClient:
        """A new client (its own caches and threads)."""
        return connect(self.namespace)

    def shutdown(self, *, purge: bool = False) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
            self._telemetry_client.close()  # type: ignore[union-attr]
            self.telemetry = None
        shutdown(self.namespace, purge=purge)

    def __repr__(self) -> str:
        return f"MemorySystem(namespace={self.namespace!r}, domains={list(self.config.domains)})"


def use_ray_token_if_present() -> bool:
    """Before attaching to an existing cluster: Ray >= 2.60 starts clusters with token
    authentication when the starting machine holds a token, but a process attaching to one
    presents the token only with ``RAY_AUTH_MODE=token``. Set that when it is unset and a token is
    there (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); a cluster without
    authentication accepts such a process too. Whether the token will be presented."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray read its config when imported: make this process see the mode now (as ray start does)
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # a Ray without it reads the variable at init
            pass
        return True
    return False


def attach_ray(address: str, namespace: str, *, logging_level: int = logging.WARNING) -> None:
    """Attach this process to the running Ray cluster at ``address`` (presenting the Ray token
    when one is there, see ``use_ray_token_if_present``)."""
    if address != "local":
        use_ray_token_if_present()
    ray.init(address=address, namespace=namespace, logging_level=logging_level, log_to_driver=False)


def _ensure_ray(namespace: str, address: str | None) -> None:
    if ray.is_initialized():
        return
    # address=None means a Ray of our own on this machine ("local"), never
    # whatever cluster happens to be reachable.
    if address not in (None, "local"):
        use_ray_token_if_present()
    ray.init(address="local" if address is None else address, namespace=namespace,
             include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def headroom_below_ray_oom(max_bytes: int, node_memory: int, ray_threshold: float) -> bool:
    """True when our pressure actions (which start at 90 % of ``max_bytes``) act before Ray's
    memory monitor (which kills the newest worker past ``ray_threshold`` of the node's memory)."""
    return 0.90 * max_bytes < ray_threshold * node_memory


def _check_ray_oom_headroom(cfg: MemoryConfig) -> None:
    threshold = float(os.environ.get("RAY_memory_usage_threshold", "0.95"))
    total = psutil.virtual_memory().total
    if not headroom_below_ray_oom(cfg.limits.max_bytes, total, threshold):
        log.warning("limits.max_bytes (%d) is so close to this node's memory (%d) that Ray's OOM killer "
                    "(at %.0f %%) may act before erlmcp_ray's pressure levels do; lower limits.max_bytes",
                    cfg.limits.max_bytes, total, threshold * 100)


def start(config: Any = None, *, namespace: str = "erlmcp", address: str | None = None,
          meter_provider: Any = None) -> MemorySystem:
    """Start the memory system (or return the one running in ``namespace``). With an OpenTelemetry
    ``meter_provider``, the system's instruments report to it (``MemorySystem.telemetry``, a
    ``Telemetry`` on a client of its own); without, metrics cost nothing."""
    if meter_provider is not None and not hasattr(meter_provider, "get_meter"):
        raise InvalidValueError(f"an OpenTelemetry MeterProvider is needed, got "
                                f"{type(meter_provider).__name__}", where="meter_provider")
    system = _start(config, namespace, address)
    if meter_provider is not None:
        system._observe(meter_provider)
    return system


def _start(config: Any, namespace: str, address: str | None) -> MemorySystem:
    cfg = MemoryConfig.load(config)
    _ensure_ray(namespace, address)
    _check_ray_oom_headroom(cfg)
    try:
        coordinator = _ray.get_actor(COORDINATOR, namespace)
    except UnavailableError:
        coordinator = None
    if coordinator is not None:
        running = MemoryConfig.load(_ray.get(coordinator.get_config.remote(), timeout=30, what="coordinator"))
        if config is not None and running != cfg:
            raise ConfigError(f"a memory system with a different configuration is running in namespace "
                              f"{namespace!r}; shut it down first or start with config=None to join it")
        return MemorySystem(namespace, running)
    layout = Layout()
    if cfg.durable.kind is not DurableKind.NONE and (
            cfg.auto_domains() or any(cfg.durable_mode_for(d) is not DurableMode.OFF for d in cfg.domains)):
        # Reachable and writable now, or a clear error naming it (not shard actors failing later).
        store = open_store(cfg.durable, namespace)
        try:
            # What the persistence selector chose before a full restart: a domain it moved to disk
            # comes back on disk, from its stored data.
            layout = Layout.decode(store.get_blob(LAYOUT_BLOB)).for_config(cfg)
        finally:
            store.close()
    _ray.kv_put(layout_key(namespace), layout.encode())  # before any actor reads it
    # The direct data plane's secret: new for every start (a client of an earlier system cannot
    # reach this one's copies); in the GCS, so only processes admitted to the Ray cluster read it.
    _ray.kv_put(secret_key(namespace), secrets.token_bytes(32))
    _create(cfg, layout, namespace)
    return MemorySystem(namespace, cfg)


def _create(cfg: MemoryConfig, layout: Layout, namespace: str) -> None:
    # Ray warns that a restartable detached actor in a placement group dies with
    # the group. That is what we want: the group is removed only by shutdown().
    ray_actor_log = logging.getLogger("ray.actor")
    level = ray_actor_log.level
    ray_actor_log.setLevel(logging.ERROR)
    try:
        _create_actors(cfg, layout, namespace)
    finally:
        ray_actor_log.setLevel(level)


def _create_actors(user_cfg: MemoryConfig, layout: Layout, namespace: str) -> None:
    # A fresh id per start(): the coordinator keeps its client registry under it in Ray's KV
    # store, so a restarted coordinator finds it and a later start() never does.
    system_id = uuid.uuid4().hex
    coordinator = actor_class(CoordinatorActor, coordinator_options(namespace)).remote(
        user_cfg.to_dict(), namespace, system_id=system_id)
    supervisor = actor_class(SupervisorActor, supervisor_options(namespace)).remote(user_cfg.to_dict(), namespace)
    alive = len(_ray.alive_nodes())
    pings = [coordinator.ping.remote(), supervisor.ping.remote()]
    cfg = layout.config(user_cfg)
    for domain in cfg.domains:
        copies = cfg.replication_factor_for(domain)
        for shard in range(cfg.domain(domain).shards):
            strategy = None
            if copies > 1:
                pg = placement_group([dict(SHARD_BUNDLE) for _ in range(copies)],
                                     strategy="STRICT_SPREAD" if alive >= copies else "SPREAD",
                                     name=_pg_name(namespace, domain, shard), lifetime="detached")
                _ray.get(pg.ready(), timeout=_START_TIMEOUT_S, what=f"placement group for {domain}/{shard}")
            for slot in range(copies):
                if copies > 1:
                    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=slot)
                opts = shard_options(namespace, domain, shard, slot, strategy)
                actor = actor_class(ShardActor, opts).remote(
                    domain, shard, slot, copies, namespace, 1, shard_settings(cfg, domain))
                pings.append(actor.ping.remote())
    _ray.get(pings, timeout=_START_TIMEOUT_S, what="starting the memory system")


def _pg_name(namespace: str, domain: str, shard: int) -> str:
    return f"erlmcp:{namespace}:pg:{domain}:{shard}"


def connect(namespace: str = "erlmcp", *, address: str | None = None, poll_hook: Any = None) -> MemoryClient:
    """A client of the system running in ``namespace`` (works in drivers, tasks and actors).

    ``poll_hook`` is the client's fault-injection seam (see ``MemoryClient``); tests only.
    """
    if not ray.is_initialized():
        if address is None:
            raise UnavailableError("Ray is not initialised in this process: call erlmcp_ray.start(), "
                                   "ray.init(address=...), or pass address= to connect()")
        attach_ray(address, namespace)
    return connect_client(namespace, poll_hook=poll_hook)


def shutdown(namespace: str = "erlmcp", *, purge: bool = False) -> None:
    """Stop the system actors of ``namespace``. Data held only in memory is gone; what durable
    domains wrote to the durable tier stays for the next ``start()``, unless ``purge``. Idempotent."""
    if not ray.is_initialized():
        return
    release_shared(namespace)
    close_shared_pool(namespace)  # this process's direct connections to the copies about to stop
    try:
        coordinator = _ray.get_actor(COORDINATOR, namespace)
        user_cfg = MemoryConfig.load(_ray.get(coordinator.get_config.remote(), timeout=30, what="coordinator"))
        layout = Layout.decode(_ray.get(coordinator.get_layout.remote(), timeout=30, what="coordinator"))
    except Exception:  # noqa: BLE001 - nothing (coherent) running: nothing to stop
        return
    # Stopped first: no migration may start (or create copies) while the rest goes away.
    _ray.kill_named(SUPERVISOR, namespace)
    cfg = layout.config(user_cfg)
    try:  # the client registry and subscriptions it kept must not outlive this system
        _ray.get(coordinator.forget_state.remote(), timeout=30, what="coordinator forget_state")
    except Exception as exc:  # noqa: BLE001 - its KV key is per start(): a later start never reads it
        log.warning("the coordinator could not forget its state: %s", exc)
    _flush_durable_owners(cfg, namespace)
    for domain in cfg.domains:
        # A migration cut short may have left more copies than the layout says: stop those too.
        copies = max(cfg.replication_factor_for(domain),
                     user_cfg.with_backends({domain: Backend.REPLICATED}).replication_factor_for(domain))
        for shard in range(cfg.domain(domain).shards):
            for slot in range(copies):
                _ray.kill_named(shard_name(domain, shard, slot), namespace)
            if copies > 1:
                try:
                    remove_placement_group(ray.util.get_placement_group(_pg_name(namespace, domain, shard)))
                except Exception:  # noqa: BLE001
                    pass
    _ray.kill_named(COORDINATOR, namespace)
    _ray.kv_del(history_key(namespace))
    _ray.kv_del(secret_key(namespace))
    if purge and cfg.durable.kind is not DurableKind.NONE:
        store = open_store(cfg.durable, namespace)
        store.purge()
        store.close()
    # Named actors are released asynchronously; wait so a following start() can reuse the names.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ray.get_actor(COORDINATOR, namespace=namespace)
            time.sleep(0.05)
        except ValueError:
            break


def _flush_durable_owners(cfg: MemoryConfig, namespace: str) -> None:
    """A clean shutdown loses nothing of write_behind domains: each owner flushes first."""
    refs = []
    for domain in cfg.domains:
        if cfg.durable_mode_for(domain) is DurableMode.OFF:
            continue
        for shard in range(cfg.domain(domain).shards):
            try:
                refs.append(ray.get_actor(owner_name(namespace, domain, shard), namespace=namespace)
                            .flush_durable.remote())
            except ValueError:
                pass  # not running: nothing of it to flush
    if refs:
        try:
            _ray.get(refs, timeout=60, what="flushing durable domains before shutdown")
        except Exception as exc:  # noqa: BLE001 - shut down anyway; say what may be lost
            log.warning("a durable flush before shutdown failed (write_behind changes of the last "
                        "flush interval may be lost): %s", exc)
