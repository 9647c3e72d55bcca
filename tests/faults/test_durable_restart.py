"""The whole cluster goes away: shutdown(), ray.shutdown(), a new Ray, start() with the same config.
Every durable domain comes back (entries, versions, tags, expiry, deletes), digests equal, on each
durable store (SQLite, Redis); shutdown(purge=True) then leaves nothing of the namespace in it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import redis

import erlmcp_ray
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.storage import SQLiteStore
from tests.conftest import wait_for
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "t_durable_restart"


def _ray_up():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def _owner_digests(cfg):
    out = {}
    for domain in ("notes", "kept", "lazy"):
        for shard in range(cfg["domains"][domain].get("shards", 1)):
            owner = ray.get_actor(shard_name(domain, shard, 0), namespace=NS)
            out[(domain, shard)] = ray.get(owner.digest.remote(), timeout=60)
    return out


class _SQLiteTier:
    def __init__(self, tmp_path: Path) -> None:
        self.durable = {"kind": "sqlite", "data_dir": str(tmp_path), "flush_ms": 50}
        self._db = tmp_path / f"{NS}.db"

    def stored(self) -> list[str]:
        """What the store holds for NS: its shards and blobs."""
        store = SQLiteStore(self._db)
        try:
            return [f"{d}/{s}" for d, s in store.shards()] + [f"blob:{b}" for b in store.list_blobs()]
        finally:
            store.close()

    def close(self) -> None:
        pass  # nothing running


class _RedisTier:
    # RedisStore keeps a system's data under the prefix "erlmcp:<namespace>" (storage.open_store).
    # Another namespace's key on the same server: a purge of NS must keep it (its name starts with NS).
    OTHER = f"erlmcp:{NS}_other:blob:x"

    def __init__(self, tmp_path: Path) -> None:
        self._server = RedisServer(tmp_path).start()
        self._r = redis.Redis.from_url(self._server.url)
        self._r.set(self.OTHER, b"not ours")
        self.durable = {"kind": "redis", "redis_url": self._server.url, "flush_ms": 50}

    def stored(self) -> list[str]:
        """Every key on this test's own server but OTHER (so any key layout of NS's data counts)."""
        keys = sorted(k.decode() for k in self._r.scan_iter(count=1000))
        assert self.OTHER in keys, "a purge of NS deleted another namespace's key"
        return [k for k in keys if k != self.OTHER]

    def close(self) -> None:
        self._r.close()
        self._server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def tier(request, tmp_path):
    """The durable tier of the test: SQLite in tmp_path, or a Redis server of its own there."""
    t = _SQLiteTier(tmp_path) if request.param == "sqlite" else _RedisTier(tmp_path)
    yield t
    t.close()


def test_every_durable_domain_comes_back_after_a_full_ray_restart(tier):
    cfg = {
        "durable": tier.durable,
        "domains": {
            "notes": {"backend": "disk", "max_bytes": "10MB", "shards": 2},
            "kept": {"backend": "replicated", "max_bytes": "10MB", "durable": "write_through"},
            "lazy": {"backend": "replicated", "max_bytes": "10MB", "durable": "write_behind"},
            "scratch": {"backend": "memory", "max_bytes": "10MB"},
        },
        "client": {"poll_timeout_s": 0.5},
    }
    if ray.is_initialized():
        ray.shutdown()
    _ray_up()
    try:
        system = erlmcp_ray.start(cfg, namespace=NS)
        with system.client() as c:
            for i in range(200):
                for domain in ("notes", "kept", "lazy", "scratch"):
                    c.put(domain, f"k{i}", {"i": i, "d": domain}, tags=[f"t{i % 3}"])
            for domain in ("notes", "kept", "lazy"):
                c.put(domain, "ttl", "later", ttl=3600, consistency="strong")
                c.put(domain, "gone", 1, consistency="strong")
                c.delete(domain, "gone", consistency="strong")
            c.flush(timeout=60)
            versions = {d: c.get_entry(d, "k7", consistency="strong").version for d in ("notes", "kept", "lazy")}
        # Replicated domains collect their tombstones once every replica acknowledged them (that
        # changes the digest): compare the states after that has happened.
        for domain in ("kept", "lazy"):
            owner = ray.get_actor(shard_name(domain, 0, 0), namespace=NS)
            wait_for(lambda o=owner: ray.get(o.stats.remote(), timeout=30)["tombstones"] == 0, timeout=30,
                     what=f"{domain}'s tombstones to be collected")
        before = _owner_digests(cfg)
        erlmcp_ray.shutdown(NS)  # keeps durable data (write_behind owners flush first)
        ray.shutdown()
        assert tier.stored(), "shutdown() without purge left nothing in the durable store"

        _ray_up()
        system = erlmcp_ray.start(cfg, namespace=NS)
        assert _owner_digests(cfg) == before
        with system.client() as c:
            for domain in ("notes", "kept", "lazy"):
                for i in range(200):
                    assert c.get(domain, f"k{i}", consistency="strong") == {"i": i, "d": domain}
                entry = c.get_entry(domain, "k7", consistency="strong")
                assert entry.version == versions[domain] and entry.tags == ("t1",)
                ttl = c.get_entry(domain, "ttl", consistency="strong")
                assert ttl.value == "later" and ttl.expires_at_ms > time.time() * 1000
                assert c.get(domain, "gone", consistency="strong") is None
            assert c.get("scratch", "k1", consistency="strong") is None  # memory domains start empty
            c.put("kept", "after", 1, consistency="strong")  # and take writes again
            assert c.get("kept", "after", consistency="strong") == 1

        erlmcp_ray.shutdown(NS, purge=True)
        assert tier.stored() == []
        time.sleep(1.0)  # 20 flush intervals: no owner of the stopped system writes anything back
        assert tier.stored() == []
    finally:
        if ray.is_initialized():
            erlmcp_ray.shutdown(NS, purge=True)
            ray.shutdown()
