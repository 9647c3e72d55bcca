"""Telemetry on a real Ray: a client in another process (a Ray actor) reaches the driver's exporter
through the coordinator, and a Prometheus scrape of the endpoint returns the spec's names."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import ray
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import erlmcp_ray
from erlmcp_ray.telemetry import SPEC_INSTRUMENTS, Telemetry, prometheus_endpoint
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray]

NS = "t_telemetry"


@ray.remote(num_cpus=0)
class Agent:
    def __init__(self, namespace: str) -> None:
        self.client = erlmcp_ray.connect(namespace)

    def work(self, n: int) -> dict:
        for i in range(n):
            self.client.get("notes", f"k{i}")  # misses, then cached
            self.client.get("notes", f"k{i}")
        return {"client": self.client.client_id, **self.client.stats()["cache"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_of_a_client_in_another_process_reach_this_exporter_and_prometheus(ray_local, tmp_path):
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"backend": "replicated", "max_bytes": "10MB", "shards": 2}},
           "client": {"poll_timeout_s": 0.5}}
    with running_system(cfg, NS) as sysm, sysm.client() as c:
        for i in range(20):
            c.put("notes", f"k{i}", i, consistency="strong")
        agent = Agent.remote(NS)
        seen = ray.get(agent.work.remote(20), timeout=120)
        assert seen["misses"] >= 20 and seen["hits"] >= 20
        wait_for(lambda: c.coordinator.client_reports().get(seen["client"], {}).get("misses", 0) >= 20, timeout=20,
                 what="the agent's counters at the coordinator")
        reader = InMemoryMetricReader()
        Telemetry(c, MeterProvider(metric_readers=[reader]), refresh_s=0.0)
        points = {m.name: [(p.value, dict(p.attributes)) for p in m.data.data_points]
                  for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert set(SPEC_INSTRUMENTS) <= set(points)
        agent_misses = [v for v, a in points["erlmcp.cache.misses"] if a["client"] == seen["client"]]
        assert agent_misses and agent_misses[0] >= 20
        agent_node = next(a["node"] for _v, a in points["erlmcp.cache.misses"] if a["client"] == seen["client"])
        assert agent_node == ray.get_runtime_context().get_node_id()  # one node here
        assert next(v for v, a in points["erlmcp.memory.used"] if a.get("domain") == "notes") > 0

        port = _free_port()
        provider, server = prometheus_endpoint(port, addr="127.0.0.1")
        try:
            Telemetry(c, provider, refresh_s=0.0)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        finally:
            server.shutdown()
        for name in ("erlmcp_cache_hits", "erlmcp_cache_misses", "erlmcp_memory_used", "erlmcp_memory_limit",
                     "erlmcp_memory_usage_ratio", "erlmcp_cache_hit_rate", "erlmcp_cache_evictions",
                     "erlmcp_sync_duration", "erlmcp_sync_bytes", "erlmcp_sync_errors"):
            assert name in text, name
        assert f'client="{seen["client"]}"' in text
        ray.kill(agent)


def test_stats_does_not_wait_long_for_a_paused_owner(ray_local, tmp_path):
    """``stats()["cache"]["l2_size"]`` asks the shards: an owner that does not answer (here paused
    with SIGSTOP) must not hold ``stats()`` up -- it gives up after 2 s and says None."""
    import time

    from erlmcp_ray.testing import pause_copy

    ns = "t_telemetry_paused"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0, "failure_timeout_ms": 60000},
           "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"backend": "memory", "max_bytes": "10MB", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        c.put("notes", "k", 1, consistency="strong")
        assert c.stats()["cache"]["l2_size"] >= 1
        timer = pause_copy(ns, "notes", 0, 0, 6.0)
        try:
            c._l2 = (float("-inf"), None)  # due for a refresh
            t0 = time.monotonic()
            assert c.stats()["cache"]["l2_size"] is None
            assert time.monotonic() - t0 < 4
        finally:
            timer.join()


def test_otlp_ray_metrics_and_alerts_as_metrics(ray_local, tmp_path):
    """The three ways out carry the same instruments: an OTLP/HTTP receiver (a local HTTP server
    decoding the protobuf requests) gets the spec's names, Ray's metrics agent serves them as
    ``ray_erlmcp_*``, and a firing alert rule counts in ``erlmcp.alerts``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from erlmcp_ray.telemetry import RayMetrics, otlp_provider

    received: list[set[str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportMetricsServiceRequest.FromString(body)
            received.append({m.name for rm in request.resource_metrics for sm in rm.scope_metrics
                             for m in sm.metrics})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ns = "t_telemetry_out"
    cfg = {"durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
           "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "memory_monitoring": {"check_interval": 200},
           "alerts": [{"metric": "memory_usage", "threshold": 0.001, "window": 200, "action": "alert_operator"}],
           "domains": {"notes": {"backend": "memory", "max_bytes": "1MB", "shards": 1}}}
    with running_system(cfg, ns) as sysm, sysm.client() as c:
        for i in range(20):
            c.put("notes", f"k{i}", "v" * 100, consistency="strong")
            c.get("notes", f"k{i}")
        wait_for(lambda: c.alerts()["fired"] >= 1, timeout=30, interval=0.2, what="the rule to fire")

        reader = InMemoryMetricReader()
        Telemetry(c, MeterProvider(metric_readers=[reader]), refresh_s=0.0)
        points = {m.name: [(p.value, dict(p.attributes)) for p in m.data.data_points]
                  for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        fired = [v for v, a in points["erlmcp.alerts"] if a == {"metric": "memory_usage", "action": "alert_operator",
                                                                "state": "firing"}]
        assert fired == [1]
        assert [v for v, a in points["erlmcp.alerts.active"] if a["metric"] == "memory_usage"] == [1]
        [(ratio, _)] = points["erlmcp.node.usage_ratio"]
        assert ratio > 0

        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        provider = otlp_provider(f"http://127.0.0.1:{server.server_address[1]}/v1/metrics", interval_s=1.0)
        try:
            Telemetry(c, provider, refresh_s=0.0)
            wait_for(lambda: any(set(SPEC_INSTRUMENTS) <= names for names in received), timeout=30, interval=0.2,
                     what="an OTLP export with the spec's instruments")
        finally:
            provider.shutdown()
            server.shutdown()
        assert any("erlmcp.alerts" in names for names in received)

        bridge = RayMetrics(Telemetry(c, MeterProvider(), refresh_s=0.0), interval_s=0.5)
        port = ray._private.worker.global_worker.node.metrics_export_port
        try:
            def scraped() -> str:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

            wait_for(lambda: "ray_erlmcp_cache_hits_total" in scraped(), timeout=60, interval=1.0,
                     what="the instruments in Ray's metrics (exported every ~10 s)")
            text = scraped()
        finally:
            bridge.close()
        assert bridge.pushes >= 1 and bridge.errors == 0
        # (a counter Ray never saw increase is not exported: here sync.bytes, no replicas)
        for name in ("ray_erlmcp_memory_used", "ray_erlmcp_memory_usage_ratio", "ray_erlmcp_cache_hit_rate",
                     "ray_erlmcp_clients", "ray_erlmcp_alerts_total"):
            assert name in text, name
        assert 'domain="notes"' in text


def test_start_with_a_meter_provider_reports_to_it(ray_local, tmp_path):
    from erlmcp_ray.errors import InvalidValueError

    ns = "t_telemetry_start"
    cfg = {"durable": {"kind": "none"}, "distributed_memory": {"checkpoint_interval": 0},
           "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"backend": "memory", "max_bytes": "1MB", "shards": 1}}}
    with pytest.raises(InvalidValueError, match="MeterProvider"):
        erlmcp_ray.start(cfg, namespace=ns, meter_provider="prometheus")
    reader = InMemoryMetricReader()
    sysm = erlmcp_ray.start(cfg, namespace=ns, meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        with sysm.client() as c:
            c.put("notes", "k", "v" * 100, consistency="strong")
            sysm.telemetry._taken = float("-inf")  # a fresh snapshot for this collection
            points = {m.name: [(p.value, dict(p.attributes)) for p in m.data.data_points]
                      for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                      for m in sm.metrics}
            assert next(v for v, a in points["erlmcp.memory.used"] if a.get("domain") == "notes") > 0
            assert points["erlmcp.clients"][0][0] >= 1  # the telemetry's client (this one once it polled)
    finally:
        sysm.shutdown(purge=True)
    assert sysm.telemetry is None
