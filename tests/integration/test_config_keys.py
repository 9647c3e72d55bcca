"""Config keys that act only inside the system actors, each shown with two values on a real Ray
(the registry of every key and its tests is ``tests/unit/test_config_keys.py``).

Each case starts a small system of its own (one SQLite file under ``tmp_path``) in the module's
local Ray and reads the outcome through the client or the durable store."""

from __future__ import annotations

import time

import pytest

from erlmcp_ray.storage import SQLiteStore
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path, *, distributed_memory=None, persistence_selector=None, durable=None, domains=None,
            **sections) -> dict:
    """A small system: no periodic checkpoints or selector unless asked, the default domains on one shard."""
    return {
        "durable": {"kind": "sqlite", "data_dir": str(tmp_path), **(durable or {})},
        "distributed_memory": {"checkpoint_interval": 0, **(distributed_memory or {})},
        "persistence_selector": {"auto_select": False, **(persistence_selector or {})},
        "client": {"poll_timeout_s": 0.5, "call_timeout_s": 15.0},
        "domains": {"session": {"shards": 1}, "shared": {"shards": 1}, **(domains or {})},
        **sections,
    }


def _stored(tmp_path, ns: str, domain: str, key: str) -> bool:
    """Whether the durable store holds ``key`` of ``domain`` (one shard) now."""
    store = SQLiteStore(tmp_path / f"{ns}.db")
    try:
        return key in store.load_shard(domain, 0).records
    finally:
        store.close()


# ------------------------------------------------------------------ distributed_memory.checkpoint_interval


@pytest.mark.parametrize(("interval_ms", "periodic"), [(300, True), (0, False)])
def test_checkpoint_interval_takes_periodic_checkpoints_or_none(ray_local, tmp_path, interval_ms, periodic):
    ns = f"t_keys_checkpoints_{interval_ms}"
    cfg = _config(tmp_path, distributed_memory={"checkpoint_interval": interval_ms})
    with running_system(cfg, ns) as system, system.client() as c:
        c.put("shared", "k", 1, consistency="strong")
        if periodic:
            wait_for(lambda: len(c.recovery.list_checkpoints()) >= 2, timeout=30, interval=0.2,
                     what="two periodic checkpoints")
        else:
            time.sleep(2.0)  # more than six intervals of the other case
            assert c.recovery.list_checkpoints() == []


# ------------------------------------------------------------------ the persistence selector's three keys


@pytest.mark.parametrize(("case", "distributed_memory", "persistence_selector", "moves"), [
    ("on", {"auto_select": True}, {"auto_select": True, "evaluation_interval": 300}, True),
    ("dm_off", {"auto_select": False}, {"auto_select": True, "evaluation_interval": 300}, False),
    ("ps_off", {"auto_select": True}, {"auto_select": False, "evaluation_interval": 300}, False),
    ("long_interval", {"auto_select": True}, {"auto_select": True, "evaluation_interval": 600_000}, False),
])
def test_the_selector_evaluates_only_with_both_switches_on_and_at_its_interval(
        ray_local, tmp_path, case, distributed_memory, persistence_selector, moves):
    """A write-heavy domain without a backend on one node: with both switches on and a 300 ms interval
    the selector moves it to disk; with either switch off, or a 10-minute interval, it never evaluates
    in three seconds (ten of the short intervals) of the same traffic."""
    ns = f"t_keys_selector_{case}"
    cfg = _config(tmp_path, distributed_memory=distributed_memory, persistence_selector=persistence_selector,
                  domains={"notes": {"max_bytes": "10MB", "shards": 1}})
    with running_system(cfg, ns) as system, system.client() as c:

        def backend() -> str:
            return c.selector.current_strategies()["domains"]["notes"]["backend"]

        deadline, i = time.monotonic() + (30.0 if moves else 3.0), 0
        while time.monotonic() < deadline and backend() == "memory":
            for _ in range(50):
                c.put("notes", f"k{i}", i, consistency="strong")
                i += 1
        report = c.selector.current_strategies()
        assert i >= 100  # traffic enough for an evaluation to act on (min_ops)
        if moves:
            assert backend() == "disk" and report["last_evaluation_at"] is not None
        else:
            assert backend() == "memory" and report["last_evaluation_at"] is None


# ------------------------------------------------------------------ durable tier: domains.*.durable, durable.flush_ms


def test_domain_durable_mode_decides_when_the_store_holds_a_write(ray_local, tmp_path):
    ns = "t_keys_durable_modes"
    modes = {"off": "off", "behind": "write_behind", "through": "write_through"}
    cfg = _config(tmp_path, durable={"flush_ms": 60_000}, domains={
        name: {"backend": "replicated", "max_bytes": "10MB", "durable": mode} for name, mode in modes.items()})
    with running_system(cfg, ns) as system, system.client() as c:
        for name in modes:
            c.put(name, "k", name, consistency="strong")
        # acknowledged: only write_through has stored it (write_behind waits for its next flush)
        assert [_stored(tmp_path, ns, name, "k") for name in modes] == [False, False, True]
        c.sync()  # every owner flushes at once
        assert [_stored(tmp_path, ns, name, "k") for name in modes] == [False, True, True]


@pytest.mark.parametrize(("flush_ms", "stored_soon"), [(100, True), (30_000, False)])
def test_durable_flush_ms_is_how_soon_a_write_behind_change_is_stored(ray_local, tmp_path, flush_ms, stored_soon):
    ns = f"t_keys_flush_{flush_ms}"
    cfg = _config(tmp_path, durable={"flush_ms": flush_ms},
                  domains={"lazy": {"backend": "disk", "max_bytes": "10MB", "durable": "write_behind"}})
    with running_system(cfg, ns) as system, system.client() as c:
        c.put("lazy", "k", 1, consistency="strong")
        if stored_soon:
            wait_for(lambda: _stored(tmp_path, ns, "lazy", "k"), timeout=10, interval=0.05,
                     what="the next flush to store the write")
        else:
            time.sleep(1.5)  # fifteen flushes of the other case
            assert not _stored(tmp_path, ns, "lazy", "k")


# ------------------------------------------------------------------ alerts.*.action


@pytest.mark.parametrize(("action", "evicts"), [("trigger_eviction", True), ("alert_operator", False)])
def test_an_alert_action_evicts_or_only_reports(ray_local, tmp_path, action, evicts):
    """The same rule (memory_usage past 50 % for 0.6 s) fires on an LRU domain filled to ~60 %: with
    trigger_eviction the supervisor evicts it below the threshold, with alert_operator nothing is removed."""
    ns = f"t_keys_alert_{action}"
    cfg = _config(tmp_path, memory_monitoring={"check_interval": 200},
                  alerts=[{"metric": "memory_usage", "threshold": 0.5, "window": 600, "action": action}],
                  domains={"lru": {"backend": "memory", "max_bytes": "64KB", "eviction": "lru", "shards": 1}})
    with running_system(cfg, ns) as system, system.client() as c:
        for i in range(300):
            c.put("lru", f"k{i:04d}", "x" * 64, consistency="strong")
        before = c.get_domain_stats("lru")
        assert 0.5 < before["bytes"] / 65536 < 0.8, before  # past the rule, short of the domain's own eviction

        def fired() -> bool:
            return any(e["metric"] == "memory_usage" and e["state"] == "firing" for e in c.alerts()["events"])

        wait_for(fired, timeout=30, interval=0.2, what="the rule to fire")
        time.sleep(0.5)  # the action runs with the firing; give a slow one time to show
        after = c.get_domain_stats("lru")
        if evicts:
            assert after["bytes"] / 65536 <= 0.5 and after["entries"] < before["entries"]
        else:
            assert (after["bytes"], after["entries"]) == (before["bytes"], before["entries"])
