"""Checkpoints on a real Ray with a real SQLite store: create, list newest first, restore (every copy
of every shard, caches of every client dropped), delete; unknown ids and tampered shards; periodic
checkpoints with retention."""

from __future__ import annotations

import sqlite3
import time

import pytest
import ray

from erlmcp_ray.actors.options import SUPERVISOR, shard_name
from erlmcp_ray.core.checkpoint import Checkpoint
from erlmcp_ray.errors import CheckpointNotFoundError, CorruptDataError, InvalidValueError, UnavailableError
from erlmcp_ray.storage import SQLiteStore
from tests.conftest import running_system, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path, **dm) -> dict:
    return {
        "durable": {"kind": "sqlite", "data_dir": str(tmp_path)},
        "distributed_memory": {"checkpoint_interval": 0, **dm},
        "persistence_selector": {"auto_select": False},
        "domains": {
            "notes": {"backend": "replicated", "max_bytes": "10MB", "shards": 2},
            "disk": {"backend": "disk", "max_bytes": "10MB"},
            "lru": {"backend": "memory", "max_bytes": "10MB", "eviction": "lru"},
        },
        "client": {"poll_timeout_s": 0.5},
    }


def _digests(ns: str, domain: str, shards: int, copies: int) -> list[list[str]]:
    out = []
    for shard in range(shards):
        handles = [ray.get_actor(shard_name(domain, shard, slot), namespace=ns) for slot in range(copies)]
        out.append(ray.get([h.digest.remote() for h in handles], timeout=60))
    return out


def test_a_restored_checkpoint_is_what_every_copy_and_every_client_sees(ray_local, tmp_path):
    ns = "t_checkpoints"
    with running_system(_config(tmp_path), ns) as system:
        with system.client() as c, system.client() as other:
            for i in range(50):
                for domain in ("notes", "disk", "lru"):
                    c.put(domain, f"k{i}", {"v": i}, consistency="strong", tags=["before"])
            c.put("notes", "doomed", 1, consistency="strong")
            c.delete("notes", "doomed", consistency="strong")
            cp = c.recovery.create_checkpoint()
            assert isinstance(cp, Checkpoint) and {"disk", "lru", "notes"} <= set(cp.domains)  # + the spec's five
            assert cp.entries >= 150 and cp.bytes > 0 and len(cp.checksum) == 64

            # after the checkpoint: overwrite, add, delete; another client caches the new values
            for i in range(50):
                c.put("notes", f"k{i}", {"v": -i}, consistency="strong")
            c.put("notes", "later", 1, consistency="strong")
            c.put("disk", "later", 1, consistency="strong")
            c.delete("lru", "k3", consistency="strong")
            assert other.get("notes", "k7") == {"v": -7}  # now in its cache
            second = c.recovery.create_checkpoint()
            assert [x.id for x in c.recovery.list_checkpoints()] == [second.id, cp.id]

            counts = c.recovery.restore_checkpoint(cp.id)
            assert counts["checkpoint"] == cp.id and counts["shards"] == len(cp.shards) and counts["entries"] == cp.entries
            # only the newest checkpoint is kept hot in the object store: this one is read from the store
            assert set(counts["sources"].values()) == {"durable store"}
            assert all(e > 1 for e in counts["epochs"].values())  # a new epoch per shard
            for i in range(50):
                for domain in ("notes", "disk", "lru"):
                    assert c.get(domain, f"k{i}", consistency="strong") == {"v": i}
            assert c.get_entry("notes", "k5", consistency="strong").tags == ("before",)
            for domain in ("notes", "disk"):
                assert c.get(domain, "later", consistency="strong") is None
            assert c.get("notes", "doomed", consistency="strong") is None
            # the other client's cache dropped the newer value (at its next poll)
            wait_for(lambda: other.get("notes", "k7") == {"v": 7}, timeout=10, what="the other client's cache")
            # every replica replaced its state with the owner's (not joined it)
            wait_for(lambda: all(len(set(d)) == 1 for d in _digests(ns, "notes", 2, 2)), timeout=20,
                     what="replicas to take the restored state")
            # writes after the restore work and the disk domain's store follows the restore
            c.put("notes", "after", 2, consistency="strong")
            assert c.get("notes", "after", consistency="strong") == 2
            wait_for(lambda: ray.get(ray.get_actor(shard_name("disk", 0, 0), namespace=ns).stats.remote(),
                                     timeout=30)["durable_pending"] == 0, timeout=20, what="the disk flush")
            store = SQLiteStore(tmp_path / f"{ns}.db")
            try:
                rows = store.load_shard("disk", 0).records
            finally:
                store.close()
            assert "later" not in rows and len(rows) == 50

            c.recovery.delete_checkpoint(second.id)
            assert [x.id for x in c.recovery.list_checkpoints()] == [cp.id]
            with pytest.raises(CheckpointNotFoundError):
                c.recovery.delete_checkpoint(second.id)
            with pytest.raises(CheckpointNotFoundError):
                c.recovery.restore_checkpoint("ckpt-20990101T000000.000000-abcdef")
            with pytest.raises(InvalidValueError):
                c.recovery.restore_checkpoint("")


def test_a_tampered_shard_restores_nothing(ray_local, tmp_path):
    """The newest checkpoint's shards are also held in the object store (owned by the supervisor):
    a restore reads them there, checked against the same SHA-256, so a blob tampered with in the
    durable store does not matter while the hot copy lives. Once the supervisor restarted (the hot
    copies die with it), the restore reads the store, finds the mismatch and restores nothing."""
    ns = "t_checkpoints_corrupt"
    with running_system(_config(tmp_path), ns) as system, system.client() as c:
        for i in range(20):
            c.put("notes", f"k{i}", i, consistency="strong")
        cp = c.recovery.create_checkpoint()
        for i in range(20):
            c.put("notes", f"k{i}", -i, consistency="strong")
        victim = next(s for s in cp.shards if s.domain == "notes" and s.entries)
        store = SQLiteStore(tmp_path / f"{ns}.db")
        try:  # a well-formed blob (its CRC fits) with one value changed: only the SHA-256 can tell
            data = store.get_blob(victim.blob)
            store.put_blob(victim.blob, data.replace(b"\x01", b"\x02", 1))
        finally:
            store.close()
        counts = c.recovery.restore_checkpoint(cp.id)  # from the hot copies: intact
        assert set(counts["sources"].values()) == {"object store"}, counts["sources"]
        assert [c.get("notes", f"k{i}", consistency="strong") for i in range(20)] == list(range(20))
        for i in range(20):
            c.put("notes", f"k{i}", -i, consistency="strong")
        ray.kill(ray.get_actor(SUPERVISOR, namespace=ns), no_restart=False)  # Ray restarts it, hot copies gone
        wait_for(lambda: _restore_raises(c, cp.id), timeout=60, interval=0.5, what="the restarted supervisor")
        for i in range(20):  # nothing restored, in any shard
            assert c.get("notes", f"k{i}", consistency="strong") == -i


def _restore_raises(c, checkpoint_id: str) -> bool:
    """True once a restore of the tampered checkpoint fails as corrupt (False while the supervisor restarts)."""
    try:
        c.recovery.restore_checkpoint(checkpoint_id)
    except CorruptDataError:
        return True
    except UnavailableError:
        return False
    raise AssertionError("a tampered checkpoint was restored")


def test_periodic_checkpoints_keep_only_the_newest(ray_local, tmp_path):
    ns = "t_checkpoints_periodic"
    with running_system(_config(tmp_path, checkpoint_interval=500, checkpoint_retention=2), ns) as system:
        with system.client() as c:
            c.put("notes", "k", 1, consistency="strong")
            seen: set[str] = set()

            def three_made():
                seen.update(x.id for x in c.recovery.list_checkpoints())
                return len(seen) >= 3

            wait_for(three_made, timeout=30, interval=0.2, what="three periodic checkpoints")
            time.sleep(0.2)
            listed = c.recovery.list_checkpoints()
            assert 1 <= len(listed) <= 2 and listed == sorted(listed, key=lambda x: x.id, reverse=True)


def test_sync_then_verify_state_finds_every_copy_equal_and_the_store_readable(ray_local, tmp_path):
    ns = "t_verify"
    with running_system(_config(tmp_path), ns) as system, system.client() as c:
        for i in range(100):
            c.put("notes", f"k{i}", i)  # eventual: buffered, then replicated lazily
            c.put("disk", f"k{i}", i)
        result = c.sync()  # flushes this client's buffer, then replicates every shard now
        assert result["shards"] >= 4 and "notes" in result["domains"]
        report = c.recovery.verify_state()
        assert report["ok"], [s for s in report["shards"] if not s["in_sync"]]
        disk = next(s for s in report["shards"] if s["domain"] == "disk")
        assert disk["store_checksums_valid"] and disk["store_rows"] == 100 and disk["store_matches_owner"]
        notes = [s for s in report["shards"] if s["domain"] == "notes"]
        assert all(len(s["digests"]) == 2 and s["in_sync"] for s in notes)

        # a corrupt stored row turns ok off and names the row
        with sqlite3.connect(tmp_path / f"{ns}.db") as db:
            db.execute("UPDATE records SET record = ? WHERE domain = 'disk' AND key = 'k5'", (b"garbage",))
        report = c.recovery.verify_state()
        disk = next(s for s in report["shards"] if s["domain"] == "disk")
        assert not report["ok"] and not disk["store_checksums_valid"] and "k5" in disk["store_error"]
        with pytest.raises(InvalidValueError):
            c.sync(domains="notes")


def test_checkpoints_on_redis_restore_and_refuse_a_tampered_shard(ray_local, tmp_path):
    """The same checkpoints with the durable tier on a real redis-server: the shard blobs and the
    manifest live in Redis; a blob rewritten with a valid CRC but other content restores nothing."""
    import redis

    from erlmcp_ray.storage import RedisStore
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path).start()
    ns = "t_checkpoints_redis"
    cfg = _config(tmp_path)
    cfg["durable"] = {"kind": "redis", "redis_url": server.url}
    try:
        with running_system(cfg, ns) as system, system.client() as c:
            for i in range(30):
                c.put("notes", f"k{i}", i, consistency="strong")
                c.put("disk", f"k{i}", i, consistency="strong")
            cp = c.recovery.create_checkpoint()
            assert [x.id for x in c.recovery.list_checkpoints()] == [cp.id]
            for i in range(30):
                c.put("notes", f"k{i}", -i, consistency="strong")
                c.put("disk", f"k{i}", -i, consistency="strong")
            counts = c.recovery.restore_checkpoint(cp.id)
            assert counts["entries"] == cp.entries
            assert all(c.get(d, f"k{i}", consistency="strong") == i for i in range(30) for d in ("notes", "disk"))
            newer = c.recovery.create_checkpoint()  # the hot copy is the newest's now: cp is read from Redis

            victim = next(s for s in cp.shards if s.domain == "disk")
            store = RedisStore(server.url, prefix=f"erlmcp:{ns}")
            try:  # well-formed: the store's own CRC fits the new bytes
                store.put_blob(victim.blob, store.get_blob(victim.blob)[:-1] + b"\x00")
            finally:
                store.close()
            c.put("disk", "k1", "changed", consistency="strong")
            with pytest.raises(CorruptDataError, match=victim.blob):
                c.recovery.restore_checkpoint(cp.id)
            assert c.get("disk", "k1", consistency="strong") == "changed"  # nothing restored
            c.recovery.delete_checkpoint(cp.id)
            c.recovery.delete_checkpoint(newer.id)
            assert c.recovery.list_checkpoints() == []
        assert redis.Redis.from_url(server.url).keys("*") == []  # shutdown(purge=True) left nothing
    finally:
        server.kill()


def test_a_restarted_one_copy_memory_shard_comes_back_from_the_latest_checkpoint(ray_local, tmp_path):
    """Issue 11: a one-copy domain with no durable rows restarts its copy from the latest checkpoint and
    says what it lost (the writes after that checkpoint)."""
    ns = "t_checkpoint_restart"
    with running_system(_config(tmp_path), ns) as system, system.client() as c:
        for i in range(40):
            c.put("lru", f"k{i}", i, consistency="strong")
        cp = c.recovery.create_checkpoint()
        for i in range(40, 50):
            c.put("lru", f"k{i}", i, consistency="strong")  # after the checkpoint: lost with the process
        owner = ray.get_actor(shard_name("lru", 0, 0), namespace=ns)
        ray.kill(owner, no_restart=False)

        def restored():
            try:
                return ray.get(owner.stats.remote(), timeout=10)["restored_from_checkpoint"]
            except ray.exceptions.RayError:  # still restarting
                return None

        info = wait_for(restored, timeout=60, interval=0.2, what="the restarted shard")
        assert info["checkpoint"] == cp.id and info["entries"] == 40 and info["age_s"] >= 0
        assert [c.get("lru", f"k{i}", consistency="strong") for i in range(40)] == list(range(40))
        assert [c.get("lru", f"k{i}", consistency="strong") for i in range(40, 50)] == [None] * 10
