"""The persistence selector's periodic evaluation (core.auto_select) and the running layout
(core.layout): pure, no Ray."""

from __future__ import annotations

import pytest

from erlmcp_ray.config import Backend, DurabilityRequirement, MemoryConfig
from erlmcp_ray.core.auto_select import AutoSelector, DomainObservation
from erlmcp_ray.core.layout import Layout

MODERATE, HIGH, NONE = DurabilityRequirement.MODERATE, DurabilityRequirement.HIGH, DurabilityRequirement.NONE


def _selector(durability=MODERATE, *, durable_tier=True, **kw) -> AutoSelector:
    return AutoSelector({"d": Backend.MEMORY}, {"d": durability}, durable_tier=durable_tier, **kw)


def test_a_write_heavy_domain_moves_to_disk_on_one_node_and_to_replicated_on_several():
    (m,) = _selector().evaluate([DomainObservation("d", 1000, reads=100, writes=900)], "single_node")
    assert (m.current, m.target, m.read_ratio) == (Backend.MEMORY, Backend.DISK, 0.1)
    (m,) = _selector().evaluate([DomainObservation("d", 1000, reads=100, writes=900)], "multi_node")
    assert m.target is Backend.REPLICATED


def test_a_small_read_mostly_domain_stays_in_memory_and_comes_back_to_it():
    s = _selector()
    assert s.evaluate([DomainObservation("d", 1000, reads=990, writes=10)], "single_node") == []
    (m,) = s.evaluate([DomainObservation("d", 1000, reads=1000, writes=1010)], "single_node")
    s.migrated("d", m.target)
    # counts are cumulative: 5,000 reads and 10 writes since the last evaluation
    (back,) = s.evaluate([DomainObservation("d", 1000, reads=6000, writes=1020)], "single_node")
    assert (back.current, back.target) == (Backend.DISK, Backend.MEMORY)


def test_too_few_operations_keep_the_backend():
    s = _selector(min_ops=100)
    assert s.evaluate([DomainObservation("d", 1, reads=0, writes=99)], "single_node") == []
    assert "kept" in s.last_evaluation("d")["reason"]


def test_a_recommendation_must_repeat_before_it_is_acted_on():
    s = _selector(confirmations=2)
    assert s.evaluate([DomainObservation("d", 1, reads=0, writes=200)], "single_node") == []
    assert len(s.evaluate([DomainObservation("d", 1, reads=0, writes=400)], "single_node")) == 1
    s = _selector(confirmations=2)  # an interruption resets the streak
    s.evaluate([DomainObservation("d", 1, reads=0, writes=200)], "single_node")
    s.evaluate([DomainObservation("d", 1, reads=10_000, writes=200)], "single_node")
    assert s.evaluate([DomainObservation("d", 1, reads=10_000, writes=400)], "single_node") == []


def test_counts_that_went_down_are_counted_from_zero():
    """Ray restarted a copy: its counters start again at 0."""
    s = _selector()
    s.evaluate([DomainObservation("d", 1, reads=10_000, writes=0)], "single_node")
    (m,) = s.evaluate([DomainObservation("d", 1, reads=10, writes=500)], "single_node")
    assert m.read_ratio == pytest.approx(10 / 510)


def test_without_a_durable_tier_disk_is_never_chosen():
    s = _selector(durable_tier=False)
    assert s.evaluate([DomainObservation("d", 1, reads=0, writes=500)], "single_node") == []
    assert "durable.kind is none" in s.last_evaluation("d")["reason"]


def test_durability_none_stays_in_memory_and_unknown_domains_are_ignored():
    s = _selector(NONE)
    assert s.evaluate([DomainObservation("d", 1, reads=0, writes=500),
                       DomainObservation("explicit", 1, reads=0, writes=500)], "single_node") == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        AutoSelector({"d": Backend.MEMORY}, {}, durable_tier=True)
    with pytest.raises(ValueError):
        _selector(min_ops=0)
    with pytest.raises(KeyError):
        _selector().migrated("other", Backend.DISK)


# ------------------------------------------------------------------ layout
def _cfg() -> MemoryConfig:
    return MemoryConfig.load({"domains": {
        "auto": {"max_bytes": "1MB", "replication_factor": 3},
        "high": {"max_bytes": "1MB", "durability_requirement": "high"},
        "fixed": {"backend": "memory", "max_bytes": "1MB"}}})


def test_a_layout_gives_each_choice_its_copies_and_durable_mode():
    base = _cfg()
    assert base.auto_domains() == ["auto", "high"]
    lay = Layout().with_choice(base, "auto", Backend.REPLICATED).with_choice(base, "high", Backend.REPLICATED)
    assert lay.generation == 2
    assert lay.shape == {"auto": (3, "off"), "high": (2, "write_through")}
    running = lay.config(base)
    assert running.backend_for("auto") is Backend.REPLICATED and running.min_insync_for("auto") == 3
    disk = Layout().with_choice(base, "auto", Backend.DISK)
    assert disk.shape == {"auto": (1, "write_through")}
    assert base.replication_factor_for("auto") == 1  # memory until chosen: one copy


def test_a_layout_never_changes_an_explicit_backend_and_survives_encoding():
    base = _cfg()
    lay = Layout(5, {"fixed": Backend.DISK, "auto": Backend.DISK, "gone": Backend.DISK}).for_config(base)
    assert lay.selected == {"auto": Backend.DISK}
    assert Layout.decode(lay.encode()) == lay
    assert Layout.decode(None) == Layout()
    assert lay.config(base).backend_for("fixed") is Backend.MEMORY


def test_a_domain_the_selector_manages_takes_no_durable_mode_of_its_own():
    from erlmcp_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="durable"):
        MemoryConfig.load({"domains": {"x": {"max_bytes": "1MB", "durable": "write_behind"}}})


def test_auto_select_needs_both_of_the_specs_switches():
    assert MemoryConfig().auto_select
    assert not MemoryConfig.load({"distributed_memory": {"auto_select": False}}).auto_select
    assert not MemoryConfig.load({"persistence_selector": {"auto_select": False}}).auto_select
