"""Telemetry without Ray: the spec's instruments through an OpenTelemetry MeterProvider of the test's
own (an InMemoryMetricReader), over a client on the fake transport."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from erlmcp_ray.telemetry import SPEC_INSTRUMENTS, Telemetry
from erlmcp_ray.testing import FakeTransport
from tests.conftest import wait_for

CFG = {"domains": {"shared": {"shards": 2, "backend": "replicated", "max_bytes": "1MB"}},
       "client": {"poll_timeout_s": 0.2}}


def _points(reader) -> dict[str, list[tuple[float, dict]]]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = [(p.value, dict(p.attributes)) for p in m.data.data_points]
    return out


def _value(points, name, **attrs) -> float:
    found = [v for v, a in points[name] if all(a.get(k) == w for k, w in attrs.items())]
    assert len(found) == 1, (name, attrs, points[name])
    return found[0]


@pytest.fixture
def system():
    fake = FakeTransport(CFG)
    clients = [fake.client(), fake.client()]
    yield fake, clients
    for c in clients:
        c.close()


def test_every_spec_instrument_reports_what_the_stats_calls_say(system):
    _fake, (c, other) = system
    for i in range(50):
        c.put("shared", f"k{i}", i, consistency="strong")
    for i in range(50):
        c.get("shared", f"k{i}")  # L0/L1 hits (own writes are cached)
    c.get("shared", "missing")  # a miss
    other.get("shared", "k1")  # another client's miss, then hit
    other.get("shared", "k1")
    wait_for(lambda: c.coordinator.client_reports().get(other.client_id, {}).get("misses", 0) >= 1, timeout=10,
             what="the other client's report (sent with a poll, at most every second)")
    reader = InMemoryMetricReader()
    telemetry = Telemetry(c, MeterProvider(metric_readers=[reader]), refresh_s=0.0)
    points = _points(reader)
    assert set(SPEC_INSTRUMENTS) <= set(points), set(SPEC_INSTRUMENTS) - set(points)

    cache = c.stats()["cache"]
    assert _value(points, "erlmcp.cache.hits", client=c.client_id, tier="L0") == cache["l0_hits"]
    assert _value(points, "erlmcp.cache.hits", client=c.client_id, tier="L1") == cache["l1_hits"]
    assert _value(points, "erlmcp.cache.misses", client=c.client_id) == cache["misses"] >= 1
    assert _value(points, "erlmcp.cache.hit_rate", client=c.client_id) == pytest.approx(cache["hit_rate"])
    # the other client's numbers came through the coordinator
    assert _value(points, "erlmcp.cache.misses", client=other.client_id) >= 1
    assert _value(points, "erlmcp.clients") == 2

    dom = c.get_domain_stats("shared")
    assert _value(points, "erlmcp.memory.used", tier="L2", domain="shared") == dom["bytes"] > 0
    assert _value(points, "erlmcp.memory.limit", tier="L2", domain="shared") == 1_048_576
    assert _value(points, "erlmcp.memory.usage_ratio", domain="shared") == pytest.approx(dom["bytes"] / 1_048_576)
    assert _value(points, "erlmcp.memory.entries", domain="shared") == 50
    status = c.sync_status()["shared"]
    assert _value(points, "erlmcp.sync.bytes", domain="shared") == sum(s["syncs"]["bytes"] for s in status) > 0
    assert _value(points, "erlmcp.sync.errors", domain="shared") == 0
    assert {a["replica"] for _, a in points["erlmcp.sync.duration"]} == {1}
    assert telemetry.errors == 0
    telemetry.close()
    assert _points(reader).get("erlmcp.cache.hits", []) == []  # closed: observes nothing


def test_instruments_carry_the_spec_units(system):
    _fake, (c, _other) = system
    reader = InMemoryMetricReader()
    Telemetry(c, MeterProvider(metric_readers=[reader]), cluster=False)
    units = {m.name: m.unit for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert units["erlmcp.cache.hits"] == "{hit}" and units["erlmcp.memory.used"] == "By"
    assert units["erlmcp.cache.hit_rate"] == "1"
    assert "erlmcp.memory.limit" not in units  # cluster=False: this client's own numbers only


def test_the_spec_stats_shapes_are_real_numbers(system):
    _fake, (c, _other) = system
    for i in range(30):
        c.put("shared", f"k{i}", i, consistency="strong")
    cache = c.stats()["cache"]
    assert {"hits", "misses", "hit_rate", "evictions", "l1_size", "l2_size"} <= set(cache)
    assert cache["l2_size"] == 30  # entries in the shards, each shard counted once
    shard = c.sync_status()["shared"][0]
    assert {"syncs_completed", "syncs_failed", "bytes_synced", "last_sync_time"} <= set(shard)
    assert shard["syncs_completed"] >= 1 and shard["bytes_synced"] > 0 and shard["last_sync_time"] is not None
    node = c.get_cluster_memory()["node_data"][0]
    assert {"total", "processes", "system", "ets", "used_percent"} <= set(node)
    assert node["ets"] == node["bytes"] > 0



def test_alert_calls_refuse_bad_input_at_the_call_site(system):
    from erlmcp_ray.errors import InvalidValueError

    _fake, (c, _other) = system
    for bad in (-1, 0, float("nan"), float("inf"), "1"):
        with pytest.raises(InvalidValueError, match="interval_s"):
            c.subscribe_alerts(print, interval_s=bad)
    for bad in (-1, 1.5, "0", None, True):
        with pytest.raises(InvalidValueError, match="since"):
            c.alerts(bad)
