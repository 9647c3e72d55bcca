"""MemoryConfig: the spec's defaults, loading from dicts and files, merging, and error paths."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from erlmcp_ray.config import (
    AlertRule,
    Backend,
    CoherenceLevel,
    Consistency,
    DomainConfig,
    DurableKind,
    EvictionPolicyName,
    GuardLimits,
    MemoryConfig,
    parse_size,
)
from erlmcp_ray.errors import ConfigError, InvalidConsistencyError, UnknownDomainError

MiB = 1024 * 1024
GiB = 1024 * MiB

SPEC_DOMAINS = {
    # name: (backend, max_bytes) from the spec's Memory Domains table and Per-Node Limits
    "session": (Backend.REPLICATED, 100 * MiB),
    "shared": (Backend.REPLICATED, 200 * MiB),
    "registry": (Backend.MEMORY, 50 * MiB),
    "cache": (Backend.MEMORY, 300 * MiB),
    "ephemeral": (Backend.MEMORY, 50 * MiB),
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults


def test_defaults_are_the_spec_numbers():
    cfg = MemoryConfig.load()
    assert cfg.limits.max_bytes == GiB
    assert cfg.limits.max_entries == 100_000
    assert cfg.limits.warn_percent == 0.80
    mon = cfg.memory_monitoring
    assert (mon.enabled, mon.check_interval, mon.memory_threshold) == (True, 30_000, 0.80)
    assert (mon.binary_threshold, mon.auto_gc) == (50_000_000, True)
    guard = cfg.memory_guard
    assert guard.context == GuardLimits(max_heap_size=100_000_000, max_bin_vheap_size=50_000_000)
    assert guard.tool == GuardLimits(max_heap_size=50_000_000, max_bin_vheap_size=25_000_000)
    assert guard.transport == GuardLimits(max_heap_size=30_000_000, max_bin_vheap_size=15_000_000)
    dm = cfg.distributed_memory
    assert (dm.consistency, dm.replication_factor, dm.checkpoint_interval, dm.auto_select) == (
        Consistency.EVENTUAL,
        2,
        300_000,
        True,
    )
    cc = cfg.cache_coordinator
    assert cc.coherence_level is CoherenceLevel.EVENTUAL
    assert (cc.invalidation_timeout, cc.lease_ms) == (5000, 10_000)
    ps = cfg.persistence_selector
    assert (ps.auto_select, ps.evaluation_interval) == (True, 300_000)
    assert cfg.durable.kind is DurableKind.SQLITE and cfg.durable.redis_url is None
    assert cfg.client.l0_entries == 256 and cfg.client.l1_max_bytes == 64 * MiB
    assert cfg.alerts == (
        AlertRule(metric="memory_usage", threshold=0.90, window=60_000, action="trigger_eviction", comparison="above"),
        AlertRule(metric="cache_hit_rate", threshold=0.50, window=300_000, action="alert_operator", comparison="below"),
    )
    assert cfg == MemoryConfig() == MemoryConfig.load({})


def test_default_domains_follow_the_spec_table():
    cfg = MemoryConfig.load()
    assert {name: (d.backend, d.max_bytes) for name, d in cfg.domains.items()} == SPEC_DOMAINS
    assert cfg.domains["session"].shards == 2 and cfg.domains["shared"].shards == 2
    assert cfg.consistency_for("session") is Consistency.BOUNDED_STALE
    assert cfg.consistency_for("shared") is Consistency.EVENTUAL  # inherited
    assert cfg.consistency_for("registry") is Consistency.STRONG
    assert cfg.domains["cache"].eviction is EvictionPolicyName.LRU and cfg.domains["cache"].invalidate_source
    eph = cfg.domains["ephemeral"]
    assert (eph.eviction, eph.default_ttl, eph.invalidate_source) == (EvictionPolicyName.LRU, 300.0, True)
    assert cfg.domains["registry"].eviction is EvictionPolicyName.NONE
    assert [cfg.replication_factor_for(n) for n in SPEC_DOMAINS] == [2, 2, 1, 1, 1]
    assert [cfg.min_insync_for(n) for n in SPEC_DOMAINS] == [2, 2, 1, 1, 1]


def test_every_field_has_a_description():
    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
        for field in model.model_fields.values():
            inner = field.annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner)

    walk(MemoryConfig)
    walk(DomainConfig)
    walk(AlertRule)


def test_models_are_frozen():
    cfg = MemoryConfig.load()
    with pytest.raises(ValidationError):
        cfg.limits.max_entries = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- loading


def test_load_from_dict_and_inheritance():
    cfg = MemoryConfig.load(
        {
            "distributed_memory": {"consistency": "STRONG", "replication_factor": 3},
            "cache_coordinator": {"coherence_level": "relaxed", "invalidation_timeout": 2000},
            "limits": {"max_entries": 5000},
        }
    )
    assert cfg.distributed_memory.consistency is Consistency.STRONG
    assert cfg.cache_coordinator.coherence_level is CoherenceLevel.RELAXED
    assert cfg.cache_coordinator.lease_ms == 10_000  # untouched siblings keep their defaults
    assert cfg.limits.max_entries == 5000 and cfg.limits.max_bytes == GiB
    assert cfg.consistency_for("shared") is Consistency.STRONG
    assert cfg.replication_factor_for("session") == 3 and cfg.min_insync_for("session") == 3
    assert cfg.replication_factor_for("cache") == 1


def test_load_returns_a_config_as_is():
    cfg = MemoryConfig.load({"limits": {"max_entries": 7}})
    assert MemoryConfig.load(cfg) is cfg


def test_load_toml_file(tmp_path):
    path = write(
        tmp_path,
        "erlmcp.toml",
        """
        [distributed_memory]
        consistency = "bounded-stale"
        checkpoint_interval = 0

        [limits]
        max_bytes = "2GiB"

        [domains.session]
        max_bytes = "150MB"

        [domains.embeddings]
        backend = "mnesia"
        max_bytes = "1GB"
        shards = 4
        min_insync = 1
        """,
    )
    for source in (path, str(path)):
        cfg = MemoryConfig.load(source)
        assert cfg.distributed_memory.consistency is Consistency.BOUNDED_STALE
        assert cfg.distributed_memory.checkpoint_interval == 0
        assert cfg.limits.max_bytes == 2 * GiB
        assert cfg.domains["session"].max_bytes == 150 * MiB
        emb = cfg.domain("embeddings")
        assert (emb.backend, emb.max_bytes, emb.shards) == (Backend.REPLICATED, GiB, 4)
        assert cfg.replication_factor_for("embeddings") == 2 and cfg.min_insync_for("embeddings") == 1


def test_load_yaml_file_with_wrapper_key(tmp_path):
    text = """
        erlmcp_ray:
          cache_coordinator:
            coherence_level: strong
          durable:
            kind: redis
            redis_url: redis://localhost:6379/0
          domains:
            registry:
              backend: ETS
        other_tool:
          anything: goes
        """
    for suffix in (".yaml", ".yml"):
        cfg = MemoryConfig.load(write(tmp_path, f"cfg{suffix}", text))
        assert cfg.cache_coordinator.coherence_level is CoherenceLevel.STRONG
        assert cfg.durable.kind is DurableKind.REDIS
        assert cfg.durable.redis_url == "redis://localhost:6379/0"
        assert cfg.domains["registry"].backend is Backend.MEMORY


def test_load_toml_with_wrapper_key_and_empty_yaml(tmp_path):
    toml = write(tmp_path, "c.toml", '[erlmcp_ray.limits]\nmax_entries = 42\n')
    assert MemoryConfig.load(toml).limits.max_entries == 42
    assert MemoryConfig.load(write(tmp_path, "empty.yaml", "")) == MemoryConfig()


@pytest.mark.parametrize(("name", "backend"), [("ets", "memory"), ("DETS", "disk"), ("Mnesia", "replicated")])
def test_spec_backend_names_are_accepted(name, backend):
    cfg = MemoryConfig.load({"domains": {"extra": {"backend": name, "max_bytes": 1024}}})
    assert cfg.domains["extra"].backend is Backend(backend)


# --------------------------------------------------------------------------- merging


def test_domain_override_changes_only_given_fields():
    cfg = MemoryConfig.load({"domains": {"session": {"max_bytes": "10MiB"}}})
    session = cfg.domains["session"]
    assert session.max_bytes == 10 * MiB
    assert (session.backend, session.shards, session.consistency) == (
        Backend.REPLICATED,
        2,
        Consistency.BOUNDED_STALE,
    )
    assert set(cfg.domains) == set(SPEC_DOMAINS)
    assert cfg.domains["cache"] == MemoryConfig().domains["cache"]


def test_user_domain_is_added_with_its_own_defaults():
    cfg = MemoryConfig.load({"domains": {"tool_results": {"max_bytes": "5MB", "eviction": "LFU"}}})
    assert set(cfg.domains) == set(SPEC_DOMAINS) | {"tool_results"}
    tool = cfg.domain("tool_results")
    # No backend set: the persistence selector chooses it, starting from memory.
    assert tool.backend is None and cfg.backend_for("tool_results") is Backend.MEMORY
    assert cfg.auto_domains() == ["tool_results"]
    assert (cfg.backend_for("tool_results"), tool.max_bytes, tool.eviction, tool.shards) == (
        Backend.MEMORY,
        5 * MiB,
        EvictionPolicyName.LFU,
        1,
    )
    assert cfg.consistency_for("tool_results") is Consistency.EVENTUAL


def test_domain_config_objects_merge_too():
    cfg = MemoryConfig(domains={"session": DomainConfig(backend="mnesia", max_bytes=1024)})
    assert cfg.domains["session"].max_bytes == 1024
    assert cfg.domains["session"].shards == 2  # not given, so the default domain's value stays


def test_spec_memory_limit_shape_is_folded():
    # The spec's "Starting the Memory System" example, as a dict.
    cfg = MemoryConfig.load(
        {
            "consistency": "eventual",
            "replication_factor": 3,
            "memory_limit": {
                "max_bytes": 1024 * 1024 * 1024,
                "max_entries": 500,
                "domain_limits": {"session": {"max_bytes": 64 * MiB}},
            },
        }
    )
    assert cfg.limits.max_bytes == GiB and cfg.limits.max_entries == 500
    assert cfg.domains["session"].max_bytes == 64 * MiB
    assert cfg.domains["shared"].max_bytes == 200 * MiB
    assert cfg.distributed_memory.replication_factor == 3


def test_limits_domain_limits_are_folded():
    cfg = MemoryConfig.load(
        {
            "limits": {
                "warn_percent": 0.7,
                "domain_limits": {
                    "cache": {"max_bytes": "400MB", "max_entries": 10},
                    "registry": {"max_bytes": 50 * MiB},
                },
            },
            # saying the same thing twice is fine
            "domains": {"cache": {"max_bytes": 400 * MiB}},
        }
    )
    assert cfg.limits.warn_percent == 0.7
    assert cfg.domains["cache"].max_bytes == 400 * MiB and cfg.domains["cache"].max_entries == 10
    assert cfg.domains["cache"].eviction is EvictionPolicyName.LRU


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100MB", 100 * MiB),
        ("100mb", 100 * MiB),
        ("1GiB", GiB),
        ("1 GB", GiB),
        ("512 KiB", 512 * 1024),
        ("2k", 2048),
        ("1.5GiB", 3 * GiB // 2),
        ("123", 123),
        ("7b", 7),
        ("100_000_000", 100_000_000),
        (4096, 4096),
        (4096.0, 4096),
    ],
)
def test_size_strings(text, expected):
    assert parse_size(text) == expected
    cfg = MemoryConfig.load({"limits": {"max_bytes": text}})
    assert cfg.limits.max_bytes == expected


@pytest.mark.parametrize("bad", ["lots", "10 parsecs", "-5MB", "", True, 1.5, None])
def test_bad_size_strings(bad):
    with pytest.raises(ConfigError):
        parse_size(bad)


def test_to_dict_round_trips_and_is_json():
    cfg = MemoryConfig.load(
        {
            "distributed_memory": {"consistency": "strong"},
            "domains": {
                "vectors": {
                    "backend": "replicated",
                    "max_bytes": "2GiB",
                    "replication_factor": 3,
                    "min_insync": 2,
                },
                "ephemeral": {"default_ttl": 30},
            },
            "durable": {"kind": "none", "data_dir": "/tmp/x"},
            "alerts": [{"metric": "memory_usage", "threshold": 0.8, "window": 1000, "action": "trigger_eviction"}],
        }
    )
    data = cfg.to_dict()
    assert data["distributed_memory"]["consistency"] == "strong"
    assert data["domains"]["vectors"]["backend"] == "replicated"
    assert MemoryConfig.load(json.loads(json.dumps(data))) == cfg
    assert MemoryConfig.load(MemoryConfig().to_dict()) == MemoryConfig()


# --------------------------------------------------------------------------- lookups and enums


def test_domain_lookup_errors():
    cfg = MemoryConfig.load()
    with pytest.raises(UnknownDomainError, match="nope.*known domains: session"):
        cfg.domain("nope")
    with pytest.raises(UnknownDomainError):
        cfg.domain(3)  # type: ignore[arg-type]
    for method in (cfg.consistency_for, cfg.replication_factor_for, cfg.min_insync_for):
        with pytest.raises(UnknownDomainError):
            method("nope")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("eventual", Consistency.EVENTUAL),
        ("STRONG", Consistency.STRONG),
        ("bounded-stale", Consistency.BOUNDED_STALE),
        ("Bounded_Stale", Consistency.BOUNDED_STALE),
        (Consistency.STRONG, Consistency.STRONG),
    ],
)
def test_consistency_parse(value, expected):
    assert Consistency.parse(value) is expected


@pytest.mark.parametrize("bad", ["linearizable", "", None, 3, b"strong", "relaxed"])
def test_consistency_parse_rejects(bad):
    with pytest.raises(InvalidConsistencyError, match="eventual, bounded_stale, strong"):
        Consistency.parse(bad)


def test_coherence_parse():
    assert CoherenceLevel.parse("Relaxed") is CoherenceLevel.RELAXED
    with pytest.raises(InvalidConsistencyError, match="strong, eventual, relaxed"):
        CoherenceLevel.parse("bounded_stale")
    with pytest.raises(InvalidConsistencyError):
        CoherenceLevel.parse(None)


def test_enum_values_are_lower_case_strings():
    assert str(Consistency.BOUNDED_STALE) == "bounded_stale"
    assert EvictionPolicyName.TINYLFU == "tinylfu" and EvictionPolicyName.NONE == "none"
    assert [b.value for b in Backend] == ["memory", "disk", "replicated"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"bogus": 1}, "bogus"),
        ({"limits": {"bogus_key": 1}}, "limits.bogus_key"),
        ({"domains": {"session": {"bogus": 1}}}, "domains.session.bogus"),
        ({"limits": {"max_entries": "lots"}}, "limits.max_entries"),
        ({"limits": {"max_entries": True}}, "limits.max_entries"),
        ({"domains": {"session": {"max_bytes": -5}}}, "domains.session.max_bytes"),
        ({"domains": {"session": {"max_bytes": "-5MB"}}}, "domains.session.max_bytes"),
        ({"domains": {"session": {"max_bytes": 0}}}, "domains.session.max_bytes"),
        ({"memory_guard": {"tool": {"max_heap_size": "huge"}}}, "memory_guard.tool.max_heap_size"),
        ({"distributed_memory": {"consistency": "linearizable"}}, "distributed_memory.consistency"),
        ({"distributed_memory": {"replication_factor": 8}}, "distributed_memory.replication_factor"),
        ({"domains": {"cache": {"consistency": "sometimes"}}}, "domains.cache.consistency"),
        ({"cache_coordinator": {"coherence_level": "bounded_stale"}}, "cache_coordinator.coherence_level"),
        ({"domains": {"registry": {"replication_factor": 2}}}, "domains.registry.replication_factor"),
        (
            {"domains": {"d": {"backend": "dets", "max_bytes": 1, "replication_factor": 3}}},
            "domains.d.replication_factor",
        ),
        ({"domains": {"shared": {"replication_factor": 2, "min_insync": 3}}}, "domains.shared.min_insync"),
        ({"domains": {"shared": {"min_insync": 3}}}, "domains.shared.min_insync"),  # rf inherited: 2
        ({"domains": {"cache": {"min_insync": 2}}}, "domains.cache.min_insync"),
        ({"domains": {"Bad-Name": {"max_bytes": 1}}}, "domains.Bad-Name"),
        ({"domains": {"9lives": {"max_bytes": 1}}}, "domains.9lives"),
        ({"domains": {"x" * 64: {"max_bytes": 1}}}, "domains." + "x" * 64),
        ({"domains": {"newdomain": {"backend": "memory"}}}, "domains.newdomain.max_bytes"),
        ({"domains": {"session": 5}}, "domains.session"),
        ({"domains": {"cache": {"eviction": "mru"}}}, "domains.cache.eviction"),
        ({"durable": {"kind": "redis"}}, "durable.redis_url"),
        ({"durable": {"redis_url": "redis://h"}}, "durable.redis_url"),
        ({"durable": {"kind": "redis", "redis_url": "http://h"}}, "durable.redis_url"),
        ({"memory_monitoring": {"memory_threshold": 1.5}}, "memory_monitoring.memory_threshold"),
        ({"alerts": [{"metric": "memory_usage", "threshold": 1, "window": 0, "action": "alert_operator"}]},
         "alerts.0.window"),
        ({"alerts": [{"metric": "disk_usage", "threshold": 1, "window": 1, "action": "alert_operator"}]},
         "alerts.0.metric"),
        ({"alerts": [{"metric": "memory_usage", "threshold": 1, "window": 1, "action": "page"}]}, "alerts.0.action"),
        ({"alerts": [{"metric": "memory_usage", "threshold": 1, "window": 1, "action": "no_such_module:f"}]},
         "alerts.0.action"),
        ({"alerts": [{"metric": "memory_usage", "threshold": 1, "window": 1, "action": "json:__version__"}]},
         "alerts.0.action"),
        ({"memory_limit": {"bogus": 1}}, "limits.bogus"),
        ({"memory_limit": 5}, "memory_limit"),
        ({"memory_limit": {"domain_limits": {"nope": {"max_bytes": 1}}}}, "memory_limit.domain_limits.nope"),
        ({"limits": {"domain_limits": {"cache": {"backend": "ets"}}}}, "limits.domain_limits.cache.backend"),
        ({"limits": {"domain_limits": {"cache": {"max_bytes": -1}}}}, "domains.cache.max_bytes"),
        ({"limits": {"max_bytes": "1GiB"}, "memory_limit": {"max_bytes": "2GiB"}}, "memory_limit.max_bytes"),
        (
            {
                "domains": {"cache": {"max_bytes": "1MiB"}},
                "limits": {"domain_limits": {"cache": {"max_bytes": 5}}},
            },
            "limits.domain_limits.cache.max_bytes",
        ),
        ({"consistency": "strong", "distributed_memory": {"consistency": "eventual"}}, "consistency"),
    ],
)
def test_bad_input_raises_config_error_with_path(data, path):
    with pytest.raises(ConfigError) as info:
        MemoryConfig.load(data)
    assert info.value.path == path
    assert not isinstance(info.value, ValidationError)
    assert str(info.value).startswith(f"{path}: ")


def test_all_problems_are_in_the_message():
    with pytest.raises(ConfigError) as info:
        MemoryConfig.load({"limits": {"max_entries": "lots", "warn_percent": 2}})
    assert info.value.path == "limits.max_entries"
    assert "limits.warn_percent" in str(info.value)


def test_direct_construction_raises_config_error_too():
    with pytest.raises(ConfigError) as info:
        DomainConfig(backend="ets", max_bytes=1, replication_factor=2)
    assert info.value.path == "replication_factor"
    with pytest.raises(ConfigError) as info:
        MemoryConfig.model_validate({"limits": {"max_bytes": "lots"}})
    assert info.value.path == "limits.max_bytes"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        MemoryConfig.load(tmp_path / "absent.toml")


def test_bad_suffix(tmp_path):
    path = write(tmp_path, "cfg.json", "{}")
    with pytest.raises(ConfigError, match="unsupported config file"):
        MemoryConfig.load(path)


def test_malformed_toml(tmp_path):
    path = write(tmp_path, "bad.toml", "[limits\nmax_bytes = \n")
    with pytest.raises(ConfigError, match="malformed"):
        MemoryConfig.load(path)


def test_malformed_yaml_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="malformed"):
        MemoryConfig.load(write(tmp_path, "bad.yaml", "limits: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        MemoryConfig.load(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError) as info:
        MemoryConfig.load(write(tmp_path, "wrap.yaml", "erlmcp_ray: 5\n"))
    assert info.value.path == "erlmcp_ray"


def test_errors_in_files_carry_the_field_path(tmp_path):
    path = write(tmp_path, "c.yaml", "domains:\n  session:\n    max_bytes: -1\n")
    with pytest.raises(ConfigError) as info:
        MemoryConfig.load(path)
    assert info.value.path == "domains.session.max_bytes"


def test_unloadable_source_type():
    with pytest.raises(ConfigError, match="cannot load"):
        MemoryConfig.load(42)  # type: ignore[arg-type]
