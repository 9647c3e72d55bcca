"""The supervisor actor (``erlmcp:supervisor``): the system's jobs that outlive any one request.

Today it does: the persistence selector at work (below); checkpoints (``_checkpoints.py``:
``client.recovery`` creates, lists, restores and deletes them through it, and every
``distributed_memory.checkpoint_interval`` it takes one and keeps the newest
``distributed_memory.checkpoint_retention``); the recovery API when asked (``_recovery.py``:
``trigger_recovery``, ``recover_domain``, ``recover_node``, ``get_recovery_status``); ``verify_state``
and ``sync`` (``_verify.py``); health checks of every shard copy and failover by promotion
(``_failover.py``), with the topology (which slot owns each shard, under which epoch) kept in the
layout.

Persistence selector: every ``persistence_selector.evaluation_interval`` (while ``auto_select`` is on) it measures each
domain whose backend the user did not set — bytes its owners hold, reads and writes its copies
served — and asks ``core.auto_select.AutoSelector`` which of them should move. A migration is
live, shard by shard, and each step keeps every acknowledged write and serves reads throughout:

- more copies (to ``replicated``): the new replicas are created (on other nodes than the shard's
  other copies where there are enough), the layout is written where restarted copies read it, each owner starts
  replicating to them (a snapshot first), and once they hold the shard the coordinator tells the
  clients, which then route strong writes and replica reads to them;
- a durable mode turned on (to ``disk``, or ``replicated`` with durability high): each owner writes
  through from its ``set_layout`` on, and its replication thread writes the rest of the shard to the
  durable store in chunks (calls are served between them); the migration returns once the store
  holds every shard; turned off: the owner flushes what was pending, then stops;
- fewer copies: the clients are told first; after a grace period (two of their poll intervals)
  the owners stop replicating and the extra replicas are stopped (a client that still reads one
  gets an answer no staler than its consistency allows, or falls back to the owner).

A domain whose backend is in the config is never touched. Every migration is logged and kept
(the last 100) for ``current_strategies`` and ``get_domain_stats``. One lock serialises migrations,
evaluations and checkpoints: a checkpoint never sees a domain half migrated.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors._alerts import Alerts
from erlmcp_ray.actors._checkpoints import Checkpoints
from erlmcp_ray.actors._failover import Failover
from erlmcp_ray.actors._recovery import RecoveryRunner
from erlmcp_ray.actors._verify import sync_domains, verify
from erlmcp_ray.actors.options import COORDINATOR, actor_class, shard_name, shard_options, shard_settings
from erlmcp_ray.actors.shard import ShardActor
from erlmcp_ray.config import Backend, DurableKind, MemoryConfig
from erlmcp_ray.core.auto_select import AutoSelector, DomainObservation, Migrate
from erlmcp_ray.core.checkpoint import Checkpoint
from erlmcp_ray.core.layout import LAYOUT_BLOB, Layout, layout_key
from erlmcp_ray.errors import ConfigError, InvalidValueError, UnknownDomainError
from erlmcp_ray.storage import open_store

log = logging.getLogger(__name__)

__all__ = ["SupervisorActor", "history_key"]

_HISTORY = 100
_CALL_S = 60.0
#: how long owners may take to write their shards to the durable store (SQLite: ~100k records/s)
_STORE_S = 600.0


def history_key(namespace: str) -> bytes:
    return f"erlmcp:{namespace}:selector_history".encode()


class SupervisorActor:
    def __init__(self, config: dict, namespace: str) -> None:
        self._cfg = MemoryConfig.load(config)
        self.namespace = namespace
        self._lock = threading.Lock()  # one evaluation or migration at a time
        # start() wrote the layout before creating this actor; a restarted selector reads it too.
        self._layout = Layout.decode(_ray.kv_get(layout_key(namespace))).for_config(self._cfg)
        running = self._layout.config(self._cfg)
        auto = self._cfg.auto_domains()
        self._auto = AutoSelector({d: running.backend_for(d) for d in auto},
                                  {d: self._cfg.domain(d).durability_requirement for d in auto},
                                  durable_tier=self._cfg.durable.kind is not DurableKind.NONE)
        self._enabled = self._cfg.auto_select
        raw = _ray.kv_get(history_key(namespace))
        self._history: list[dict] = json.loads(raw) if raw else []
        self._last_evaluation: float | None = None
        self._migrating: dict[str, str] = {}  # domain -> the backend it is being moved to
        self._report_lock = threading.Lock()  # the current backends and the history change together
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._checkpoints = Checkpoints(self._cfg, namespace, self._running)
        self._recovery = RecoveryRunner(self._cfg, namespace, self._running, self._checkpoints)
        threading.Thread(target=self._loop, name="erlmcp-selector", daemon=True).start()
        if _ray.was_restarted():
            # Until _reconcile has checked them, the layout's domains are reported as moving there.
            self._migrating.update({d: b.value for d, b in self._layout.selected.items()})
            threading.Thread(target=self._reconcile, name="erlmcp-reconcile", daemon=True).start()
        self._layout_lock = threading.Lock()  # the layout is read-modified-written by migrations and failovers
        self._failover = Failover(self._cfg, namespace, layout=lambda: self._layout, running=self._running,
                                  set_owner=self._set_owner, restarted=_ray.was_restarted())
        threading.Thread(target=self._failover.run, args=(self._stop,), name="erlmcp-health", daemon=True).start()
        self._alerts = Alerts(self._cfg, namespace, self._running)
        if self._alerts.engine.rules:  # the memory check's node limits come with its rules
            threading.Thread(target=self._alerts.run, args=(self._stop,), name="erlmcp-alerts", daemon=True).start()
        if self._cfg.distributed_memory.checkpoint_interval and self._checkpoints.enabled:
            threading.Thread(target=self._checkpoint_loop, name="erlmcp-checkpoints", daemon=True).start()

    def _running(self) -> MemoryConfig:
        """The config as running: the user's, with the persistence selector's choices applied."""
        return self._layout.config(self._cfg)

    # ------------------------------------------------------------ checkpoints
    def create_checkpoint(self) -> Checkpoint:
        with self._lock:
            cp = self._checkpoints.create()
        self._checkpoints.retain(self._cfg.distributed_memory.checkpoint_retention)
        return cp

    def list_checkpoints(self) -> list[Checkpoint]:
        return self._checkpoints.list()

    def restore_checkpoint(self, checkpoint_id: str) -> dict:
        with self._lock:
            return self._checkpoints.restore(checkpoint_id)

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        with self._lock:
            self._checkpoints.delete(checkpoint_id)

    # ------------------------------------------------------------ recovery
    def trigger_recovery(self, mode: str, domains: list[str] | None = None, node_id: str | None = None) -> dict:
        with self._lock:
            return self._recovery.run(mode, domains, node_id)

    def get_recovery_status(self) -> dict:
        return self._recovery.status.to_dict()

    # ------------------------------------------------------------ failover
    def failover_status(self) -> dict:
        """Health checks and failovers: the topology's moved owners, recent promotions, silent copies."""
        return self._failover.report()

    def alerts(self, since: int = 0) -> dict:
        """Alert events after ``since``, what fires now, counts (see ``actors/_alerts.py``)."""
        return self._alerts.since(since)

    def heal_partition(self) -> dict:
        """Merge every stash (eventual writes taken by copies cut off from their owner) into its
        owner: ``{nodes, merged, conflicts_resolved, ...}`` (see ``Failover.heal``)."""
        return self._failover.heal()

    def _set_owner(self, domain: str, shard: int, slot: int, epoch: int) -> None:
        """A promotion: publish the new topology (clients re-route; restarted copies read it)."""
        with self._layout_lock:
            self._write_layout(self._layout.with_owner(domain, shard, slot, epoch), store_required=False)
        try:
            self._announce()
        except Exception as exc:  # noqa: BLE001 - clients also look the owner up when the old one refuses
            log.warning("could not tell the coordinator about the new owner of %s/%s: %s", domain, shard, exc)

    # ------------------------------------------------------------ verification, anti-entropy
    def verify_state(self) -> dict:
        return verify(self._running(), self.namespace)

    def sync(self, domains: list[str] | None, timeout_s: float) -> dict:
        return sync_domains(self._running(), self.namespace, domains, timeout_s)

    def _checkpoint_loop(self) -> None:
        interval_s = self._cfg.distributed_memory.checkpoint_interval / 1000.0
        while not self._stop.wait(timeout=interval_s):
            try:
                self.create_checkpoint()
            except Exception:
                log.exception("periodic checkpoint failed (next one in %.0f s)", interval_s)

    # ------------------------------------------------------------ operator calls
    def set_enabled(self, enabled: bool) -> bool:
        """Turn periodic evaluation on or off (the spec's ``auto_select(Enabled)``); the old value."""
        old, self._enabled = self._enabled, bool(enabled)
        self._wake.set()
        return old

    def strategies(self) -> dict:
        """Every domain's backend, whether the selector manages it, and what it last found. A domain
        being migrated shows the backend it is leaving until the migration finished (and
        ``migrating_to``): the new one is reported only once it holds."""
        with self._report_lock:
            current, history = dict(self._auto.current), list(self._history)
        done = self._cfg.with_backends(current)
        domains = {}
        for name in self._cfg.domains:
            auto = self._cfg.domain(name).backend is None
            domains[name] = {
                "backend": done.backend_for(name).value,
                "selected_by": "persistence_selector" if auto else "config",
                "copies": done.replication_factor_for(name),
                "durable": done.durable_mode_for(name).value,
                "migrating_to": self._migrating.get(name),
                "durability_requirement": self._cfg.domain(name).durability_requirement.value if auto else None,
                "last_evaluation": _jsonable(self._auto.last_evaluation(name)) if auto else None,
                "migrations": [m for m in history if m["domain"] == name],
            }
        return {"auto_select": self._enabled, "generation": self._layout.generation,
                "evaluation_interval_ms": self._cfg.persistence_selector.evaluation_interval,
                "last_evaluation_at": self._last_evaluation, "domains": domains}

    def evaluate(self) -> list[dict]:
        """Evaluate now (whether or not auto_select is on) and carry out what it calls for."""
        with self._lock:
            return self._evaluate()

    def migrate(self, domain: str, backend: str) -> dict:
        """Move ``domain`` to ``backend`` now (an operator's decision; the domain must set no backend)."""
        if domain not in self._cfg.domains:
            raise UnknownDomainError(domain, known=tuple(self._cfg.domains))
        try:
            target = Backend(backend)
        except ValueError:
            raise InvalidValueError(f"backend must be one of memory, disk, replicated; got {backend!r}",
                                    where="backend") from None
        if self._cfg.domain(domain).backend is not None:
            raise ConfigError(f"domain {domain!r} sets backend {self._cfg.domain(domain).backend.value!r} in its "
                              f"config: the persistence selector never migrates it")
        if target is Backend.DISK and self._cfg.durable.kind is DurableKind.NONE:
            raise ConfigError("backend disk needs a durable tier, but durable.kind is 'none'")
        with self._lock:
            current = self._auto.current[domain]
            if current is target:
                return {"domain": domain, "from": current.value, "to": target.value, "changed": False}
            return self._migrate(Migrate(domain, current, target, "asked by an operator", -1.0, -1))

    def ping(self) -> int:
        return self._layout.generation

    # ------------------------------------------------------------ evaluation
    def _loop(self) -> None:
        interval_s = self._cfg.persistence_selector.evaluation_interval / 1000.0
        while not self._stop.is_set():
            self._wake.wait(timeout=interval_s)
            if self._wake.is_set():
                self._wake.clear()  # woken by set_enabled: start a fresh interval
                continue
            if not self._enabled or not self._auto.current:
                continue
            try:
                with self._lock:
                    self._evaluate()
            except Exception:
                log.exception("persistence selector: evaluation failed (next one in %.0f s)", interval_s)

    def _evaluate(self) -> list[dict]:
        self._last_evaluation = time.time()
        if not self._auto.current:
            return []
        alive = len(_ray.alive_nodes())
        topology = "multi_node" if alive > 1 else "single_node"
        decisions = self._auto.evaluate([self._observe(d) for d in self._auto.current], topology)
        return [self._migrate(m) for m in decisions]

    def _observe(self, domain: str) -> DomainObservation:
        running = self._running()
        copies, shards = running.replication_factor_for(domain), running.domain(domain).shards
        refs = [_ray.get_actor(shard_name(domain, shard, slot), self.namespace).stats.remote()
                for shard in range(shards) for slot in range(copies)]
        stats = _ray.get(refs, timeout=_CALL_S, what=f"stats of {domain}")
        owners = [s for s in stats if s["role"] == "owner"]
        return DomainObservation(domain, sum(s["bytes"] for s in owners), sum(s["reads"] for s in stats),
                                 sum(s["writes"] for s in owners))

    # ------------------------------------------------------------ migration
    def _migrate(self, m: Migrate) -> dict:
        self._migrating[m.domain] = m.target.value
        try:
            return self._migrate_now(m)
        finally:
            self._migrating.pop(m.domain, None)

    def _migrate_now(self, m: Migrate) -> dict:
        started = time.time()
        layout = self._layout.with_choice(self._cfg, m.domain, m.target)
        record = {"domain": m.domain, "from": m.current.value, "to": m.target.value, "reason": m.reason,
                  "read_ratio": m.read_ratio if m.read_ratio >= 0 else None,
                  "data_bytes": m.data_bytes if m.data_bytes >= 0 else None, "started_at": started,
                  "changed": True}
        log.warning("persistence selector: migrating %s from %s to %s (%s)", m.domain, m.current.value,
                    m.target.value, m.reason)
        try:
            self._converge(m.domain, layout, record)
        except Exception as exc:
            record.update(changed=False, error=f"{type(exc).__name__}: {exc}", seconds=time.time() - started)
            log.error("persistence selector: migrating %s to %s failed: %s", m.domain, m.target.value, exc)
            self._remember(record)
            raise
        record["seconds"] = time.time() - started
        log.warning("persistence selector: %s is on %s now (%.1f s)", m.domain, m.target.value, record["seconds"])
        with self._report_lock:  # a report shows the new backend and its record together
            self._remember(record)
            self._auto.migrated(m.domain, m.target)
        return record

    def _converge(self, domain: str, layout: Layout, record: dict) -> None:
        """Bring every shard of ``domain`` to the shape ``layout`` gives it, from whatever shape its
        owners are in now (a migration; or, after this actor restarted mid-way, the rest of one)."""
        after = layout.config(self._cfg)
        new_copies, mode = after.replication_factor_for(domain), after.durable_mode_for(domain).value
        shards = range(self._cfg.domain(domain).shards)
        moved = [s for s in shards if self._layout.owner(domain, s) >= new_copies]
        if moved:
            raise ConfigError(f"{domain}: shards {moved} are owned by a promoted replica (slot >= {new_copies}) "
                              f"since a failover; moving the domain to {new_copies} copies is not supported "
                              f"for them (restart the system to renumber the copies)")
        owners = self._owners(domain)
        now = self._stats(domain, owners)
        old_copies = max(st["copies"] for st in now)
        record.update(copies=[old_copies, new_copies], durable=mode)
        if new_copies > old_copies:
            self._add_copies(domain, shards, old_copies, new_copies, after)
        self._save(layout)  # a copy Ray restarts from here on comes back in the new shape
        shaped = _ray.get([o.set_layout.remote(max(old_copies, new_copies), mode) for o in owners],
                          timeout=_CALL_S, what=f"set_layout of {domain}")
        if mode != "off":
            record["written_to_store"] = sum(st["pending"] for st in shaped)
            self._wait_stored(domain, owners)
        if new_copies > 1:
            self._wait_in_sync(domain, owners, max(old_copies, new_copies))
        self._announce()
        if new_copies < old_copies:
            # Clients route by the new layout once they polled; give them two poll intervals.
            time.sleep(2 * self._cfg.client.poll_timeout_s + 0.5)
            _ray.get([o.set_layout.remote(new_copies, mode) for o in owners], timeout=_CALL_S,
                     what=f"set_layout of {domain}")
            for shard in shards:
                for slot in range(new_copies, old_copies):
                    _ray.kill_named(shard_name(domain, shard, slot), self.namespace)

    def _reconcile(self) -> None:
        """After a restart of this actor: a migration it was carrying out may be half done (the
        layout is saved before the owners change). Finish each such domain's shape."""
        with self._lock:
            for domain, (copies, mode) in self._layout.shape.items():
                try:
                    now = self._stats(domain, self._owners(domain))
                    if all(st["copies"] == copies and st["durable"] == mode for st in now):
                        self._migrating.pop(domain, None)
                        continue
                    started = time.time()
                    record = {"domain": domain, "from": None, "to": self._layout.selected[domain].value,
                              "reason": "finishing a migration after the supervisor restarted",
                              "started_at": started, "changed": True}
                    self._converge(domain, self._layout, record)
                    record["seconds"] = time.time() - started
                    with self._report_lock:
                        self._remember(record)
                        self._migrating.pop(domain, None)
                    log.warning("persistence selector: finished moving %s to %s after a restart", domain,
                                record["to"])
                except Exception:
                    log.exception("persistence selector: could not finish the migration of %s", domain)

    def _add_copies(self, domain: str, shards: range, old: int, new: int, running: MemoryConfig) -> None:
        """New replicas of each shard, created empty (the owner's first sync sends a snapshot). Each
        is kept off the nodes of its owner and of the shard's other copies by a label selector on
        Ray's ``ray.io/node-id`` label (a hard rule: Ray's soft node affinity was measured to ignore
        the node asked for); a node-id excluded stays excluded when Ray restarts the replica. With
        too few nodes only the owner's is excluded, and on one node there is no rule."""
        alive = len(_ray.alive_nodes())
        settings = shard_settings(running, domain)
        for shard in shards:
            used = [_ray.get(_ray.get_actor(shard_name(domain, shard, slot), self.namespace).stats.remote(),
                             timeout=_CALL_S, what=f"{domain}/{shard} slot {slot}")["node_id"]
                    for slot in range(old)]
            for slot in range(old, new):
                avoid = sorted(set(used)) if alive > len(set(used)) else used[:1]
                opts = {**shard_options(self.namespace, domain, shard, slot), "get_if_exists": True}
                if alive > 1:
                    opts["label_selector"] = {"ray.io/node-id": f"!in({','.join(avoid)})"}
                actor = actor_class(ShardActor, opts).remote(domain, shard, slot, new, self.namespace, 1, settings)
                used.append(_ray.get(actor.stats.remote(), timeout=_CALL_S * 2,
                                     what=f"new replica {domain}/{shard} slot {slot}")["node_id"])

    def _owners(self, domain: str) -> list:
        return [_ray.get_actor(shard_name(domain, s, self._layout.owner(domain, s)), self.namespace)
                for s in range(self._cfg.domain(domain).shards)]

    def _stats(self, domain: str, owners: list) -> list[dict]:
        return _ray.get([o.stats.remote() for o in owners], timeout=_CALL_S, what=f"owners of {domain}")

    def _wait_owners(self, domain: str, owners: list, done: Any, timeout_s: float, failure: Any) -> list[dict]:
        """Poll the owners' stats until ``done(stats)``; past ``timeout_s``, ``TimeoutError(failure(stats))``."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self._stats(domain, owners)
            if done(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(failure(stats))
            time.sleep(0.05)

    def _wait_stored(self, domain: str, owners: list) -> None:
        """Until every owner's store holds its whole shard (the owners write it in chunks, serving
        calls meanwhile); a store that keeps failing fails the migration at the deadline."""
        stats = self._wait_owners(
            domain, owners, lambda stats: all(s["durable_pending"] == 0 for s in stats), _STORE_S,
            lambda stats: f"the owners of {domain} did not write their shards to the durable store in "
                          f"{_STORE_S:.0f} s ({sum(s['durable_pending'] for s in stats)} records pending)")
        if any(s["durable_stale_rows_failed"] for s in stats):
            log.warning("%s: rows an earlier stint left in the store could not be read; a reload may bring back "
                        "keys deleted since", domain)

    def _wait_in_sync(self, domain: str, owners: list, copies: int) -> None:
        def in_sync(stats: list[dict]) -> bool:
            return all(len(s["replicas"]) == copies - 1 and
                       all(r["acked_seq"] is not None and r["in_sync"] for r in s["replicas"].values())
                       for s in stats)

        self._wait_owners(domain, owners, in_sync, _CALL_S * 2,
                          lambda _stats: f"the new replicas of {domain} did not catch up with their owners in "
                                         f"{_CALL_S * 2:.0f} s")

    def _save(self, layout: Layout) -> None:
        """A migration's new layout; the topology (owners) is the current one, which a failover may
        have changed since the migration started."""
        with self._layout_lock:
            current = self._layout
            self._write_layout(replace(layout, owners=current.owners,
                                       generation=max(layout.generation, current.generation + 1)))

    def _write_layout(self, layout: Layout, *, store_required: bool = True) -> None:
        if self._cfg.durable.kind is not DurableKind.NONE:
            # Where start() looks after a full restart: a domain moved to disk comes back from disk.
            try:
                store = open_store(self._cfg.durable, self.namespace)
                try:
                    store.put_blob(LAYOUT_BLOB, layout.encode())
                finally:
                    store.close()
            except Exception as exc:
                if store_required:
                    raise
                # A failover must not wait for the store: Ray's KV has the topology; the store gets it next time.
                log.warning("could not write the layout to the durable store: %s", exc)
        _ray.kv_put(layout_key(self.namespace), layout.encode())
        self._layout = layout

    def _announce(self) -> None:
        coordinator = _ray.get_actor(COORDINATOR, self.namespace)
        _ray.get(coordinator.layout_changed.remote(), timeout=_CALL_S, what="announcing the layout")

    def _remember(self, record: dict) -> None:
        self._history = [*self._history, record][-_HISTORY:]
        try:
            _ray.kv_put(history_key(self.namespace), json.dumps(self._history).encode())
        except Exception as exc:  # noqa: BLE001 - the log line above has it anyway
            log.warning("could not keep the migration history: %s", exc)


def _jsonable(d: dict) -> dict:
    return {k: (v.value if isinstance(v, Backend) else v) for k, v in d.items()}
