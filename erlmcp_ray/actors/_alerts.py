"""Alert rules as the supervisor evaluates them (rules and their timing in ``core.alerts``).

Every ``memory_monitoring.check_interval`` the supervisor samples two metrics and feeds the engine:

- ``memory_usage`` per domain: the bytes its shard owners hold over the domain's ``max_bytes``;
- ``cache_hit_rate`` per client: hits over reads of that client's cache *since the last sample*
  (from the counters each client sends the coordinator); a client that read nothing in between
  gives no sample (an idle client is not a bad one).

The memory monitor (spec ``erlmcp_memory_monitor``, ``memory_monitoring.*``) is two more rules on the
same engine, per node, with a window of one check interval (so two checks in a row):
``node_memory_usage`` -- the shard data a node holds over ``limits.max_bytes`` -- past
``memory_threshold``, and ``node_binary_bytes`` -- the bytes of encoded values (records: this port's
binaries) a node holds -- past ``binary_threshold``. With ``auto_gc`` their action collects garbage
on that node's shard copies (``force_gc_node``), else it only warns (``alert_operator``).

A rule's action runs when it fires: ``alert_operator`` (a log line; the event is the alert),
``trigger_eviction`` (the domain's owners evict in their policy order down to 90 % of the rule's
threshold; a domain without an eviction policy is only reported), ``force_gc`` (every shard copy
purges expired entries and collects garbage), ``force_gc_node`` (the copies on the node the event
names). Events -- firing and resolved -- are kept (the newest
1,000, numbered) for ``client.subscribe_alerts``; ``alerts()`` reports them with what fires now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors.options import COORDINATOR, owner_name, shard_name
from erlmcp_ray.config import AlertRule, MemoryConfig
from erlmcp_ray.core.alerts import AlertEngine, AlertEvent

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "Alerts"]

ACTIONS = ("alert_operator", "trigger_eviction", "force_gc", "force_gc_node")
_KEPT = 1000


class Alerts:
    def __init__(self, config: MemoryConfig, namespace: str, running: Callable[[], MemoryConfig], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg, self.namespace, self._running = config, namespace, running
        mm = config.memory_monitoring
        monitor = []
        if mm.enabled:
            action = "force_gc_node" if mm.auto_gc else "alert_operator"
            monitor = [AlertRule(metric="node_memory_usage", threshold=mm.memory_threshold, window=mm.check_interval,
                                 action=action, comparison="above"),
                       AlertRule(metric="node_binary_bytes", threshold=mm.binary_threshold, window=mm.check_interval,
                                 action=action, comparison="above")]
        self.engine = AlertEngine([*config.alerts, *monitor], clock=clock)
        self.interval_s = mm.check_interval / 1000.0
        self._lock = threading.Lock()
        self._events: list[tuple[int, dict]] = []
        self._seq = 0
        self._last_reads: dict[str, tuple[int, int]] = {}  # client -> (hits, misses) at the last sample
        self._on_node: dict[str, list[Any]] = {}  # node id -> handles of the copies there, at the last sample
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
        if metrics & {"node_memory_usage", "node_binary_bytes"}:
            per_node: dict[str, list[int]] = {}
            handles = self._handles()
            memory = _ray.get([h.memory.remote() for h in handles], timeout=60, what="memory of every copy")
            self._on_node = {}
            for h, m in zip(handles, memory):
                self._on_node.setdefault(m["node_id"], []).append(h)
                node = per_node.setdefault(m["node_id"], [0, 0])
                node[0] += m["bytes"]
                node[1] += m.get("record_bytes", m["bytes"])
            for node_id, (used, records) in per_node.items():
                out[("node_memory_usage", node_id)] = used / self._cfg.limits.max_bytes
                out[("node_binary_bytes", node_id)] = records
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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> list[AlertEvent]:
        events = self.engine.observe(self.samples())
        self.evaluations += 1
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
            if event.action not in ACTIONS:
                return {"error": f"unknown action {event.action!r} (known: {', '.join(ACTIONS)})"}
            return None  # alert_operator: the log line and the event are the action
        except Exception as exc:  # noqa: BLE001 - reported with the event
            return {"error": f"{type(exc).__name__}: {exc}"}

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
        return {"events": events, "last": last, "active": self.engine.active(), "fired": self.engine.fired,
                "resolved": self.engine.resolved, "evaluations": self.evaluations,
                "interval_s": self.interval_s, "rules": [r.model_dump() for r in self.engine.rules]}
