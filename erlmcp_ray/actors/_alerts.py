"""Alert rules and the memory check, as the supervisor runs them (rules and their timing in
``core.alerts``, node limits in ``core.node_limits``).

Every ``memory_monitoring.check_interval`` the supervisor samples the metrics its rules watch and
feeds the engine:

- ``memory_usage`` per domain: the bytes its shard owners hold over the domain's ``max_bytes``;
- ``cache_hit_rate`` per client: hits over reads of that client's cache *since the last sample*
  (from the counters each client sends the coordinator); a client that read nothing in between
  gives no sample (an idle client is not a bad one);
- ``node_usage`` per node: what the shard copies on the node hold over the node limits,
  ``max(bytes / limits.max_bytes, entries / limits.max_entries)``;
- ``node_memory_usage`` per node: the node's memory in use over its RAM (what
  ``erlmcp_memory_monitor`` watches in erlmcp: the whole VM, here the whole node);
- ``node_binary_bytes`` per node: the bytes of encoded values (records: this port's binaries) the
  copies on the node hold.

With ``memory_monitoring.enabled`` the check also carries out the spec's per-node limits and its
memory monitor, as rules on the same engine and as actions:

- node limits: a ``node_usage`` rule at ``limits.warn_percent`` (``alert_operator``: the warning);
  and each check, ``core.node_limits.NodeBudget``: at HIGH the node's evictable shards shed their
  share of the excess, at CRITICAL more, and when they cannot, the owners of the node's other shards
  refuse growing writes until it is below 85 % (pushed to the owners every check);
- the memory monitor: ``node_memory_usage`` past ``memory_threshold`` and ``node_binary_bytes`` past
  ``binary_threshold`` (window: one check interval, so two checks in a row); with ``auto_gc`` their
  action collects garbage on that node's shard copies (``force_gc_node``), else it only warns.

A rule's action runs when it fires: ``alert_operator`` (a log line; the event is the alert),
``trigger_eviction`` (the domain's owners evict in their policy order down to 90 % of the rule's
threshold; a domain without an eviction policy is only reported), ``force_gc`` (every shard copy
purges expired entries and collects garbage), ``force_gc_node`` (the copies on the node the event
names), or ``"package.module:function"``: called in the supervisor with the ``AlertEvent`` (its
return value, or the exception it raised, becomes the event's ``result``). Events -- firing and
resolved -- are kept (the newest 1,000, numbered) for ``client.subscribe_alerts``; ``alerts()``
reports them with what fires now and the node limits' state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors.options import COORDINATOR, owner_name, shard_name
from erlmcp_ray.config import ALERT_ACTIONS, AlertRule, EvictionPolicyName, MemoryConfig, resolve_action
from erlmcp_ray.core.alerts import AlertEngine, AlertEvent
from erlmcp_ray.core.node_limits import CopyUsage, NodeBudget

log = logging.getLogger(__name__)

__all__ = ["Alerts"]

_KEPT = 1000
_NODE_METRICS = frozenset({"node_usage", "node_memory_usage", "node_binary_bytes"})


class Alerts:
    def __init__(self, config: MemoryConfig, namespace: str, running: Callable[[], MemoryConfig], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg, self.namespace, self._running = config, namespace, running
        mm, limits = config.memory_monitoring, config.limits
        monitor: list[AlertRule] = []
        self.budget: NodeBudget | None = None
        if mm.enabled:
            action = "force_gc_node" if mm.auto_gc else "alert_operator"
            monitor = [AlertRule(metric="node_usage", threshold=limits.warn_percent, window=mm.check_interval,
                                 action="alert_operator", comparison="above"),
                       AlertRule(metric="node_memory_usage", threshold=mm.memory_threshold, window=mm.check_interval,
                                 action=action, comparison="above"),
                       AlertRule(metric="node_binary_bytes", threshold=mm.binary_threshold, window=mm.check_interval,
                                 action=action, comparison="above")]
            self.budget = NodeBudget(limits.max_bytes, limits.max_entries)
        self.engine = AlertEngine([*config.alerts, *monitor], clock=clock)
        self._callables = {r.action: resolve_action(r.action) for r in self.engine.rules if r.action not in ALERT_ACTIONS}
        self.interval_s = mm.check_interval / 1000.0
        self._lock = threading.Lock()
        self._events: list[tuple[int, dict]] = []
        self._seq = 0
        #: events are numbered per incarnation: a restarted supervisor starts again from 1, and a
        #: reader that sees a new incarnation reads it from the start
        self.incarnation = uuid.uuid4().hex
        self._last_reads: dict[str, tuple[int, int]] = {}  # client -> (hits, misses) at the last sample
        self._on_node: dict[str, list[Any]] = {}  # node id -> handles of the copies there, at the last sample
        self._usage: dict[str, list[CopyUsage]] = {}  # node id -> its copies, at the last sample
        self._refused: dict[tuple[str, int], str] = {}  # shard -> reason, as last pushed to the owners
        self.node_evictions = 0  # entries the node limits evicted
        self.evaluations = 0
        self.errors = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(timeout=self.interval_s):
            try:
                self.evaluate()
            except Exception:
                self.errors += 1
                log.exception("alert evaluation failed")

    # ------------------------------------------------------------------ sampling
    def samples(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        running = self._running()
        metrics = {rule.metric for rule in self.engine.rules}
        if "memory_usage" in metrics:
            owners = [(d, _ray.get_actor(owner_name(self.namespace, d, s), self.namespace))
                      for d in running.domains for s in range(running.domain(d).shards)]
            stats = _ray.get([o.stats.remote() for _d, o in owners], timeout=30, what="the shard owners")
            used: dict[str, int] = dict.fromkeys(running.domains, 0)
            for (domain, _o), st in zip(owners, stats):
                used[domain] += st["bytes"]
            for domain, n in used.items():
                out[("memory_usage", domain)] = n / running.domain(domain).max_bytes
        if metrics & _NODE_METRICS or self.budget is not None:
            out.update(self._sample_nodes(running))
        if "cache_hit_rate" in metrics:
            coordinator = _ray.get_actor(COORDINATOR, self.namespace)
            reports = _ray.get(coordinator.client_reports.remote(), timeout=30, what="client reports")
            last, self._last_reads = self._last_reads, {}
            for cid, r in reports.items():
                hits, misses = r["l0_hits"] + r["l1_hits"], r["misses"]
                self._last_reads[cid] = (hits, misses)
                h0, m0 = last.get(cid, (0, 0))
                reads = (hits - h0) + (misses - m0)
                if reads > 0 and hits >= h0:
                    out[("cache_hit_rate", cid)] = (hits - h0) / reads
        return out

    def _sample_nodes(self, running: MemoryConfig) -> dict[tuple[str, str], float]:
        handles = self._handles()
        memory = _ray.get([h.memory.remote() for h in handles], timeout=60, what="memory of every copy")
        self._on_node, self._usage = {}, {}
        ram: dict[str, tuple[int, int]] = {}
        records: dict[str, int] = {}
        for h, m in zip(handles, memory):
            node = m["node_id"]
            records[node] = records.get(node, 0) + m["record_bytes"]
            self._on_node.setdefault(node, []).append(h)
            evictable = running.domain(m["domain"]).eviction is not EvictionPolicyName.NONE
            self._usage.setdefault(node, []).append(
                CopyUsage((m["domain"], m["shard"]), m["slot"], m["bytes"], m["entries"], evictable))
            ram[node] = (m["node_memory_used"], m["node_memory_total"])
        out: dict[tuple[str, str], float] = {}
        limits = self._cfg.limits
        for node, copies in self._usage.items():
            used, total = ram[node]
            out[("node_usage", node)] = max(sum(c.bytes for c in copies) / limits.max_bytes,
                                            sum(c.entries for c in copies) / limits.max_entries)
            out[("node_memory_usage", node)] = used / total if total else 0.0
            out[("node_binary_bytes", node)] = records[node]
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> list[AlertEvent]:
        events = self.engine.observe(self.samples())
        self.evaluations += 1
        if self.budget is not None:
            self._enforce_node_limits()
        for event in events:
            detail = event.to_dict()
            if event.state == "firing":
                detail["result"] = self._act(event)
                log.warning("alert firing: %s of %s is %.3f (threshold %s): %s", event.metric, event.subject,
                            event.value, event.threshold, event.action)
            else:
                log.warning("alert resolved: %s of %s", event.metric, event.subject)
            with self._lock:
                self._seq += 1
                self._events = [*self._events, (self._seq, detail)][-_KEPT:]
        return events

    def _act(self, event: AlertEvent) -> Any:
        try:
            if event.action == "trigger_eviction" and event.metric == "memory_usage":
                return self._evict(event.subject, event.threshold * 0.9)
            if event.action == "force_gc":
                return self._force_gc()
            if event.action == "force_gc_node":
                return self._force_gc(node=event.subject)
            if event.action in self._callables:
                return _plain(self._callables[event.action](event))
            return None  # alert_operator: the log line and the event are the action
        except Exception as exc:  # noqa: BLE001 - reported with the event
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _enforce_node_limits(self) -> None:
        """Carry out the node limits (``core.node_limits``) on this check's usage."""
        assert self.budget is not None
        for evict in self.budget.observe(self._usage):
            calls = [(_ray.get_actor(owner_name(self.namespace, d, i), self.namespace), b, e)
                     for (d, i), (b, e) in evict.shares.items()]
            answers = _ray.get([o.evict_amount.remote(b, e) for o, b, e in calls], timeout=60,
                               what=f"evicting for node {evict.node}")
            evicted = sum(a["evicted"] for a in answers)
            self.node_evictions += evicted
            log.warning("node %s at %s pressure: evicted %d entries from %d shards", evict.node, evict.level,
                        evicted, len(calls))
        refused = self.budget.refused()
        running = self._running()
        for domain in running.domains:
            for i in range(running.domain(domain).shards):
                reason = refused.get((domain, i))
                if reason is None and (domain, i) not in self._refused:
                    continue  # neither refused now nor before: nothing to tell its owner
                owner = _ray.get_actor(owner_name(self.namespace, domain, i), self.namespace)
                _ray.get(owner.set_node_refusal.remote(reason), timeout=30, what=f"node refusal of {domain}/{i}")
        self._refused = refused

    def _evict(self, domain: str, ratio: float) -> dict:
        running = self._running()
        if domain not in running.domains:
            return {"error": f"no domain {domain!r}"}
        owners = [_ray.get_actor(owner_name(self.namespace, domain, s), self.namespace)
                  for s in range(running.domain(domain).shards)]
        answers = _ray.get([o.evict.remote(ratio) for o in owners], timeout=60, what=f"evicting {domain}")
        return {"evicted": sum(a["evicted"] for a in answers), "evictable": all(a["evictable"] for a in answers)}

    def _handles(self) -> list[Any]:
        running = self._running()
        return [_ray.get_actor(shard_name(d, s, slot), self.namespace) for d in running.domains
                for s in range(running.domain(d).shards) for slot in range(running.replication_factor_for(d))]

    def _force_gc(self, node: str | None = None) -> dict:
        # a node's copies: where the sample that fired saw them
        handles = self._handles() if node is None else self._on_node.get(node, [])
        answers = _ray.get([h.force_gc.remote() for h in handles], timeout=60, what="force_gc")
        return {"copies": len(answers), "expired_purged": sum(a["expired_purged"] for a in answers),
                "rss_bytes_freed": sum(a["rss_bytes_freed"] for a in answers)}

    # ------------------------------------------------------------------ reading
    def since(self, seq: int = 0) -> dict[str, Any]:
        """Events after ``seq`` (``last``: where to resume), what fires now, and the counts."""
        with self._lock:
            events = [e for s, e in self._events if s > seq]
            last = self._seq
        return {"events": events, "last": last, "incarnation": self.incarnation, "active": self.engine.active(), "fired": self.engine.fired,
                "resolved": self.engine.resolved, "evaluations": self.evaluations,
                "interval_s": self.interval_s, "rules": [{**r.model_dump(), "fired": f, "resolved": rs}
                          for r, (f, rs) in zip(self.engine.rules, self.engine.counts)],
                "nodes": self.budget.snapshot() if self.budget is not None else {},
                "node_evictions": self.node_evictions}


def _plain(value: Any) -> Any:
    """A callable action's return value as an event can carry it (JSON-like, else its repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)
