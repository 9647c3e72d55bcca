"""Every config key does something (issue 12, item 5).

``KEY_TESTS`` names, for each leaf key of ``MemoryConfig`` (``domains.*.eviction`` for a key of every
domain, ``alerts.*.cooldown`` for a key of every rule), the tests that show that changing the key
changes behaviour: two values, two observable outcomes -- never only that the value was parsed. The
meta-tests at the top keep the registry and the model in step: a new key without a behaviour test,
a key that is gone, or a test that does not exist fails here (they read the test files with ``ast``:
no Ray cluster, no imports of the tests).

The rest of the file holds the behaviour tests that were missing, each on the plain classes (the
client on the in-process ``FakeTransport``, the alert engine and the memory guard with injected
clocks and measures). Keys that act only inside the actors are in ``tests/integration/test_config_keys.py``.
"""

from __future__ import annotations

import ast
import contextlib
import random
import threading
import time
import types
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from erlmcp_ray import memory_guard as mg
from erlmcp_ray.actors._alerts import Alerts
from erlmcp_ray.actors.options import shard_settings
from erlmcp_ray.client import Copy
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.alerts import AlertEngine
from erlmcp_ray.core.invalidation import INVALIDATE
from erlmcp_ray.core.shard_copy import ShardCopy
from erlmcp_ray.errors import MemoryPressureError, ReplicationError, UnavailableError
from erlmcp_ray.testing import FakeTransport
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests/unit/test_config_keys.py"
IT = "tests/integration/test_config_keys.py"

KEY_TESTS: dict[str, list[str]] = {
    # ---------------------------------------------------------------- memory_monitoring
    "memory_monitoring.enabled": [f"{HERE}::test_memory_monitoring_enabled_turns_the_node_checks_on_and_off"],
    "memory_monitoring.check_interval": [
        f"{HERE}::test_memory_monitoring_check_interval_is_how_long_a_node_must_stay_over",
        f"{HERE}::test_memory_monitoring_check_interval_paces_the_evaluations",
    ],
    "memory_monitoring.memory_threshold": [f"{HERE}::test_memory_monitoring_memory_threshold_decides_what_is_too_full"],
    "memory_monitoring.binary_threshold": [f"{HERE}::test_memory_monitoring_binary_threshold_decides_what_is_too_much"],
    "memory_monitoring.auto_gc": [
        f"{HERE}::test_memory_monitoring_auto_gc_collects_garbage_or_only_warns",
        "tests/integration/test_alerts.py::test_the_memory_monitor_collects_garbage_on_a_node_past_its_thresholds",
    ],
    # ---------------------------------------------------------------- memory_guard
    **{f"memory_guard.{kind}.{limit}": [f"{HERE}::test_memory_guard_limits_decide_whether_a_guarded_actor_ends"]
       for kind in ("context", "tool", "transport") for limit in ("max_heap_size", "max_bin_vheap_size")},
    # ---------------------------------------------------------------- distributed_memory
    "distributed_memory.consistency": [
        f"{HERE}::test_distributed_memory_consistency_is_the_level_of_domains_that_set_none"],
    "distributed_memory.replication_factor": [
        f"{HERE}::test_distributed_memory_replication_factor_is_the_copies_of_replicated_domains_that_set_none"],
    "distributed_memory.checkpoint_interval": [
        "tests/integration/test_checkpoints.py::test_periodic_checkpoints_keep_only_the_newest",
        f"{IT}::test_checkpoint_interval_takes_periodic_checkpoints_or_none",
    ],
    "distributed_memory.checkpoint_retention": [
        "tests/integration/test_checkpoints.py::test_periodic_checkpoints_keep_only_the_newest"],
    "distributed_memory.auto_select": [f"{IT}::test_the_selector_evaluates_only_with_both_switches_on_and_at_its_interval"],
    "distributed_memory.failure_timeout_ms": [f"{HERE}::test_failure_timeout_ms_sets_how_long_an_owner_serves_unconfirmed"],
    # ---------------------------------------------------------------- cache_coordinator
    "cache_coordinator.coherence_level": [f"{HERE}::test_coherence_level_is_what_a_put_does_to_other_clients_copies"],
    "cache_coordinator.invalidation_timeout": [
        f"{HERE}::test_invalidation_timeout_is_how_long_an_invalidation_waits_for_a_slow_client",
        "tests/integration/test_coordination.py::test_frozen_client_is_reported_missing_and_serves_nothing_stale",
    ],
    "cache_coordinator.lease_ms": [
        f"{HERE}::test_lease_ms_is_how_long_a_cached_copy_is_served_without_news",
        "tests/integration/test_coordination.py::test_a_dropped_invalidation_leaves_a_copy_stale_at_most_one_lease",
    ],
    # ---------------------------------------------------------------- persistence_selector
    "persistence_selector.auto_select": [
        f"{IT}::test_the_selector_evaluates_only_with_both_switches_on_and_at_its_interval"],
    "persistence_selector.evaluation_interval": [
        f"{IT}::test_the_selector_evaluates_only_with_both_switches_on_and_at_its_interval"],
    # ---------------------------------------------------------------- limits (per node)
    "limits.max_bytes": [
        f"{HERE}::test_limits_max_bytes_decides_when_a_node_sheds_and_refuses",
        "tests/integration/test_alerts.py::test_node_limits_evict_the_evictable_and_then_refuse_the_rest_until_deletes",
    ],
    "limits.max_entries": [f"{HERE}::test_limits_max_entries_counts_entries_on_a_node"],
    "limits.warn_percent": [f"{HERE}::test_limits_warn_percent_is_where_the_node_warning_fires"],
    # ---------------------------------------------------------------- domains.*
    "domains.*.backend": [
        f"{HERE}::test_domain_backend_replicated_keeps_data_through_an_owner_restart_memory_does_not",
        "tests/integration/test_durable.py::test_a_killed_one_copy_owner_comes_back_with_every_acknowledged_write",
    ],
    "domains.*.durability_requirement": [
        "tests/unit/test_auto_select.py::test_a_layout_gives_each_choice_its_copies_and_durable_mode"],
    "domains.*.max_bytes": [f"{HERE}::test_domain_max_bytes_is_where_a_domain_without_eviction_refuses_writes"],
    "domains.*.shards": [f"{HERE}::test_domain_shards_spread_keys_over_that_many_owners"],
    "domains.*.replication_factor": [f"{HERE}::test_domain_replication_factor_is_how_many_copies_take_a_strong_write"],
    "domains.*.min_insync": [f"{HERE}::test_domain_min_insync_is_how_many_copies_a_strong_write_needs"],
    "domains.*.consistency": [f"{HERE}::test_domain_consistency_is_the_level_of_calls_that_give_none"],
    "domains.*.staleness_ms": [
        f"{HERE}::test_domain_staleness_ms_is_how_old_a_replica_may_be_for_a_bounded_read",
        "tests/integration/test_domains.py::test_bounded_stale_never_returns_a_value_older_than_the_window",
    ],
    "domains.*.eviction": [
        f"{HERE}::test_domain_eviction_evicts_or_refuses_when_full",
        "tests/integration/test_eviction_wiring.py::test_a_full_evictable_domain_evicts_and_the_evictions_replicate",
        "tests/integration/test_eviction_wiring.py::test_non_evictable_domains_do_not_evict",
    ],
    "domains.*.default_ttl": [f"{HERE}::test_domain_default_ttl_expires_entries_put_without_a_ttl"],
    "domains.*.max_entries": [f"{HERE}::test_domain_max_entries_refuses_writes_past_that_many_entries"],
    "domains.*.durable": [f"{IT}::test_domain_durable_mode_decides_when_the_store_holds_a_write"],
    "domains.*.invalidate_source": [
        f"{HERE}::test_domain_invalidate_source_makes_an_invalidation_delete_the_entry",
        "tests/integration/test_coordination.py::test_invalidating_a_source_cache_also_removes_the_entry",
    ],
    # ---------------------------------------------------------------- durable
    "durable.kind": ["tests/unit/test_storage.py::test_open_store_follows_the_config"],
    "durable.path": ["tests/unit/test_storage.py::test_open_store_follows_the_config"],
    "durable.redis_url": ["tests/unit/test_storage.py::test_open_store_follows_the_config"],
    "durable.data_dir": ["tests/unit/test_storage.py::test_open_store_follows_the_config"],
    "durable.flush_ms": [f"{IT}::test_durable_flush_ms_is_how_soon_a_write_behind_change_is_stored"],
    "durable.max_backlog": [
        "tests/integration/test_durable.py::test_write_behind_holds_a_bounded_backlog_while_redis_is_down_and_loses_nothing"],
    # ---------------------------------------------------------------- client
    "client.l0_entries": [f"{HERE}::test_client_l0_entries_is_how_many_hot_entries_skip_the_l1"],
    "client.l1_max_bytes": [f"{HERE}::test_client_l1_max_bytes_bounds_what_a_client_caches"],
    "client.write_behind_interval_ms": [
        f"{HERE}::test_client_write_behind_interval_ms_is_how_long_a_write_is_buffered",
        f"{HERE}::test_client_write_behind_interval_ms_holds_for_a_write_that_finds_the_thread_idle",
    ],
    "client.write_behind_max_batch": [f"{HERE}::test_client_write_behind_max_batch_is_the_size_of_a_batch"],
    "client.call_timeout_s": [f"{HERE}::test_client_call_timeout_s_is_how_long_a_call_to_a_gone_owner_is_retried"],
    "client.poll_timeout_s": [f"{HERE}::test_client_poll_timeout_s_is_how_long_an_idle_poll_waits"],
    # ---------------------------------------------------------------- transport
    "transport.kind": [
        "tests/integration/test_direct.py::test_the_data_path_goes_over_the_endpoints",
        "tests/integration/test_direct.py::test_transport_kind_ray_serves_no_endpoint",
    ],
    "transport.max_frame": [
        "tests/integration/test_direct.py::test_transport_max_frame_cuts_a_larger_frame_and_the_client_sends_such_a_call_over_ray",
    ],
    "transport.spin_us": [
        "tests/integration/test_direct.py::test_transport_spin_us_busy_polls_for_the_copies_answers_never_the_coordinators",
    ],
    **{f"transport.tls_{part}": [
        "tests/integration/test_direct.py::test_transport_tls_encrypts_the_data_plane_and_refuses_plaintext",
        "tests/unit/test_direct_transport.py::test_tls_both_ways_and_a_peer_outside_the_cluster_ca_is_refused",
    ] for part in ("cert", "key", "ca")},
    # ---------------------------------------------------------------- alerts.*
    "alerts.*.metric": [f"{HERE}::test_alert_rule_keys_decide_what_fires"],
    "alerts.*.threshold": [f"{HERE}::test_alert_rule_keys_decide_what_fires"],
    "alerts.*.window": [
        f"{HERE}::test_alert_rule_keys_decide_what_fires",
        "tests/unit/test_alerts.py::test_a_rule_fires_only_after_the_metric_stayed_past_the_threshold_for_the_whole_window",
    ],
    "alerts.*.action": [f"{IT}::test_an_alert_action_evicts_or_only_reports"],
    "alerts.*.comparison": [f"{HERE}::test_alert_rule_keys_decide_what_fires"],
    "alerts.*.cooldown": ["tests/unit/test_alerts.py::test_the_cooldown_holds_back_a_second_firing"],
}


# =============================================================================== the meta-tests


def _models_in(annotation: object) -> list[tuple[str, type[BaseModel]]]:
    """``(suffix, model)`` for each model reachable in a field's type: ``""`` for the model itself,
    ``".*"`` per mapping value or sequence item on the way (``dict[str, DomainConfig]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _models_in(arg)]
    if origin is not None and args:
        items = args[1:] if origin is dict or (isinstance(origin, type) and issubclass(origin, dict)) else args
        return [(".*" + suffix, model) for arg in items if arg is not Ellipsis
                for suffix, model in _models_in(arg)]
    return []


def leaf_keys(model: type[BaseModel] = MemoryConfig, prefix: str = "") -> list[str]:
    """Every leaf key path of ``model``: ``memory_guard.context.max_heap_size``, ``domains.*.eviction``."""
    out = []
    for name, field in model.model_fields.items():
        nested = _models_in(field.annotation)
        if not nested:
            out.append(prefix + name)
        for suffix, sub in nested:
            out += leaf_keys(sub, f"{prefix}{name}{suffix}.")
    return out


@cache
def _tests_in(path: str) -> frozenset[str]:
    """``test_x`` and ``Class::test_x`` names defined in the test file ``path``."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    names = {node.name for node in tree.body if isinstance(node, funcs)}
    names |= {f"{node.name}::{item.name}" for node in tree.body if isinstance(node, ast.ClassDef)
              for item in node.body if isinstance(item, funcs)}
    return frozenset(name for name in names if name.rsplit("::", 1)[-1].startswith("test"))


def _missing_test(node_id: str) -> str | None:
    """Why ``node_id`` ("tests/x.py::test_y", "tests/x.py::Class::test_y", "...::test_y[param]") names
    no test, or None when it does."""
    path, sep, name = node_id.partition("::")
    if not sep or not name:
        return f"{node_id!r} is not 'file::test'"
    if not (ROOT / path).is_file():
        return f"{node_id!r}: no file {path}"
    if name.split("[", 1)[0] not in _tests_in(path):
        return f"{node_id!r}: {path} defines no test {name.split('[', 1)[0]!r}"
    return None


def test_the_key_walk_reaches_every_kind_of_key():
    keys = leaf_keys()
    assert len(keys) == len(set(keys))
    assert {"memory_monitoring.check_interval", "memory_guard.context.max_heap_size", "domains.*.eviction",
            "alerts.*.cooldown", "durable.redis_url", "client.l0_entries"} <= set(keys)
    assert not {"memory_guard.context", "domains", "alerts", "domains.*"} & set(keys)  # sections are no leaves


def test_every_key_of_the_model_has_a_behaviour_test():
    missing = [key for key in leaf_keys() if key not in KEY_TESTS]
    assert not missing, f"config keys with no test showing that they change behaviour: {missing}"


def test_every_key_of_the_registry_is_in_the_model():
    stale = sorted(set(KEY_TESTS) - set(leaf_keys()))
    assert not stale, f"KEY_TESTS names keys that MemoryConfig does not have: {stale}"


def test_every_key_names_tests_that_exist():
    problems = []
    for key, node_ids in KEY_TESTS.items():
        if not node_ids:
            problems.append(f"{key}: no test named")
        problems += [f"{key}: {why}" for n in node_ids if (why := _missing_test(n)) is not None]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_are_for():
    assert _missing_test(f"{HERE}::test_every_key_of_the_model_has_a_behaviour_test") is None
    assert _missing_test(f"{HERE}::test_memory_guard_limits_decide_whether_a_guarded_actor_ends[tool-x]") is None
    assert _missing_test("tests/unit/test_memory_guard.py::FakeExit::__call__") is not None  # not a test
    assert _missing_test(f"{HERE}::test_no_such_test") is not None
    assert _missing_test("tests/unit/no_such_file.py::test_x") is not None
    assert _missing_test(HERE) is not None

    class Extra(BaseModel):
        rules: tuple[MemoryConfig, ...] = ()
        by_name: dict[str, MemoryConfig | None] = {}

    keys = leaf_keys(Extra)
    assert "rules.*.client.l0_entries" in keys and "by_name.*.domains.*.shards" in keys


# =============================================================================== helpers


@contextlib.contextmanager
def _clients(config: dict, n: int = 1, **fake_options):
    """``(fake, client, ...)``: ``n`` clients of one in-process system running ``config``."""
    fake = FakeTransport(config, **fake_options)
    clients = [fake.client() for _ in range(n)]
    try:
        yield (fake, *clients)
    finally:
        for c in clients:
            c.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# =============================================================================== limits


def _budget(**limits):
    """The supervisor's node limits as ``limits`` configures them."""
    cfg = MemoryConfig.load({"limits": limits, "alerts": []})
    return Alerts(cfg, "ns", lambda: cfg).budget


def _copies(nbytes: int, entries: int, evictable: bool) -> dict:
    from erlmcp_ray.core.node_limits import CopyUsage

    return {"node-1": [CopyUsage(("d", 0), 0, nbytes, entries, evictable)]}


def test_limits_max_bytes_decides_when_a_node_sheds_and_refuses():
    held = 950_000  # bytes on one node
    small, large = _budget(max_bytes=1_000_000), _budget(max_bytes=10_000_000)
    assert [e.shares for e in small.observe(_copies(held, 10, evictable=True))] == [{("d", 0): (350_000, 0)}]
    assert large.observe(_copies(held, 10, evictable=True)) == []
    small, large = _budget(max_bytes=1_000_000), _budget(max_bytes=10_000_000)
    small.observe(_copies(held, 10, evictable=False))
    large.observe(_copies(held, 10, evictable=False))
    assert set(small.refused()) == {("d", 0)} and large.refused() == {}


def test_limits_max_entries_counts_entries_on_a_node():
    small, large = _budget(max_entries=100), _budget(max_entries=100_000)
    assert [e.shares for e in small.observe(_copies(1000, 95, evictable=True))] == [{("d", 0): (0, 35)}]
    assert large.observe(_copies(1000, 95, evictable=True)) == []


def test_limits_warn_percent_is_where_the_node_warning_fires():
    def fired(warn_percent: float) -> list[str]:
        clock = Clock()
        cfg = MemoryConfig.load({"limits": {"warn_percent": warn_percent}, "alerts": [],
                                 "memory_monitoring": {"check_interval": 1000}})
        engine = Alerts(cfg, "ns", lambda: cfg, clock=clock).engine
        sample = {("node_usage", "node-1"): 0.70}  # 70 % of the node limits
        engine.observe(sample)
        clock.t += 1.0
        return [e.metric for e in engine.observe(sample) if e.state == "firing"]

    assert fired(0.6) == ["node_usage"]
    assert fired(0.8) == []


# =============================================================================== memory_monitoring


def _monitor(clock: Clock, **monitoring) -> Alerts:
    """The supervisor's alert wiring for ``memory_monitoring`` (no user rules), on ``clock``."""
    cfg = MemoryConfig.load({"memory_monitoring": monitoring, "alerts": []})
    return Alerts(cfg, "ns", lambda: cfg, clock=clock)


def _node(usage: float = 0.0, binary: int = 0) -> dict:
    return {("node_memory_usage", "node-1"): usage, ("node_binary_bytes", "node-1"): binary}


def _fired_after(alerts: Alerts, clock: Clock, samples: dict, seconds: float) -> list[tuple[str, str]]:
    """``(metric, action)`` of what fires when ``samples`` were seen now and again ``seconds`` later."""
    alerts.engine.observe(samples)
    clock.t += seconds
    return sorted((e.metric, e.action) for e in alerts.engine.observe(samples) if e.state == "firing")


def test_memory_monitoring_enabled_turns_the_node_checks_on_and_off():
    over = _node(usage=0.95, binary=80_000_000)
    clock = Clock()
    assert [m for m, _ in _fired_after(_monitor(clock, enabled=True), clock, over, 30)] == [
        "node_binary_bytes", "node_memory_usage"]
    clock = Clock()
    assert _fired_after(_monitor(clock, enabled=False), clock, over, 30) == []


def test_memory_monitoring_check_interval_is_how_long_a_node_must_stay_over():
    over = _node(usage=0.95)
    clock = Clock()
    assert _fired_after(_monitor(clock, check_interval=1000), clock, over, 1.0) != []
    clock = Clock()
    assert _fired_after(_monitor(clock, check_interval=5000), clock, over, 1.0) == []  # not over for long enough


def test_memory_monitoring_check_interval_paces_the_evaluations():
    def evaluations_in(seconds: float, check_interval: int) -> int:
        # disabled, no rules: an evaluation samples nothing, so it needs no Ray
        cfg = MemoryConfig.load({"memory_monitoring": {"enabled": False, "check_interval": check_interval},
                                 "alerts": []})
        alerts = Alerts(cfg, "ns", lambda: cfg)
        stop = threading.Event()
        runner = threading.Thread(target=alerts.run, args=(stop,))
        runner.start()
        time.sleep(seconds)
        stop.set()
        runner.join(5)
        return alerts.evaluations

    assert evaluations_in(0.6, check_interval=50) >= 4
    assert evaluations_in(0.6, check_interval=60_000) == 0


def test_memory_monitoring_memory_threshold_decides_what_is_too_full():
    seventy_percent = _node(usage=0.70)
    clock = Clock()
    assert _fired_after(_monitor(clock, memory_threshold=0.6), clock, seventy_percent, 30) == [
        ("node_memory_usage", "force_gc_node")]
    clock = Clock()
    assert _fired_after(_monitor(clock, memory_threshold=0.8), clock, seventy_percent, 30) == []


def test_memory_monitoring_binary_threshold_decides_what_is_too_much():
    five_mb = _node(binary=5_000_000)
    clock = Clock()
    assert _fired_after(_monitor(clock, binary_threshold="1MB"), clock, five_mb, 30) == [
        ("node_binary_bytes", "force_gc_node")]
    clock = Clock()
    assert _fired_after(_monitor(clock, binary_threshold="10MB"), clock, five_mb, 30) == []


def test_memory_monitoring_auto_gc_collects_garbage_or_only_warns():
    # force_gc_node makes the supervisor collect garbage in the node's shard copies (the integration
    # test in tests/integration/test_alerts.py shows it doing so); alert_operator only logs the event.
    over = _node(usage=0.95)
    clock = Clock()
    assert _fired_after(_monitor(clock, auto_gc=True), clock, over, 30) == [("node_memory_usage", "force_gc_node")]
    clock = Clock()
    assert _fired_after(_monitor(clock, auto_gc=False), clock, over, 30) == [("node_memory_usage", "alert_operator")]


# =============================================================================== memory_guard


@pytest.mark.parametrize("limit", ["max_heap_size", "max_bin_vheap_size"])
@pytest.mark.parametrize("kind", ["context", "tool", "transport"])
def test_memory_guard_limits_decide_whether_a_guarded_actor_ends(kind, limit):
    """An actor guarded with the config that uses 3 MB of heap and 3 MB of binaries is ended under a
    2 MB limit and left alone under a 4 MB one."""

    def ended_under(value: str) -> bool:
        exits: list[int] = []
        cfg = MemoryConfig.load({"memory_guard": {kind: {limit: value}}})
        watcher = mg.guard_current_actor(kind, 60.0, config=cfg, measure=lambda: (3_000_000, 3_000_000),
                                         exit_process=exits.append)
        watcher.stop()
        watcher.poll()  # the thread may have been stopped before its first poll: this one decides
        return exits == [1]

    try:
        assert ended_under("2MB")
        assert not ended_under("4MB")
    finally:
        mg.disable_guard()


# =============================================================================== distributed_memory


@pytest.mark.parametrize(("level", "returns_a_version"), [("eventual", False), ("strong", True)])
def test_distributed_memory_consistency_is_the_level_of_domains_that_set_none(level, returns_a_version):
    cfg = {"distributed_memory": {"consistency": level}, "domains": {"d": {"backend": "memory", "max_bytes": "1MB"}}}
    with _clients(cfg) as (_fake, c):
        version = c.put("d", "k", 1)  # no consistency given, and the domain sets none
        assert (version is not None) is returns_a_version  # an eventual put is only buffered: no version yet
        assert c.counters["strong_writes"] == (1 if returns_a_version else 0)
        assert c.counters["buffered_puts"] == (0 if returns_a_version else 1)


def _copies_holding(fake: FakeTransport, domain: str, key: str) -> int:
    return sum(1 for where, copy in fake.copies.items() if where.domain == domain and copy.state.get(key) is not None)


@pytest.mark.parametrize("copies", [2, 3])
def test_distributed_memory_replication_factor_is_the_copies_of_replicated_domains_that_set_none(copies):
    cfg = {"distributed_memory": {"replication_factor": copies},
           "domains": {"d": {"backend": "replicated", "max_bytes": "1MB"}}}
    with _clients(cfg) as (fake, c):
        c.put("d", "k", 1, consistency="strong")
        assert _copies_holding(fake, "d", "k") == copies


def test_failure_timeout_ms_sets_how_long_an_owner_serves_unconfirmed():
    """An owner with replicas serves only while its lease (half the failure timeout) holds: 1.5 s after
    the last confirmation it refuses under a 2 s timeout and still serves under a 10 s one."""

    def serves_after(seconds: float, failure_timeout_ms: int) -> bool:
        cfg = MemoryConfig.load({"distributed_memory": {"failure_timeout_ms": failure_timeout_ms},
                                 "domains": {"d": {"backend": "replicated", "max_bytes": "1MB"}}})
        clock = Clock()
        owner = ShardCopy("d", 0, 0, cfg.replication_factor_for("d"), 1, shard_settings(cfg, "d"), clock=clock)
        owner.check_owner()
        clock.t += seconds
        try:
            owner.check_owner()
        except UnavailableError:
            return False
        return True

    assert not serves_after(1.5, failure_timeout_ms=2_000)
    assert serves_after(1.5, failure_timeout_ms=10_000)


# =============================================================================== cache_coordinator


def test_coherence_level_is_what_a_put_does_to_other_clients_copies():
    def reader_copy_after_put(level: str) -> object:
        cfg = {"cache_coordinator": {"coherence_level": level}, "client": {"poll_timeout_s": 0.05}}
        with _clients(cfg, 2) as (_fake, writer, reader):
            writer.put("shared", "k", "old", consistency="strong")
            assert reader.get("shared", "k") == "old"
            writer.put("shared", "k", "new", consistency="strong")  # no coherence= given
            if level == "relaxed":  # give an invalidation every chance to arrive
                for _ in range(3):
                    wait_for(lambda s=reader.counters["polls"]: reader.counters["polls"] > s, what="a poll")
            return reader.get("shared", "k", local_only=True)

    assert reader_copy_after_put("strong") is None  # dropped before put returned
    assert reader_copy_after_put("relaxed") == "old"  # left alone: it ages out with the lease


def test_invalidation_timeout_is_how_long_an_invalidation_waits_for_a_slow_client():
    """A client whose coherence thread is stuck for 1 s on the invalidation: under a 0.3 s timeout
    ``invalidate`` returns without its acknowledgement, under a 3 s timeout it waits for it."""

    def slow_client_acked(timeout_ms: int) -> bool:
        gate = threading.Event()

        def stuck_on_the_invalidation(messages):
            if any(m[2] == "k" and m[6] == INVALIDATE for m in messages):
                gate.wait(10)
            return messages

        cfg = {"cache_coordinator": {"invalidation_timeout": timeout_ms}, "client": {"poll_timeout_s": 0.05}}
        fake = FakeTransport(cfg)
        writer, slow = fake.client(), fake.client(poll_hook=stuck_on_the_invalidation)
        try:
            threading.Timer(1.0, gate.set).start()
            result = writer.coordinator.invalidate("shared", "k")
            assert slow.client_id in result.acked + result.missing
            return result.complete
        finally:
            gate.set()
            writer.close()
            slow.close()

    assert not slow_client_acked(300)
    assert slow_client_acked(3_000)


def test_lease_ms_is_how_long_a_cached_copy_is_served_without_news():
    def cached_after(seconds: float, lease_ms: int) -> object:
        cfg = {"cache_coordinator": {"lease_ms": lease_ms}, "client": {"poll_timeout_s": 0.05}}
        with _clients(cfg, 2) as (_fake, writer, reader):
            writer.put("shared", "k", "v", consistency="strong")
            assert reader.get("shared", "k") == "v"
            time.sleep(seconds)  # nothing happens to "k" meanwhile; the reader keeps polling
            return reader.get("shared", "k", local_only=True)

    assert cached_after(0.6, lease_ms=400) is None  # older than the lease: not served
    assert cached_after(0.6, lease_ms=30_000) == "v"


# =============================================================================== domains.*


@pytest.mark.parametrize(("backend", "kept"), [("replicated", True), ("memory", False)])
def test_domain_backend_replicated_keeps_data_through_an_owner_restart_memory_does_not(backend, kept):
    with _clients({"domains": {"d": {"backend": backend, "max_bytes": "1MB"}}}) as (fake, c):
        c.put("d", "k", "v", consistency="strong")
        fake.restart(Copy("d", 0, 0))  # a new process, recovered from a live peer if there is one
        assert (c.get("d", "k", consistency="strong") == "v") is kept


def _strong_puts_until_refused(c, domain: str, n: int, value: object = 1) -> int:
    for i in range(n):
        try:
            c.put(domain, f"k{i:03d}", value, consistency="strong")
        except MemoryPressureError:
            return i
    return n


def test_domain_max_bytes_is_where_a_domain_without_eviction_refuses_writes():
    def accepted(max_bytes: str) -> int:
        with _clients({"domains": {"d": {"backend": "memory", "max_bytes": max_bytes}}}) as (_fake, c):
            return _strong_puts_until_refused(c, "d", 100, "x" * 100)

    assert 5 < accepted("4KB") < 40
    assert accepted("1MB") == 100


@pytest.mark.parametrize("shards", [1, 4])
def test_domain_shards_spread_keys_over_that_many_owners(shards):
    with _clients({"domains": {"d": {"backend": "memory", "max_bytes": "1MB", "shards": shards}}}) as (fake, c):
        for i in range(40):
            c.put("d", f"k{i}", i, consistency="strong")
        holding = [s for s in range(shards) if len(list(fake.owner("d", s).state.keys()))]
        assert len(holding) == shards


@pytest.mark.parametrize("copies", [1, 3])
def test_domain_replication_factor_is_how_many_copies_take_a_strong_write(copies):
    cfg = {"distributed_memory": {"replication_factor": 2},
           "domains": {"d": {"backend": "replicated", "max_bytes": "1MB", "replication_factor": copies}}}
    with _clients(cfg) as (fake, c):
        c.put("d", "k", 1, consistency="strong")
        assert _copies_holding(fake, "d", "k") == copies


@pytest.mark.parametrize(("min_insync", "acknowledged"), [(2, True), (3, False)])
def test_domain_min_insync_is_how_many_copies_a_strong_write_needs(min_insync, acknowledged):
    cfg = {"domains": {"d": {"backend": "replicated", "max_bytes": "1MB", "replication_factor": 3,
                             "min_insync": min_insync}},
           "client": {"call_timeout_s": 1.0}}
    with _clients(cfg) as (fake, c):
        fake.down(Copy("d", 0, 2))  # one replica of three cannot answer
        if acknowledged:
            c.put("d", "k", 1, consistency="strong")
        else:
            with pytest.raises(ReplicationError):
                c.put("d", "k", 1, consistency="strong")
        fake.up(Copy("d", 0, 2))


@pytest.mark.parametrize(("level", "returns_a_version"), [("eventual", False), ("strong", True)])
def test_domain_consistency_is_the_level_of_calls_that_give_none(level, returns_a_version):
    cfg = {"distributed_memory": {"consistency": "bounded_stale"},
           "domains": {"d": {"backend": "memory", "max_bytes": "1MB", "consistency": level}}}
    with _clients(cfg) as (_fake, c):
        assert (c.put("d", "k", 1) is not None) is returns_a_version
        assert c.counters["strong_writes"] == (1 if returns_a_version else 0)


@pytest.mark.parametrize(("staleness_ms", "read"), [(60_000, "v1"), (100, "v2")])
def test_domain_staleness_ms_is_how_old_a_replica_may_be_for_a_bounded_read(staleness_ms, read):
    """The replica last heard from its owner 0.4 s ago (it holds v1, the owner v2): a 60 s window
    takes its answer, a 100 ms window sends the read on to the owner."""
    cfg = {"domains": {"d": {"backend": "replicated", "max_bytes": "1MB", "staleness_ms": staleness_ms}}}
    with _clients(cfg, 2) as (fake, writer, reader):
        writer.put("d", "k", "v1", consistency="strong")
        fake.hold("d", 0)
        writer.put("d", "k", "v2", consistency="bounded_stale")  # the owner only
        time.sleep(0.4)
        assert reader.get("d", "k", consistency="bounded_stale") == read
        assert reader.counters["stale_replica_fallbacks"] == (1 if read == "v2" else 0)
        fake.release("d", 0)


def test_domain_eviction_evicts_or_refuses_when_full():
    def fill(eviction: str) -> tuple[int, object, object]:
        cfg = {"domains": {"d": {"backend": "memory", "max_bytes": "4KB", "eviction": eviction}}}
        with _clients(cfg) as (_fake, c):
            accepted = _strong_puts_until_refused(c, "d", 100, "x" * 100)
            return accepted, c.get("d", "k000", consistency="strong"), c.get("d", "k099", consistency="strong")

    accepted, first, last = fill("none")
    assert accepted < 100 and first is not None and last is None  # full: refused the rest
    accepted, first, last = fill("lru")
    assert accepted == 100 and first is None and last is not None  # full: dropped the oldest


@pytest.mark.parametrize(("default_ttl", "alive"), [(0.2, False), (None, True)])
def test_domain_default_ttl_expires_entries_put_without_a_ttl(default_ttl, alive):
    cfg = {"domains": {"d": {"backend": "memory", "max_bytes": "1MB", "default_ttl": default_ttl}}}
    with _clients(cfg) as (_fake, c):
        c.put("d", "k", "v", consistency="strong")  # no ttl given
        time.sleep(0.4)
        assert (c.get("d", "k", consistency="strong") == "v") is alive


def test_domain_max_entries_refuses_writes_past_that_many_entries():
    def accepted(**max_entries) -> int:
        with _clients({"domains": {"d": {"backend": "memory", "max_bytes": "1MB", **max_entries}}}) as (_fake, c):
            return _strong_puts_until_refused(c, "d", 30)

    assert accepted(max_entries=10) == 10
    assert accepted() == 30  # the bytes alone are far from full


@pytest.mark.parametrize(("source", "left_in_the_shard"), [(True, None), (False, "v")])
def test_domain_invalidate_source_makes_an_invalidation_delete_the_entry(source, left_in_the_shard):
    cfg = {"domains": {"d": {"backend": "memory", "max_bytes": "1MB", "invalidate_source": source}}}
    with _clients(cfg) as (_fake, c):
        c.put("d", "k", "v", consistency="strong")
        c.coordinator.invalidate("d", "k")
        assert c.get("d", "k", consistency="strong") == left_in_the_shard


# =============================================================================== client


def test_client_l0_entries_is_how_many_hot_entries_skip_the_l1():
    def hits(l0_entries: int) -> tuple[int, int]:
        with _clients({"client": {"l0_entries": l0_entries}}) as (_fake, c):
            c.put("shared", "a", 1, consistency="strong")
            c.put("shared", "b", 2, consistency="strong")
            before = c.stats()["cache"]
            for _ in range(5):
                assert (c.get("shared", "a"), c.get("shared", "b")) == (1, 2)
            after = c.stats()["cache"]
            return after["l0_hits"] - before["l0_hits"], after["l1_hits"] - before["l1_hits"]

    l0, l1 = hits(256)
    assert l0 >= 8 and l1 <= 2  # both stay hot
    l0, l1 = hits(1)
    assert l0 == 0 and l1 == 10  # each read pushes the other key out of the one-entry L0


def test_client_l1_max_bytes_bounds_what_a_client_caches():
    def cached(l1_max_bytes: str) -> tuple[int, int]:
        # a one-entry L0 (which holds entries whatever their size): what stays is what the L1 kept
        with _clients({"client": {"l1_max_bytes": l1_max_bytes, "l0_entries": 1}}) as (_fake, c):
            for i in range(40):
                c.put("shared", f"k{i}", "x" * 1000, consistency="strong")
            for i in range(40):
                c.get("shared", f"k{i}", consistency="strong")
            kept = sum(c.get("shared", f"k{i}", local_only=True) is not None for i in range(40))
            return kept, c.stats()["cache"]["evictions"]

    kept, evictions = cached("64MB")
    assert kept == 40 and evictions == 0
    kept, evictions = cached("16KB")
    assert kept < 16 and evictions > 0


def test_client_write_behind_interval_ms_is_how_long_a_write_is_buffered():
    """Eventual puts, one a millisecond for 0.6 s, to owners that take 10 ms per write: what arrives
    while a batch is being sent waits for the interval, so they go out in many small batches under a
    2 ms interval and in a few large ones under a 200 ms interval. (A write that finds the thread
    idle goes out within 50 ms whatever the interval -- reported on issue 12.)"""

    def slow_owner(_target, method, _args):
        if method == "write":
            time.sleep(0.01)

    def batches(interval_ms: float) -> int:
        cfg = {"client": {"write_behind_interval_ms": interval_ms}, "domains": {"shared": {"shards": 1}}}
        with _clients(cfg, before_call=slow_owner) as (_fake, c):
            deadline, i = time.monotonic() + 0.6, 0
            while time.monotonic() < deadline:
                c.put("shared", f"k{i % 20}", i)  # a buffer of 20 keys at most: never full
                i += 1
                time.sleep(0.001)
            c.flush(timeout=10)
            return c.counters["batches_sent"]

    assert batches(2) >= 20
    assert batches(200) <= 6


def test_client_write_behind_interval_ms_holds_for_a_write_that_finds_the_thread_idle():
    """An eventual put made while the write-behind thread is idle reaches its owner one interval
    later: a few ms at 2 ms, ~200 ms at 200 ms (it waited for a fixed 50 ms idle poll whatever the
    interval, until the first write woke the thread)."""

    def waits(interval_ms: float) -> list[float]:
        rng = random.Random(12)
        cfg = {"client": {"write_behind_interval_ms": interval_ms}, "domains": {"shared": {"shards": 1}}}
        with _clients(cfg) as (fake, c):
            out = []
            for i in range(6):
                time.sleep(0.1 + rng.random() * 0.05)  # idle, at a random point of the thread's wait
                sent = fake.calls_snapshot().get("write", 0)
                t0 = time.monotonic()
                c.put("shared", f"k{i}", i)
                wait_for(lambda n=sent: fake.calls_snapshot().get("write", 0) > n, interval=0.0005, what="the send")
                out.append(time.monotonic() - t0)
            return out

    fast, slow = waits(2), waits(200)
    assert max(fast) < 0.02, [round(w * 1000, 1) for w in fast]
    assert min(slow) > 0.15, [round(w * 1000, 1) for w in slow]


def test_client_write_behind_max_batch_is_the_size_of_a_batch():
    def batches(max_batch: int) -> int:
        cfg = {"client": {"write_behind_max_batch": max_batch, "write_behind_interval_ms": 60_000},
               "domains": {"shared": {"shards": 1}}}
        with _clients(cfg) as (_fake, c):
            for i in range(12):
                c.put("shared", f"k{i}", i)
            c.flush(timeout=10)
            return c.counters["batches_sent"]

    assert batches(1024) == 1
    assert batches(4) == 3


def test_client_call_timeout_s_is_how_long_a_call_to_a_gone_owner_is_retried():
    def gives_up_after(call_timeout_s: float) -> float:
        cfg = {"client": {"call_timeout_s": call_timeout_s}, "domains": {"shared": {"shards": 1}}}
        with _clients(cfg) as (fake, c):
            fake.down(Copy("shared", 0, 0))
            t0 = time.monotonic()
            with pytest.raises(UnavailableError):
                c.get("shared", "k", consistency="strong")
            fake.up(Copy("shared", 0, 0))
            return time.monotonic() - t0

    assert gives_up_after(0.3) < 1.0
    assert gives_up_after(2.0) > 1.5


def test_client_poll_timeout_s_is_how_long_an_idle_poll_waits():
    def polls_in(seconds: float, poll_timeout_s: float) -> int:
        with _clients({"client": {"poll_timeout_s": poll_timeout_s}}) as (_fake, c):
            start = c.counters["polls"]
            time.sleep(seconds)
            return c.counters["polls"] - start

    # (the in-process coordinator holds an idle poll for at most 0.2 s; the actor for the whole timeout)
    assert polls_in(0.6, poll_timeout_s=0.02) >= 10
    assert polls_in(0.6, poll_timeout_s=1.0) <= 4


# =============================================================================== alerts.*

_RULE = {"metric": "memory_usage", "threshold": 0.5, "window": 1000, "action": "alert_operator"}


@pytest.mark.parametrize(("key", "fires", "quiet"), [
    ("metric", "memory_usage", "cache_hit_rate"),
    ("threshold", 0.5, 0.9),
    ("window", 1000, 10_000),
    ("comparison", "above", "below"),
])
def test_alert_rule_keys_decide_what_fires(key, fires, quiet):
    """A domain at 70 % of its memory, seen twice one second apart: the rule fires with the first value
    of ``key`` and not with the second (everything else as in ``_RULE``)."""

    def fired(value: object) -> list[str]:
        clock = Clock()
        engine = AlertEngine(MemoryConfig.load({"alerts": [{**_RULE, key: value}]}).alerts, clock=clock)
        engine.observe({("memory_usage", "notes"): 0.7})
        clock.t += 1.0
        return [e.subject for e in engine.observe({("memory_usage", "notes"): 0.7}) if e.state == "firing"]

    assert fired(fires) == ["notes"]
    assert fired(quiet) == []
