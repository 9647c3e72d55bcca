"""The persistence selector on a running system: live migrations between memory, disk and
replicated while writers and readers keep going; a migrated owner that Ray restarts comes back in
its new shape; auto_select moves a write-heavy domain to disk and a full restart keeps it there;
a domain whose backend is in the config is never touched."""

from __future__ import annotations

import threading
import time

import pytest
import ray

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.errors import ConfigError, InvalidValueError, UnknownDomainError
from erlmcp_ray.storage import SQLiteStore
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path, **selector) -> dict:
    return {
        "durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
        "persistence_selector": {"auto_select": False, **selector},
        "domains": {
            "notes": {"max_bytes": "10MB", "shards": 2},  # no backend: the selector's to choose
            "fixed": {"backend": "memory", "max_bytes": "10MB"},
        },
        "client": {"poll_timeout_s": 0.5, "call_timeout_s": 15.0},
    }


def _owner(ns: str, domain: str, shard: int):
    return ray.get_actor(shard_name(domain, shard, 0), namespace=ns)


def _stored(tmp_path, ns: str, domain: str, shards: int) -> dict:
    store = SQLiteStore(tmp_path / f"{ns}.db")
    try:
        out = {}
        for s in range(shards):
            out.update(store.load_shard(domain, s).records)
        return out
    finally:
        store.close()


class _Traffic:
    """A writer (strong puts: each acknowledged one recorded) and a reader (eventual and
    bounded_stale gets), each on its own thread, until stop(); errors are kept, not swallowed."""

    def __init__(self, client, domain: str, keys: int = 40) -> None:
        self._c, self._domain, self._keys = client, domain, keys
        self.acked: dict[str, int] = {}
        self.writes = 0
        self.errors: list[BaseException] = []
        self.reads = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write), threading.Thread(target=self._read)]
        for t in self._threads:
            t.start()

    def _write(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"k{i % self._keys}"
            try:
                self._c.put(self._domain, key, i, consistency="strong")
                self.acked[key] = i
                self.writes += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            i += 1

    def _read(self) -> None:
        i = 0
        while not self._stop.is_set():
            level = "eventual" if i % 2 else "bounded_stale"
            try:
                self._c.get(self._domain, f"k{i % self._keys}", consistency=level)
                self.reads += 1
            except BaseException as exc:  # noqa: BLE001
                self.errors.append(exc)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_live_migrations_keep_every_acknowledged_write_and_serve_reads(ray_local, tmp_path):
    ns = "t_selector_live"
    with running_system(_config(tmp_path), ns) as system:
        with system.client() as c, system.client() as watcher:
            for i in range(100):
                c.put("notes", f"pre{i}", i, tags=["pre"])
            c.put("notes", "gone", 1, consistency="strong")
            c.delete("notes", "gone", consistency="strong")
            c.flush(timeout=30)
            assert c.get_domain_stats("notes")["backend"] == "memory"
            traffic = _Traffic(c, "notes")
            # A report that names a new backend must already list the migration to it (a reader of
            # current_strategies must never see the new backend ahead of its record).
            torn: list[dict] = []
            watching = threading.Event()

            def watch():
                while not watching.is_set():
                    notes = watcher.selector.current_strategies()["domains"]["notes"]
                    moves = [m for m in notes["migrations"] if m["changed"]]
                    if notes["backend"] != (moves[-1]["to"] if moves else "memory"):
                        torn.append(notes)

            watch_thread = threading.Thread(target=watch)
            watch_thread.start()
            try:
                wait_for(lambda: len(traffic.acked) >= 40, timeout=30, what="the writer to get going")

                # memory -> disk: the whole shard goes to the store, then every write through it
                rec = c.selector.migrate("notes", "disk")
                assert rec["changed"] and rec["to"] == "disk" and rec["written_to_store"] >= 100
                written_during = dict(traffic.acked)
                stored = _stored(tmp_path, ns, "notes", 2)
                assert {f"pre{i}" for i in range(100)} <= set(stored)
                assert set(written_during) <= set(stored)

                # disk -> replicated: replicas created and in sync before clients route to them
                reads_before = traffic.reads
                rec = c.selector.migrate("notes", "replicated")
                assert rec["copies"] == [1, 2]
                for shard in range(2):
                    owner = ray.get(_owner(ns, "notes", shard).stats.remote(), timeout=30)
                    assert owner["copies"] == 2 and owner["replicas"][1]["in_sync"]
                    assert owner["durable"] == "off"  # replicated, durability moderate: no disk copy
                wait_for(lambda: watcher._routes["notes"].copies == 2, timeout=10,
                         what="another client to route by the new layout")
                wait_for(lambda: traffic.reads > reads_before + 50, timeout=30, what="reads to go on")

                # replicated -> memory: clients first, then the replicas stop
                rec = c.selector.migrate("notes", "memory")
                assert rec["copies"] == [2, 1]
                wait_for(lambda: c._routes["notes"].copies == 1, timeout=10, what="the writer's client")
                time.sleep(1.0)  # ray.kill is asynchronous
                with pytest.raises(ValueError):
                    ray.get_actor(shard_name("notes", 0, 1), namespace=ns)
                settle = traffic.writes
                wait_for(lambda: traffic.writes > settle + 20 or traffic.errors, timeout=30,
                         what="writes after the last migration")
            finally:
                traffic.stop()
                watching.set()
                watch_thread.join(timeout=60)
            assert not traffic.errors, traffic.errors[:3]
            assert not torn, torn[:1]
            for key, value in traffic.acked.items():
                assert c.get("notes", key, consistency="strong") == value
            for i in range(100):
                entry = c.get_entry("notes", f"pre{i}", consistency="strong")
                assert entry.value == i and entry.tags == ("pre",)
            assert c.get("notes", "gone", consistency="strong") is None

            report = c.selector.current_strategies()
            notes = report["domains"]["notes"]
            assert notes["backend"] == "memory" and notes["selected_by"] == "persistence_selector"
            assert [m["to"] for m in notes["migrations"]] == ["disk", "replicated", "memory"]
            assert report["domains"]["fixed"]["selected_by"] == "config"
            assert [m["to"] for m in c.get_domain_stats("notes")["migrations"]] == ["disk", "replicated", "memory"]


def test_bad_migrations_are_refused_at_the_call_site(ray_local, tmp_path):
    ns = "t_selector_bad"
    with running_system(_config(tmp_path), ns) as system, system.client() as c:
        with pytest.raises(ConfigError, match="never migrates"):
            c.selector.migrate("fixed", "disk")
        with pytest.raises(UnknownDomainError):
            c.selector.migrate("nope", "disk")
        with pytest.raises(InvalidValueError):
            c.selector.migrate("notes", "ets-ish")
        with pytest.raises(InvalidValueError):
            c.selector.auto_select("yes")
        assert c.selector.migrate("notes", "memory")["changed"] is False


def test_a_migrated_owner_restarted_by_ray_comes_back_on_its_new_backend(ray_local, tmp_path):
    """Ray reruns a restarted actor's constructor with its first arguments (durable off here): it
    must take the layout as it is now, and reload from the store what it acknowledged."""
    ns = "t_selector_restart"
    with running_system(_config(tmp_path), ns) as system:
        with system.client() as c:
            c.selector.migrate("notes", "disk")
            for i in range(60):
                c.put("notes", f"k{i}", i, consistency="strong")
            for shard in range(2):
                ray.kill(_owner(ns, "notes", shard), no_restart=False)
            time.sleep(1.0)  # ray.kill is asynchronous: read from the new processes
            for i in range(60):
                assert c.get("notes", f"k{i}", consistency="strong") == i
            for shard in range(2):
                assert ray.get(_owner(ns, "notes", shard).stats.remote(), timeout=30)["durable"] == "write_through"


def test_auto_select_moves_a_write_heavy_domain_to_disk_and_a_full_restart_keeps_it(tmp_path):
    ns = "t_selector_auto"
    cfg = _config(tmp_path, auto_select=True, evaluation_interval=1000)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        system = erlmcp_ray.start(cfg, namespace=ns)
        with system.client() as c:
            for i in range(300):  # write-heavy: read ratio far below 90 %, moderate durability, one node
                c.put("notes", f"k{i}", i, consistency="strong")
                c.put("fixed", f"k{i}", i, consistency="strong")
            wait_for(lambda: c.selector.current_strategies()["domains"]["notes"]["backend"] == "disk",
                     timeout=30, interval=0.2, what="the selector to move notes to disk")
            report = c.selector.current_strategies()
            assert report["auto_select"] is True
            assert report["domains"]["fixed"]["backend"] == "memory"  # explicit: never migrated
            assert report["domains"]["fixed"]["migrations"] == []
            last = report["domains"]["notes"]["last_evaluation"]
            assert last["recommended"] == "disk" and last["read_ratio"] < 0.5
            (mig,) = report["domains"]["notes"]["migrations"]
            assert mig["from"] == "memory" and mig["to"] == "disk" and "single node" in mig["reason"]
            c.selector.auto_select(False)
            assert c.selector.current_strategies()["auto_select"] is False
            c.put("notes", "after", "x", consistency="strong")
        erlmcp_ray.shutdown(ns)  # keeps durable data
        ray.shutdown()

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        system = erlmcp_ray.start(cfg, namespace=ns)
        with system.client() as c:
            assert c.get_domain_stats("notes")["backend"] == "disk"
            for i in range(300):
                assert c.get("notes", f"k{i}", consistency="strong") == i
                assert c.get("fixed", f"k{i}", consistency="strong") is None  # memory: gone with Ray
            assert c.get("notes", "after", consistency="strong") == "x"
        erlmcp_ray.shutdown(ns, purge=True)
    finally:
        ray.shutdown()


def test_a_supervisor_restarted_mid_migration_finishes_it(ray_local, tmp_path):
    """The layout is saved before the owners change: a supervisor that dies in between must not
    leave the domain reported on disk while its owners still keep no disk copy."""
    from ray.experimental import internal_kv

    from erlmcp_ray.actors.options import SUPERVISOR
    from erlmcp_ray.config import Backend, MemoryConfig
    from erlmcp_ray.core.layout import Layout, layout_key

    ns = "t_selector_reconcile"
    cfg = _config(tmp_path)
    with running_system(cfg, ns) as system, system.client() as c:
        for i in range(50):
            c.put("notes", f"k{i}", i, consistency="strong")
        # the state a crash right after _save leaves: the layout says disk, the owners do not
        ahead = Layout().with_choice(MemoryConfig.load(cfg), "notes", Backend.DISK)
        internal_kv._internal_kv_put(layout_key(ns), ahead.encode(), overwrite=True)
        ray.kill(ray.get_actor(SUPERVISOR, namespace=ns), no_restart=False)
        owners = [_owner(ns, "notes", s) for s in range(2)]
        wait_for(lambda: all(ray.get(o.stats.remote(), timeout=30)["durable"] == "write_through" for o in owners),
                 timeout=60, interval=0.2, what="the restarted supervisor to finish the migration")
        wait_for(lambda: len(_stored(tmp_path, ns, "notes", 2)) == 50, timeout=30, what="the shard in the store")
        # the supervisor logs the finished migration once it is complete (it also tells the clients)
        wait_for(lambda: c.selector.current_strategies()["domains"]["notes"]["migrations"], timeout=30,
                 interval=0.2, what="the finished migration in the log")
        report = c.selector.current_strategies()["domains"]["notes"]
        assert report["backend"] == "disk" and "restarted" in report["migrations"][-1]["reason"]
        assert report["migrating_to"] is None  # settled (it said "disk" while being finished)
        for i in range(50):
            assert c.get("notes", f"k{i}", consistency="strong") == i
