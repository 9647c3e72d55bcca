"""Durable domains on a real Ray with real stores: a one-copy owner killed mid-traffic loses no
acknowledged write; the durable tier failing fails write-through puts; bad durable configs and an
unreachable Redis are clear errors at start()."""

from __future__ import annotations

import time

import pytest
import ray

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.errors import ConfigError, UnavailableError
from erlmcp_ray.storage import SQLiteStore
from tests.conftest import wait_for
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def config(durable: dict) -> dict:
    return {
        "durable": durable,
        "domains": {
            "notes": {"backend": "disk", "max_bytes": "10MB", "shards": 2},
            "kept": {"backend": "replicated", "max_bytes": "10MB", "durable": "write_through"},
        },
        "client": {"poll_timeout_s": 0.5, "call_timeout_s": 8.0},
    }


def _kill_owner(namespace: str, domain: str, key: str, shards: int) -> None:
    owner = ray.get_actor(shard_name(domain, shard_for(key, shards), 0), namespace=namespace)
    ray.kill(owner, no_restart=False)  # the process dies; Ray reruns the constructor


def test_a_killed_one_copy_owner_comes_back_with_every_acknowledged_write(ray_local, tmp_path):
    ns = "t_durable_sqlite"
    system = erlmcp_ray.start(config({"kind": "sqlite", "data_dir": str(tmp_path)}), namespace=ns)
    try:
        with system.client() as c:
            for i in range(50):
                c.put("notes", f"s{i}", {"i": i}, consistency="strong", tags=["t"])
                c.put("notes", f"e{i}", i)  # eventual: acknowledged by flush()
            c.put("notes", "short", "gone soon", consistency="strong", ttl=0.2)
            c.put("notes", "deleted", 1, consistency="strong")
            assert c.delete("notes", "deleted", consistency="strong")
            c.flush(timeout=30)
            for key in ("s0", "s1"):  # both shards
                _kill_owner(ns, "notes", key, 2)
            time.sleep(1.0)  # ray.kill is asynchronous: read from the new processes
            for i in range(50):
                assert c.get("notes", f"s{i}", consistency="strong") == {"i": i}
                assert c.get("notes", f"e{i}", consistency="strong") == i
            assert c.get_entry("notes", "s7", consistency="strong").tags == ("t",)
            assert c.get("notes", "short", consistency="strong") is None  # expired: not resurrected
            assert c.get("notes", "deleted", consistency="strong") is None  # deleted: stays deleted
        stored = SQLiteStore(tmp_path / f"{ns}.db")
        assert sum(len(stored.load_shard("notes", s).records) for s in range(2)) >= 102
        stored.close()
    finally:
        erlmcp_ray.shutdown(ns, purge=True)
    assert not SQLiteStore(tmp_path / f"{ns}.db").shards(), "shutdown(purge=True) left data behind"


def test_redis_durable_tier_write_through_fails_clearly_while_redis_is_down(ray_local, tmp_path):
    server = RedisServer(tmp_path).start()
    ns = "t_durable_redis"
    try:
        system = erlmcp_ray.start(config({"kind": "redis", "redis_url": server.url}), namespace=ns)
        with system.client() as c:
            c.put("notes", "a", 1, consistency="strong")
            _kill_owner(ns, "notes", "a", 2)
            time.sleep(1.0)  # ray.kill is asynchronous: read from the new process
            assert c.get("notes", "a", consistency="strong") == 1  # reloaded from Redis
            server.kill()
            with pytest.raises(UnavailableError):
                c.put("notes", "b", 2, consistency="strong")  # not acknowledged: nothing durable
            server.start()  # same port and directory (append-only file)
            c.put("notes", "b", 3, consistency="strong")
            _kill_owner(ns, "notes", "b", 2)
            time.sleep(1.0)
            assert c.get("notes", "b", consistency="strong") == 3
    finally:
        erlmcp_ray.shutdown(ns, purge=True)
        server.kill()


def test_an_unreachable_redis_fails_start_at_once_naming_the_url(ray_local):
    url = f"redis://127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match=url.rsplit("/", 1)[0]):
        erlmcp_ray.start(config({"kind": "redis", "redis_url": url}), namespace="t_durable_unreachable")
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(("cfg", "field"), [
    ({"durable": {"kind": "none"}, "domains": {"d": {"backend": "disk", "max_bytes": "1MB"}}}, "domains.d.durable"),
    ({"domains": {"d": {"backend": "memory", "max_bytes": "1MB", "durable": "write_through"}}}, "domains.d.durable"),
    ({"domains": {"d": {"backend": "replicated", "max_bytes": "1MB", "durable": "often"}}}, "domains.d.durable"),
    ({"durable": {"kind": "redis"}}, "durable.redis_url"),
    ({"durable": {"kind": "redis", "redis_url": "http://x"}}, "durable.redis_url"),
])
def test_bad_durable_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as info:
        erlmcp_ray.MemoryConfig.load(cfg)
    assert info.value.path == field


def test_an_owner_restarted_while_redis_is_down_serves_again_once_it_is_back(ray_local, tmp_path):
    """A restarted actor whose constructor raises is never restarted again by Ray: the owner must
    come up without its store, serve nothing (UnavailableError), and load its shard once it can."""
    server = RedisServer(tmp_path).start()
    ns = "t_durable_redis_restart"
    try:
        system = erlmcp_ray.start(config({"kind": "redis", "redis_url": server.url}), namespace=ns)
        with system.client() as c:
            c.put("notes", "a", 1, consistency="strong")
            server.kill()
            _kill_owner(ns, "notes", "a", 2)
            time.sleep(1.0)  # its constructor runs while Redis is down
            with pytest.raises(UnavailableError):
                c.get("notes", "a", consistency="strong")  # not "absent": it has not loaded its shard
            server.start()
            assert c.get("notes", "a", consistency="strong") == 1
            c.put("notes", "a", 2, consistency="strong")
            assert c.get("notes", "a", consistency="strong") == 2
    finally:
        erlmcp_ray.shutdown(ns, purge=True)
        server.kill()


def test_a_corrupt_stored_record_is_an_error_naming_it_never_an_empty_shard(ray_local, tmp_path):
    import sqlite3

    from erlmcp_ray.errors import CorruptDataError

    ns = "t_durable_corrupt"
    system = erlmcp_ray.start(config({"kind": "sqlite", "data_dir": str(tmp_path)}), namespace=ns)
    try:
        with system.client() as c:
            c.put("notes", "a", 1, consistency="strong")
            with sqlite3.connect(tmp_path / f"{ns}.db") as db:
                db.execute("UPDATE records SET record = ? WHERE key = 'a'", (b"garbage",))
            _kill_owner(ns, "notes", "a", 2)
            time.sleep(1.0)  # ray.kill is asynchronous: let the new process load the shard
            with pytest.raises(CorruptDataError, match=r"notes/\d key 'a'"):
                c.get("notes", "a", consistency="strong")
    finally:
        erlmcp_ray.shutdown(ns, purge=True)


def test_write_behind_holds_a_bounded_backlog_while_redis_is_down_and_loses_nothing(ray_local, tmp_path):
    server = RedisServer(tmp_path).start()
    ns = "t_durable_backlog"
    cfg = config({"kind": "redis", "redis_url": server.url, "flush_ms": 50, "max_backlog": 20})
    cfg["domains"]["lazy"] = {"backend": "disk", "max_bytes": "10MB", "durable": "write_behind"}
    try:
        system = erlmcp_ray.start(cfg, namespace=ns)
        with system.client() as c:
            c.put("lazy", "before", 0, consistency="strong")
            server.kill()
            # The bound holds from the first failed flush on (before it, the owner cannot know the
            # store is gone: one flush interval of writes): wait for the owner to notice.
            c.put("lazy", "probe", 0, consistency="strong")
            owner = ray.get_actor(shard_name("lazy", 0, 0), namespace=ns)
            wait_for(lambda: ray.get(owner.stats.remote(), timeout=30)["durable_failing"], timeout=30,
                     what="the owner to see a flush fail")
            accepted, refused = [], 0
            for i in range(40):
                try:
                    c.put("lazy", f"k{i}", i, consistency="strong")
                    accepted.append(i)
                except UnavailableError as exc:
                    refused += 1
                    assert "max_backlog" in str(exc)
                    break
            assert refused == 1 and 15 <= len(accepted) <= 25, (accepted, refused)
            assert c.get("lazy", "k0", consistency="strong") == 0  # reads are served meanwhile
            server.start()
            c.put("lazy", "after", 1, consistency="strong")  # taken again once the store is back
        erlmcp_ray.shutdown(ns)  # flushes the write_behind owner, keeps the data
        system = erlmcp_ray.start(cfg, namespace=ns)
        with system.client() as c:
            for i in accepted:
                assert c.get("lazy", f"k{i}", consistency="strong") == i  # nothing acknowledged was lost
            assert c.get("lazy", "after", consistency="strong") == 1
    finally:
        erlmcp_ray.shutdown(ns, purge=True)
        server.kill()


def test_benchmark_strategies_measures_every_backend(ray_local, tmp_path):
    from erlmcp_ray.persistence_selector import benchmark_strategies

    server = RedisServer(tmp_path).start()
    try:
        rows = benchmark_strategies({"read_ratio": 0.8, "durability_requirement": "high",
                                     "cluster_topology": "multi_node"}, ops=150, keys=20, redis_url=server.url)
    finally:
        server.kill()
    assert [r["backend"] for r in rows] == ["memory", "disk/sqlite", "replicated", "disk/redis"]
    for r in rows:
        assert r["ops_per_s"] > 0 and r["read_p50_us"] > 0 and r["write_p50_us"] > 0 and r["survives"]
    assert [r["backend"] for r in rows if r["recommended"]] == ["replicated"]
    with pytest.raises(erlmcp_ray.errors.InvalidValueError):
        benchmark_strategies({"read_ratio": 2})
