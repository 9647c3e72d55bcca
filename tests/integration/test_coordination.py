"""Cache coordination against a real Ray: protocols, coherence levels, faults (issue "Cache coordination")."""

from __future__ import annotations

import threading
import time

import pytest
import ray

import erlmcp_ray
from erlmcp_ray.actors.options import COORDINATOR, owner_name, shard_name
from erlmcp_ray.core.routing import shard_for
from tests.conftest import module_system, one_coherence_round, wait_for

pytestmark = pytest.mark.ray

CFG = {
    "domains": {"session": {"shards": 1}, "shared": {"shards": 1}},
    "cache_coordinator": {"invalidation_timeout": 1500, "lease_ms": 3000},
    "client": {"poll_timeout_s": 0.5},
}


system = module_system(CFG, "coordination")


@ray.remote(num_cpus=0)
class Holder:
    """An agent in its own process, with its own client and caches."""

    def __init__(self, client):
        self.c = client
        self.events = []

    def cid(self):
        return self.c.client_id

    def get(self, domain, key, local_only=False):
        return self.c.get(domain, key, local_only=local_only)

    def on_cache_invalidated(self, event):
        self.events.append(event)

    def seen(self):
        return list(self.events)


@pytest.fixture(scope="module")
def holders(system):
    seed = system.client()
    hs = [Holder.remote(seed) for _ in range(2)]
    ids = ray.get([h.cid.remote() for h in hs], timeout=60)
    yield hs, ids
    for h in hs:
        ray.kill(h)
    seed.close()


def cached_everywhere(hs, domain, key):
    return ray.get([h.get.remote(domain, key, True) for h in hs], timeout=30)


def prime(hs, domain, key, expected):
    assert ray.get([h.get.remote(domain, key) for h in hs], timeout=30) == [expected] * len(hs)
    assert cached_everywhere(hs, domain, key) == [expected] * len(hs)


def test_synchronous_invalidate_waits_for_every_holder(system, client, holders):
    hs, ids = holders
    client.put("shared", "doc", {"v": 1}, consistency="strong")
    prime(hs, "shared", "doc", {"v": 1})
    result = client.coordinator.invalidate("shared", "doc")
    assert result.complete and set(ids) <= set(result.acked) and result.missing == ()
    assert cached_everywhere(hs, "shared", "doc") == [None, None]  # dropped before invalidate returned
    assert client.get("shared", "doc", consistency="strong") == {"v": 1}  # shared: shards keep the entry


def test_invalidating_a_source_cache_also_removes_the_entry(system, client, holders):
    hs, _ = holders
    client.put("cache", "computed", 42, consistency="strong")
    prime(hs, "cache", "computed", 42)
    client.coordinator.invalidate("cache", "computed")
    assert cached_everywhere(hs, "cache", "computed") == [None, None]
    assert client.get("cache", "computed", consistency="strong") is None  # gone from the shard too


def test_broadcast_and_local(system, client, holders):
    hs, _ = holders
    client.put("shared", "b", 1, consistency="strong")
    prime(hs, "shared", "b", 1)
    assert client.get("shared", "b") == 1
    client.coordinator.invalidate_local("shared", "b")
    assert client.get("shared", "b", local_only=True) is None
    assert cached_everywhere(hs, "shared", "b") == [1, 1]  # local means local
    t0 = time.monotonic()
    assert client.coordinator.broadcast_invalidation("shared", "b") is None
    assert time.monotonic() - t0 < 0.5
    wait_for(lambda: cached_everywhere(hs, "shared", "b") == [None, None], what="broadcast to arrive")


def test_tag_and_pattern_remove_exactly_the_matching_entries(system, client, holders):
    hs, _ = holders
    tagged = {("shared", "t1"), ("shared", "t2"), ("session", "t3")}
    for domain, key in [("shared", "t1"), ("shared", "t2"), ("shared", "u1"), ("session", "t3"), ("session", "u2")]:
        tags = ("user_sessions",) if (domain, key) in tagged else ("other",)
        client.put(domain, key, key, consistency="strong", tags=tags)
        prime(hs, domain, key, key)
    assert client.coordinator.invalidate_tag("user_sessions") == 3
    wait_for(lambda: all(cached_everywhere(hs, d, k) == [None, None] for d, k in tagged), what="tag invalidation")
    assert cached_everywhere(hs, "shared", "u1") == ["u1", "u1"]
    assert cached_everywhere(hs, "session", "u2") == ["u2", "u2"]

    for key in ["session:1", "session:2", "sessions", "other:session:3"]:
        client.put("cache", key, key, consistency="strong")
        prime(hs, "cache", key, key)
    assert client.coordinator.invalidate_pattern("session:*", domain="cache") == 2
    wait_for(lambda: cached_everywhere(hs, "cache", "session:1") == [None, None], what="pattern invalidation")
    assert cached_everywhere(hs, "cache", "session:2") == [None, None]
    assert cached_everywhere(hs, "cache", "sessions") == ["sessions"] * 2
    assert cached_everywhere(hs, "cache", "other:session:3") == ["other:session:3"] * 2
    assert client.get("cache", "session:1", consistency="strong") is None  # source cache: entry removed
    with pytest.raises(erlmcp_ray.InvalidValueError):
        client.coordinator.invalidate_pattern("")


def test_a_writer_is_not_sent_its_own_writes_and_every_other_cache_drops_them(system, client, holders):
    """Redis's NOLOOP, on by default: the coordinator leaves a client's own writes out of its polls
    (its copy took the version from the write's answer), while the holders in other processes drop
    their older copies as before, and the writer reads its last write from its cache."""
    hs, _ = holders
    client.put("shared", "own", 0, consistency="strong")
    prime(hs, "shared", "own", 0)
    before = client.counters["invalidations_received"]
    for i in range(1, 21):
        client.put("shared", "own", i)
    client.put("shared", "own-strong", "s", consistency="strong")
    client.flush(timeout=30)
    wait_for(lambda: all(v in (None, 20) for v in cached_everywhere(hs, "shared", "own")), what="holders to drop")
    one_coherence_round(client)
    assert client.counters["invalidations_received"] == before
    assert client.get("shared", "own", local_only=True) == 20
    assert client.get("shared", "own-strong", local_only=True) == "s"


def test_subscribe_invalidation_callable_and_actor(system, client, holders):
    hs, _ = holders
    seen = []
    sub = client.coordinator.subscribe_invalidation(seen.append)
    actor_sub = client.coordinator.subscribe_invalidation(hs[0])
    client.put("shared", "watched", 1, consistency="strong")
    client.coordinator.invalidate("shared", "watched")
    wait_for(lambda: {e.reason for e in seen if e.key == "watched"} >= {"write", "invalidate"},
             what="callable invalidation events")
    wait_for(lambda: {e.reason for e in ray.get(hs[0].seen.remote(), timeout=30) if e.key == "watched"}
             >= {"write", "invalidate"}, what="actor invalidation events")
    sub.cancel()
    actor_sub.cancel()


def test_coherence_levels_on_writes(system, client, holders):
    hs, _ = holders
    client.put("shared", "coh", 0, consistency="strong")
    prime(hs, "shared", "coh", 0)
    # strong: when put returns, no holder has the old copy any more
    client.put("shared", "coh", 1, consistency="strong", coherence="strong")
    assert all(v in (None, 1) for v in cached_everywhere(hs, "shared", "coh"))
    prime(hs, "shared", "coh", 1)
    # eventual: holders drop it after the write is flushed and one coherence round passes
    client.put("shared", "coh", 2, coherence="eventual")
    client.flush(timeout=30)
    wait_for(lambda: all(v in (None, 2) for v in cached_everywhere(hs, "shared", "coh")), what="eventual drop")
    prime(hs, "shared", "coh", 2)
    # relaxed: holders are not told; their copies stay until they age out (the lease)
    events = []
    sub = client.subscribe("shared", events.append)
    client.put("shared", "coh", 3, coherence="relaxed")
    client.flush(timeout=30)
    wait_for(lambda: any(e.key == "coh" and e.value == 3 for e in events), what="subscriber to hear of it")
    assert cached_everywhere(hs, "shared", "coh") == [2, 2]
    lease_s = CFG["cache_coordinator"]["lease_ms"] / 1000
    wait_for(lambda: cached_everywhere(hs, "shared", "coh") == [None, None], timeout=lease_s + 5,
             what="relaxed copies to age out")
    sub.cancel()


def test_frozen_client_is_reported_missing_and_serves_nothing_stale(system, client):
    gate = threading.Event()
    gate.set()

    def freeze(messages):
        gate.wait()
        return messages

    frozen = erlmcp_ray.connect("coordination", poll_hook=freeze)
    try:
        client.put("shared", "f", "old", consistency="strong")
        assert frozen.get("shared", "f") == "old"
        gate.clear()  # its coherence thread blocks on the next answer
        time.sleep(0.7)  # let a poll be answered and block
        client.put("shared", "f", "new", consistency="strong")
        t0 = time.monotonic()
        result = client.coordinator.invalidate("shared", "f")
        waited = time.monotonic() - t0
        assert frozen.client_id in result.missing and not result.complete
        assert waited >= 1.4  # returned at the invalidation timeout (1.5 s), not before
        assert frozen.get("shared", "f") == "new"  # its cache is no longer trusted: it read remotely
        gate.set()
        one_coherence_round(frozen)
        assert frozen.get("shared", "f") == "new"
    finally:
        gate.set()
        frozen.close()


def test_a_dropped_invalidation_leaves_a_copy_stale_at_most_one_lease(system, client):
    dropping = threading.Event()

    def drop(messages):
        return [m for m in messages if m[2] != "lost"] if dropping.is_set() else messages

    victim = erlmcp_ray.connect("coordination", poll_hook=drop)
    try:
        client.put("shared", "lost", "v1", consistency="strong")
        assert victim.get("shared", "lost") == "v1"
        dropping.set()
        client.put("shared", "lost", "v2", consistency="strong")
        written = time.monotonic()
        lease_s = CFG["cache_coordinator"]["lease_ms"] / 1000
        while time.monotonic() - written < lease_s + 1:
            value = victim.get("shared", "lost")
            if value == "v1":
                assert time.monotonic() - written < lease_s + 0.2
            time.sleep(0.1)
        assert victim.get("shared", "lost") == "v2"
    finally:
        victim.close()


def test_concurrent_misses_make_one_fetch(system, client):
    client.put("shared", "hot", "x", consistency="strong")
    reader = system.client()
    try:
        before, hits_before = dict(reader.stats()["tiers"]), reader.stats()["cache"]["hits"]
        barrier = threading.Barrier(16)
        out = []

        def miss():
            barrier.wait()
            out.append(reader.get("shared", "hot"))

        threads = [threading.Thread(target=miss) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        after, hits = reader.stats()["tiers"], reader.stats()["cache"]["hits"] - hits_before
        remote = (after["owner_reads"] - before["owner_reads"]) + (after["replica_reads"] - before["replica_reads"])
        shared = after["shared_fetches"] - before["shared_fetches"]
        assert out == ["x"] * 16
        assert remote < 16
        # Every read that did not fetch shared a fetch, or found what a finished one cached (when the
        # first fetch answers before the other threads miss, they hit the cache: about 1 round in 15).
        assert shared + hits >= 16 - remote and shared + hits > 0
    finally:
        reader.close()


def test_coordinator_restart_mid_traffic_keeps_subscriptions_and_coherence(system, client, holders):
    hs, _ = holders
    sub = client.coordinator.subscribe_invalidation(hs[1])
    stop = threading.Event()
    last_written = {}

    def writer():
        i = 0
        while not stop.is_set():
            client.put("shared", "traffic", i, consistency="strong")
            last_written["v"] = (i, time.monotonic())
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        coordinator = ray.get_actor(COORDINATOR, namespace="coordination")
        epoch = ray.get(coordinator.ping.remote(), timeout=30)
        ray.kill(coordinator, no_restart=False)
        wait_for(lambda: _ping(coordinator) not in (None, epoch), timeout=60, what="coordinator restart")
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
    final = last_written["v"][0]
    client.put("shared", "after", 1, consistency="strong")
    # the actor subscription made before the restart still delivers
    wait_for(lambda: any(e.key == "after" for e in ray.get(hs[1].seen.remote(), timeout=30)), timeout=30,
             what="subscription to survive the restart")
    lease_s = CFG["cache_coordinator"]["lease_ms"] / 1000
    time.sleep(lease_s)
    assert ray.get([h.get.remote("shared", "traffic") for h in hs], timeout=30) == [final, final]
    sub.cancel()


def test_a_new_owner_incarnation_drops_cached_entries(system, client):
    reader = system.client()
    try:
        client.put("session", "inc", 1, consistency="strong")
        assert reader.get("session", "inc") == 1
        owner = ray.get_actor(shard_name("session", shard_for("inc", 1), 0), namespace="coordination")
        reader.get("session", "other", consistency="strong")  # learn the current incarnation
        before = ray.get(owner.progress.remote(), timeout=30)[0]
        ray.kill(owner, no_restart=False)
        # Ray restarts it, or the supervisor promotes the replica: a new owner incarnation either way
        wait_for(lambda: _incarnation(_current_owner("session", 0)) not in (None, before), timeout=60,
                 what="a new owner")
        reader.get("session", "other", consistency="strong")  # sees a new incarnation
        assert reader.stats()["tiers"]["owner_restarts_seen"] >= 1
        assert reader.get("session", "inc", local_only=True) is None
        assert reader.get("session", "inc") == 1  # recovered from the replica
    finally:
        reader.close()


def _ping(handle):
    try:
        return ray.get(handle.ping.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - restarting
        time.sleep(0.1)
        return None


def _current_owner(domain, shard):
    return ray.get_actor(owner_name("coordination", domain, shard), namespace="coordination")


def _incarnation(handle):
    try:
        return ray.get(handle.progress.remote(), timeout=5)[0]
    except Exception:  # noqa: BLE001 - restarting
        time.sleep(0.1)
        return None


@pytest.mark.parametrize("kind", ["direct", "ray"])
def test_a_client_closes_at_once_and_its_last_poll_leaves_no_ghost(ray_local, kind):
    """``close()`` does not wait out a long poll in flight (a Ray call cannot be interrupted: it was
    ~0.75 s on the Ray transport, up to ``poll_timeout_s``), and when that poll answers later --
    woken by a write -- nothing of the closed client is registered again: a ghost that synchronous
    invalidations would wait for, or that lingers until its lease lapses."""
    ns = f"close_{kind}"
    sysm = erlmcp_ray.start({**CFG, "transport": {"kind": kind}, "client": {"poll_timeout_s": 3.0}}, namespace=ns)
    try:
        writer = sysm.client()
        coordinator = ray.get_actor(COORDINATOR, namespace=ns)
        for _ in range(3):
            leaving = sysm.client()
            leaving.get("shared", "k")  # caches (a miss)
            time.sleep(0.3)  # its long poll is waiting at the coordinator
            start = time.monotonic()
            leaving.close()
            assert time.monotonic() - start < 1.0
            writer.put("shared", "k", 1, consistency="strong")  # wakes the closed client's poll
            time.sleep(0.3)
            assert leaving.client_id not in ray.get(coordinator.client_info.remote(), timeout=30)
            result = writer.coordinator.invalidate("shared", "k", timeout=5)
            assert leaving.client_id not in result.acked + result.missing
        writer.close()
    finally:
        erlmcp_ray.shutdown(ns)
