"""Metrics: the spec's instruments, by their exact names, through an OpenTelemetry ``MeterProvider``.

    telemetry = Telemetry(client, meter_provider)   # the provider: yours (an exporter on it), or
                                                    # the global one when you set it; else nothing
    ...
    telemetry.close()

Nothing is recorded on the hot path: every instrument is observable (asynchronous). When the
provider's reader collects, one snapshot is taken (at most every ``refresh_s``, shared by every
callback of that collection) from numbers the system keeps anyway:

- this client: its cache (hits per tier, misses, evictions, sizes) and write-behind backlog;
- every other live client: the same counters, which each client sends with a coordinator poll at
  most once a second (``client_reports``) -- so the clients of tasks and actors in other processes
  reach this one exporter;
- the shards (``cluster=True``, one ``stats`` call per shard copy): per domain, bytes against the
  limit, entries, evictions, bytes and errors of replication, per replica its round trip and lag;
- the supervisor: failovers, heals and stashes lost (its history).

Instruments (unit; attributes). The spec's ten:

    erlmcp.memory.used         By     tier=L2 + domain (shard data), tier=L1 + client (a client's cache)
    erlmcp.memory.limit        By     tier=L2 + domain
    erlmcp.memory.usage_ratio  1      tier=L2 + domain
    erlmcp.cache.hits          {hit}  tier=L0|L1 + client + node
    erlmcp.cache.misses        {miss} client + node
    erlmcp.cache.hit_rate      1      client + node
    erlmcp.cache.evictions     {eviction}  tier=L1 + client, or tier=L2 + domain
    erlmcp.sync.duration       ms     domain, shard, replica: the last replication round trip
    erlmcp.sync.bytes          By     domain: keys and records sent to replicas
    erlmcp.sync.errors         {error} domain: replication rounds a replica failed

and for an operator: ``erlmcp.memory.entries`` (domain), ``erlmcp.replica.lag`` ({op}: operations a
replica is behind its owner), ``erlmcp.replica.staleness`` (ms), ``erlmcp.write_behind.backlog``
(client: buffered writes), ``erlmcp.write_behind.errors`` (client), ``erlmcp.failovers`` (kind:
promotion, restart, replacement, heal, stash_lost), ``erlmcp.clients`` (live clients).

Three ways out: ``prometheus_endpoint(port)`` (a scrape endpoint), ``otlp_provider(endpoint)`` (push
to an OpenTelemetry collector over OTLP/HTTP) -- both give the ``MeterProvider`` to pass -- and
``RayMetrics(telemetry)``, which records the same snapshot in Ray's metrics system (Ray's
Prometheus and dashboard).

Alerts and node limits: ``erlmcp.alerts`` (metric, action, state: firing/resolved),
``erlmcp.alerts.active`` (metric), ``erlmcp.node.usage_ratio`` (node: what its shard copies hold
over ``limits``).

A counter read from a process that restarted (a shard, a client) starts again from 0, which
OpenTelemetry's cumulative counters treat as a reset. In Prometheus' spelling the names take
underscores and counters a ``_total`` suffix (``erlmcp_cache_hits_total``); ``prometheus_endpoint``
serves them over HTTP.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SPEC_INSTRUMENTS", "RayMetrics", "Telemetry", "otlp_provider", "prometheus_endpoint"]

log = logging.getLogger(__name__)

#: name -> (kind, unit, description): the spec's instruments, exactly as it names them
SPEC_INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "erlmcp.memory.used": ("gauge", "By", "bytes held: a domain's shard data (L2) or a client's cache (L1)"),
    "erlmcp.memory.limit": ("gauge", "By", "a domain's max_bytes"),
    "erlmcp.memory.usage_ratio": ("gauge", "1", "a domain's bytes over its limit"),
    "erlmcp.cache.hits": ("counter", "{hit}", "reads a client's cache answered, per tier"),
    "erlmcp.cache.misses": ("counter", "{miss}", "reads a client's cache could not answer"),
    "erlmcp.cache.hit_rate": ("gauge", "1", "hits / (hits + misses) of a client's cache"),
    "erlmcp.cache.evictions": ("counter", "{eviction}", "entries evicted: from a client's L1, or a domain's shards"),
    "erlmcp.sync.duration": ("gauge", "ms", "the last replication round trip from an owner to a replica"),
    "erlmcp.sync.bytes": ("counter", "By", "keys and records an owner sent to its replicas"),
    "erlmcp.sync.errors": ("counter", "{error}", "replication rounds a replica did not acknowledge"),
}

_OPERATOR_INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "erlmcp.memory.entries": ("gauge", "{entry}", "live entries of a domain"),
    "erlmcp.replica.lag": ("gauge", "{op}", "operations a replica is behind its owner"),
    "erlmcp.replica.staleness": ("gauge", "ms", "how old a replica's view of its owner may be"),
    "erlmcp.write_behind.backlog": ("gauge", "{write}", "eventual writes a client holds, not yet sent"),
    "erlmcp.write_behind.errors": ("counter", "{error}", "eventual writes a client reported failed"),
    "erlmcp.failovers": ("counter", "{event}", "failover events of the supervisor, by kind"),
    "erlmcp.clients": ("gauge", "{client}", "clients registered with the coordinator"),
    "erlmcp.alerts": ("counter", "{event}", "alert events of the supervisor's rules, by metric, action and state"),
    "erlmcp.alerts.active": ("gauge", "{alert}", "subjects a rule fires for now, by metric"),
    "erlmcp.node.usage_ratio": ("gauge", "1", "what a node's shard copies hold over the node limits"),
}

#: every instrument: name -> (kind, unit, description)
INSTRUMENTS: dict[str, tuple[str, str, str]] = {**SPEC_INSTRUMENTS, **_OPERATOR_INSTRUMENTS}

#: every instrument's attribute keys (Ray's metrics want them declared)
ATTRIBUTE_KEYS = ("domain", "tier", "client", "node", "shard", "replica", "kind", "metric", "action", "state")


class Telemetry:
    """Observable instruments over one client's view of the system (see the module docstring)."""

    def __init__(self, client: Any, meter_provider: Any = None, *, cluster: bool = True, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from opentelemetry import metrics

        import erlmcp_ray

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self._client, self._cluster, self._refresh_s, self._clock = client, cluster, refresh_s, clock
        self._lock = threading.Lock()
        self._snap: dict[str, list] = {}
        self._taken = float("-inf")
        self.closed = False
        self.errors = 0
        meter = provider.get_meter("erlmcp_ray", getattr(erlmcp_ray, "__version__", None))
        makers = {"gauge": meter.create_observable_gauge, "counter": meter.create_observable_counter}
        for name, (kind, unit, description) in INSTRUMENTS.items():
            makers[kind](name, callbacks=[self._callback(name)], unit=unit, description=description)

    def close(self) -> None:
        """Stop reporting (OpenTelemetry has no way to remove an instrument: they observe nothing)."""
        self.closed = True

    # ------------------------------------------------------------------ collection
    def _callback(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def observe(_options: Any) -> Iterable[Any]:
            if self.closed:
                return []
            return [Observation(value, attrs) for value, attrs in self.snapshot().get(name, ())]

        return observe

    def snapshot(self) -> dict[str, list[tuple[float, dict]]]:
        """``{instrument: [(value, attributes)]}``, taken at most every ``refresh_s``."""
        with self._lock:
            now = self._clock()
            if now - self._taken >= self._refresh_s:
                self._snap, self._taken = self._take(), now
            return self._snap

    def _take(self) -> dict[str, list[tuple[float, dict]]]:
        out: dict[str, list[tuple[float, dict]]] = {}

        def add(name: str, value: float, **attrs: Any) -> None:
            if not math.isfinite(value):
                return  # e.g. the staleness of a replica that never synced: no value to give
            out.setdefault(name, []).append((value, {k: v for k, v in attrs.items() if v is not None}))

        c = self._client
        reports = {}
        try:
            reports = c.coordinator.client_reports()
        except Exception as exc:  # noqa: BLE001 - the coordinator restarting: this client alone
            self.errors += 1
            log.debug("telemetry: no client reports: %s", exc)
        reports[c.client_id] = c._report_now()  # this client's own, fresh
        add("erlmcp.clients", len(reports))
        for cid, r in reports.items():
            who = {"client": cid, "node": r.get("node")}
            hits, misses = r["l0_hits"] + r["l1_hits"], r["misses"]
            add("erlmcp.cache.hits", r["l0_hits"], tier="L0", **who)
            add("erlmcp.cache.hits", r["l1_hits"], tier="L1", **who)
            add("erlmcp.cache.misses", misses, **who)
            add("erlmcp.cache.hit_rate", hits / (hits + misses) if hits + misses else 0.0, **who)
            add("erlmcp.cache.evictions", r["evictions"], tier="L1", **who)
            add("erlmcp.memory.used", r["l1_bytes"], tier="L1", **who)
            add("erlmcp.write_behind.backlog", r["buffered"], **who)
            add("erlmcp.write_behind.errors", r["write_errors"], **who)
        if self._cluster:
            try:
                self._take_cluster(add)
            except Exception as exc:  # noqa: BLE001 - a shard restarting: its numbers next time
                self.errors += 1
                log.warning("telemetry: shard numbers not collected: %s", exc)
        return out

    def _take_cluster(self, add: Callable[..., None]) -> None:
        c = self._client
        for domain in c.config.domains:
            d = c.get_domain_stats(domain)
            limit = d["limit"]
            add("erlmcp.memory.used", d["bytes"], tier="L2", domain=domain)
            add("erlmcp.memory.limit", limit, tier="L2", domain=domain)
            add("erlmcp.memory.usage_ratio", d["bytes"] / limit if limit else 0.0, tier="L2", domain=domain)
            add("erlmcp.memory.entries", d["entries"], domain=domain)
            add("erlmcp.cache.evictions", d["evictions"], tier="L2", domain=domain)
        status = c.sync_status()
        for domain, shards in status.items():
            sent = failed = 0
            for s in shards:
                sent += s["syncs"]["bytes"]
                failed += s["syncs"]["failed"]
                for r in s["replicas"]:
                    where = {"domain": domain, "shard": s["shard"], "replica": r["slot"]}
                    add("erlmcp.sync.duration", r["rtt_ms"], **where)
                    add("erlmcp.replica.lag", r["seq_lag"], **where)
                    add("erlmcp.replica.staleness", r["staleness_ms"], **where)
            add("erlmcp.sync.bytes", sent, domain=domain)
            add("erlmcp.sync.errors", failed, domain=domain)
        kinds: dict[str, int] = {}
        for h in c.recovery.get_failover_status()["history"]:
            kinds[h["kind"]] = kinds.get(h["kind"], 0) + 1
        for kind in ("promotion", "restart", "replacement", "heal", "stash_lost"):
            add("erlmcp.failovers", kinds.get(kind, 0), kind=kind)
        alerts = c.alerts(since=2**62)  # counts and state, no events
        counts: dict[tuple[str, str], list[int]] = {}
        for rule in alerts["rules"]:
            n = counts.setdefault((rule["metric"], rule["action"]), [0, 0])
            n[0], n[1] = n[0] + rule["fired"], n[1] + rule["resolved"]
        for (metric, action), (fired, resolved) in counts.items():
            add("erlmcp.alerts", fired, metric=metric, action=action, state="firing")
            add("erlmcp.alerts", resolved, metric=metric, action=action, state="resolved")
        active: dict[str, int] = dict.fromkeys((m for m, _a in counts), 0)
        for a in alerts["active"]:
            active[a["metric"]] = active.get(a["metric"], 0) + 1
        for metric, n in active.items():
            add("erlmcp.alerts.active", n, metric=metric)
        for node, state in alerts["nodes"].items():
            add("erlmcp.node.usage_ratio", state["ratio"], node=node)


class RayMetrics:
    """The same instruments in Ray's own metrics system (``ray.util.metrics``), so they show where
    Ray's metrics do: each node's metrics agent serves them to Prometheus and the Ray dashboard's
    Grafana panels, as ``ray_erlmcp_memory_used`` (counters also as ``..._total``).

        bridge = RayMetrics(telemetry, interval_s=5.0)   # pushes a snapshot every interval_s
        ...
        bridge.close()

    Ray's metrics are pushed, not observed: a thread of this process sets each gauge and adds each
    counter's increase since the last push (a counter that went back -- a restarted shard or
    client -- adds its new value). Ray exports what a process recorded every few seconds
    (``metrics_report_interval_ms``, 10 s by default). Needs ``ray.init`` first."""

    def __init__(self, telemetry: Telemetry, interval_s: float = 5.0, *, start: bool = True) -> None:
        from ray.util import metrics as ray_metrics

        if not (isinstance(interval_s, (int, float)) and interval_s > 0):
            raise ValueError(f"interval_s must be a number > 0, got {interval_s!r}")
        self._telemetry, self.interval_s = telemetry, float(interval_s)
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple], float] = {}
        self.pushes = 0
        self.errors = 0
        for name, (kind, unit, description) in INSTRUMENTS.items():
            make = ray_metrics.Gauge if kind == "gauge" else ray_metrics.Counter
            metric = make(name.replace(".", "_"), description=f"{description} ({unit})", tag_keys=ATTRIBUTE_KEYS)
            self._metrics[name] = metric.set_default_tags(dict.fromkeys(ATTRIBUTE_KEYS, ""))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="erlmcp-ray-metrics", daemon=True)
            self._thread.start()

    def push(self) -> int:
        """Record one snapshot now; how many values were recorded."""
        n = 0
        for name, values in self._telemetry.snapshot().items():
            metric = self._metrics.get(name)
            if metric is None:
                continue
            is_gauge = INSTRUMENTS[name][0] == "gauge"
            for value, attrs in values:
                tags = {k: str(v) for k, v in attrs.items()}
                if is_gauge:
                    metric.set(float(value), tags=tags)
                else:
                    key = (name, tuple(sorted(tags.items())))
                    last = self._last.get(key, 0.0)
                    increase = value - last if value >= last else value
                    self._last[key] = value
                    if increase > 0:
                        metric.inc(float(increase), tags=tags)
                n += 1
        self.pushes += 1
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception as exc:  # noqa: BLE001 - the next push tries again
                self.errors += 1
                log.warning("telemetry: Ray metrics not recorded: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)


def otlp_provider(endpoint: str = "http://localhost:4318/v1/metrics", interval_s: float = 10.0,
                  headers: dict[str, str] | None = None) -> Any:
    """A ``MeterProvider`` that sends its metrics to an OpenTelemetry collector (or any OTLP/HTTP
    receiver) at ``endpoint`` every ``interval_s``; pass it to ``Telemetry``. ``provider.shutdown()``
    sends what is left and stops."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if not (isinstance(interval_s, (int, float)) and interval_s > 0):
        raise ValueError(f"interval_s must be a number > 0, got {interval_s!r}")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, headers=headers),
                                           export_interval_millis=interval_s * 1000)
    return MeterProvider(metric_readers=[reader])


def prometheus_endpoint(port: int, addr: str = "0.0.0.0") -> Any:
    """A ``MeterProvider`` whose metrics ``http://addr:port/metrics`` serves in Prometheus' text format
    (``opentelemetry-exporter-prometheus`` on ``prometheus_client``'s registry); pass it to
    ``Telemetry``. Returns ``(provider, server)``; ``server.shutdown()`` stops the endpoint."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server, _thread = start_http_server(port, addr=addr)
    return provider, server
