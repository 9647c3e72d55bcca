"""The recovery API as the supervisor runs it: ``trigger_recovery(mode)``, ``recover_domain``,
``recover_node``, ``get_recovery_status`` (spec ``erlmcp_memory_recovery``).

One run at a time, through the spec's five steps (``core.recovery``):

- detect: every copy of every shard in scope is pinged (a copy that does not answer within
  ``_PING_S`` is down); the owners report their incarnation and op-log reach;
- assess: the latest checkpoint is found, and ``core.recovery.plan`` gives each shard its mode;
- reconstruct: each owner recovers its shard itself (``ShardActor.recover``: joins for full, a
  replay for delta, a new epoch for peer; snapshot is a checkpoint restore of that shard), ending
  in a new epoch, after which its replicas replace their state with its;
- validate: a sync round, then ``verify_state`` over the domains in scope;
- reintegrate: the coordinator takes a new epoch, so every client drops its caches.

Status is kept for ``get_recovery_status`` while a run goes on (other calls answer meanwhile).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors._checkpoints import Checkpoints
from erlmcp_ray.actors._verify import sync_domains, verify
from erlmcp_ray.actors.options import COORDINATOR, owner_name, owner_slot, shard_name
from erlmcp_ray.config import DurableMode, MemoryConfig
from erlmcp_ray.core.recovery import STEPS, RecoveryStatus, ShardFacts, plan
from erlmcp_ray.errors import UnknownDomainError

log = logging.getLogger(__name__)

__all__ = ["RecoveryRunner"]

_PING_S = 2.0
_SHARD_S = 600.0


class RecoveryRunner:
    def __init__(self, config: MemoryConfig, namespace: str, running: Any, checkpoints: Checkpoints) -> None:
        self._cfg, self.namespace, self._running, self._checkpoints = config, namespace, running, checkpoints
        self.status = RecoveryStatus()

    def run(self, mode: str, domains: list[str] | None = None, node_id: str | None = None) -> dict[str, Any]:
        cfg = self._running()
        names = list(cfg.domains) if domains is None else domains
        for name in names:
            if name not in cfg.domains:
                raise UnknownDomainError(name, known=tuple(cfg.domains))
        st = self.status
        st.begin(mode, time.time())
        try:
            self._step("detect")
            found = self._detect(cfg, names, node_id)
            self._step("assess")
            latest = self._latest_checkpoint()
            facts = [self._facts(cfg, d, s, copies, latest) for (d, s), copies in found.items()]
            plans = plan(mode, facts)
            st.shards_total = len(plans)
            for p in plans:
                st.shards[f"{p.domain}/{p.shard}"] = {"mode": p.mode, "reason": p.reason, "done": False}
            self._step("reconstruct")
            for p in plans:
                st.shards[f"{p.domain}/{p.shard}"].update(self._reconstruct(p, latest), done=True)
                st.shards_done += 1
            self._step("validate")
            scope = sorted({p.domain for p in plans})
            if scope:
                sync_domains(cfg, self.namespace, scope, timeout_s=60.0)
                report = verify(cfg.model_copy(update={"domains": {d: cfg.domains[d] for d in scope}}),
                                self.namespace)
                st.validation = {"ok": report["ok"], **report["summary"]}
            self._step("reintegrate")
            coordinator = _ray.get_actor(COORDINATOR, self.namespace)
            _ray.get(coordinator.new_epoch.remote(), timeout=60, what="telling clients to drop their caches")
            st.status = "completed"
        except Exception as exc:
            st.status, st.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("recovery (%s) failed in step %s: %s", mode, st.step, exc)
            raise
        finally:
            st.finished_at = time.time()
        log.warning("recovery (%s): %d shards in %.2f s, validation %s", mode, st.shards_total,
                    st.finished_at - st.started_at, st.validation)
        return st.to_dict()

    def _step(self, step: str) -> None:
        assert step in STEPS
        self.status.step = step

    def _detect(self, cfg: MemoryConfig, names: list[str], node_id: str | None) -> dict[tuple[str, int], list]:
        """Per shard in scope: ``[(slot, alive, stats or None)]`` for each copy."""
        out = {}
        for domain in names:
            for shard in range(cfg.domain(domain).shards):
                copies = []
                for slot in range(cfg.replication_factor_for(domain)):
                    try:
                        handle = _ray.get_actor(shard_name(domain, shard, slot), self.namespace)
                        copies.append((slot, True, _ray.get(handle.stats.remote(), timeout=_PING_S, what="ping")))
                    except Exception:  # noqa: BLE001 - down, for this run
                        copies.append((slot, False, None))
                # The owner first (after a failover it is not slot 0), then the replicas.
                first = owner_slot(self.namespace, domain, shard)
                copies.sort(key=lambda c: c[0] != first)
                if node_id is None or any(st is not None and st["node_id"] == node_id for _, _, st in copies) or \
                        any(not alive for _, alive, _ in copies):
                    out[(domain, shard)] = copies
        if node_id is not None and node_id not in {n["NodeID"] for n in _ray.alive_nodes()}:
            log.warning("recover_node: node %s is not alive; recovering the shards with a copy down", node_id)
        return out

    def _latest_checkpoint(self) -> Any:
        if not self._checkpoints.enabled:
            return None
        found = self._checkpoints.list()
        return found[0] if found else None

    def _facts(self, cfg: MemoryConfig, domain: str, shard: int, copies: list, latest: Any) -> ShardFacts:
        owner = copies[0][2]
        entry = None if latest is None else next(
            (s for s in latest.shards if (s.domain, s.shard) == (domain, shard)), None)
        delta = (owner is not None and entry is not None and entry.incarnation == owner["incarnation"]
                 and owner["log_first_seq"] <= entry.seq + 1)
        return ShardFacts(domain, shard, owner_alive=copies[0][1],
                          live_replicas=sum(1 for _, alive, _ in copies[1:] if alive),
                          durable=cfg.durable_mode_for(domain) is not DurableMode.OFF,
                          checkpoint=entry is not None, delta_possible=delta)

    def _reconstruct(self, p: Any, latest: Any) -> dict[str, Any]:
        owner = _ray.get_actor(owner_name(self.namespace, p.domain, p.shard), self.namespace)
        entry = None if latest is None else next(
            (s for s in latest.shards if (s.domain, s.shard) == (p.domain, p.shard)), None)
        blob, sha = (entry.blob, entry.sha256) if entry is not None else (None, None)
        if p.mode == "snapshot":
            _ray.get(owner.stage_checkpoint.remote(blob, sha), timeout=_SHARD_S, what="reading the checkpoint")
            out = _ray.get(owner.apply_staged.remote(), timeout=_SHARD_S, what="restoring the checkpoint")
            return {**out, "checkpoint": latest.id}
        out = _ray.get(owner.recover.remote(p.mode, blob if p.mode != "peer" else None, sha),
                       timeout=_SHARD_S, what=f"recovering {p.domain}/{p.shard}")
        return {**out, "checkpoint": None if blob is None or p.mode == "peer" else latest.id}
