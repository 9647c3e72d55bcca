"""Domains on a real local Ray: consistency levels, caches, bad input, idempotency, subscriptions."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

import erlmcp_ray
from erlmcp_ray import _ray
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.errors import (
    InvalidConsistencyError,
    InvalidKeyError,
    InvalidValueError,
    UnknownDomainError,
)
from tests.conftest import one_coherence_round, wait_for

pytestmark = pytest.mark.ray


def owner_of(system, domain, key, slot=0):
    shards = system.config.domain(domain).shards
    return ray.get_actor(shard_name(domain, shard_for(key, shards), slot), namespace=system.namespace)


@ray.remote(num_cpus=0)
def read_in_task(client, domain, key, consistency):
    return client.get(domain, key, consistency=consistency)


@ray.remote(num_cpus=0)
class Reader:
    def __init__(self, client):
        self.client = client

    def get(self, domain, key, consistency=None):
        return self.client.get(domain, key, consistency=consistency)


@ray.remote(num_cpus=0)
class AsyncAgent:
    def __init__(self, client):
        self.client = client

    async def roundtrip(self, key):
        await self.client.put_async("shared", key, {"from": "async"}, consistency="strong")
        await self.client.put_async("session", key, [1, 2, 3])  # bounded_stale (session's default)
        first = await self.client.get_async("shared", key, consistency="strong")
        second = await self.client.get_async("session", key)
        await self.client.put_async("cache", key, "buffered")  # eventual: only buffered
        await self.client.flush_async(timeout=10)
        deleted = await self.client.delete_async("cache", key)
        return first, second, deleted


def test_strong_put_is_seen_by_every_other_client(system, client):
    value = {"model": "gpt-4", "tokens": 1500}
    version = client.put("shared", "analysis_results", value, consistency="strong")
    assert version.vector == {0: version.vector[0]} and version.timestamp > 0
    other = system.client()
    try:
        assert other.get("shared", "analysis_results", consistency="strong") == value
        assert other.get("shared", "analysis_results") == value  # eventual read: a replica has it too
    finally:
        other.close()
    assert ray.get(read_in_task.remote(client, "shared", "analysis_results", "strong"), timeout=60) == value
    reader = Reader.remote(client)
    assert ray.get(reader.get.remote("shared", "analysis_results", "strong"), timeout=60) == value
    client.put("shared", "analysis_results", {"v": 2}, consistency="strong")
    assert ray.get(reader.get.remote("shared", "analysis_results", "strong"), timeout=60) == {"v": 2}
    ray.kill(reader)


def test_eventual_read_your_writes_then_others_after_flush_and_one_round(system, client):
    other = system.client()
    try:
        client.put("shared", "doc", {"rev": 0}, consistency="strong")
        assert other.get("shared", "doc") == {"rev": 0}  # now cached in other's L1
        for rev in range(1, 50):
            assert client.put("shared", "doc", {"rev": rev}, consistency="eventual") is None
            assert client.get("shared", "doc") == {"rev": rev}  # at once, from the writer's own cache
        assert client.stats()["tiers"]["batches_sent"] < 49 + 5  # coalesced/batched, not one call each
        client.flush(timeout=10)
        one_coherence_round(other)
        assert other.get("shared", "doc") == {"rev": 49}
        assert other.get("shared", "doc", local_only=True) == {"rev": 49}
    finally:
        other.close()
    # replicas converge: every copy of every shard has the same digest
    for shard in range(system.config.domain("shared").shards):
        handles = [ray.get_actor(shard_name("shared", shard, s), namespace=system.namespace) for s in range(2)]
        wait_for(lambda hs=handles: len(set(ray.get([h.digest.remote() for h in hs], timeout=30))) == 1,
                 what="replicas to converge")


def test_returned_values_are_never_the_cached_object(client):
    client.put("shared", "mutable", {"items": [1]}, consistency="eventual")
    got = client.get("shared", "mutable")
    got["items"].append(2)
    assert client.get("shared", "mutable") == {"items": [1]}


def test_bounded_stale_never_returns_a_value_older_than_the_window(system, client):
    window_s = system.config.domain("session").staleness_ms / 1000.0
    client.put("session", "prefs", {"theme": "dark"}, consistency="strong")
    reader = system.client()
    try:
        assert reader.get("session", "prefs", consistency="bounded_stale") == {"theme": "dark"}
        replica = owner_of(system, "session", "prefs", slot=1)
        ray.get(replica.hold_replication.remote(4.0), timeout=30)
        client.put("session", "prefs", {"theme": "light"}, consistency="bounded_stale")
        written_at = time.monotonic()
        seen_old_after_window = []
        while time.monotonic() - written_at < 3.0:
            fresh_reader = system.client()
            try:
                for c in (reader, fresh_reader):
                    age = time.monotonic() - written_at  # when the read started
                    value = c.get("session", "prefs", consistency="bounded_stale")
                    if age > window_s and value == {"theme": "dark"}:
                        seen_old_after_window.append(age)
            finally:
                fresh_reader.close()
            time.sleep(0.1)
        assert not seen_old_after_window
        assert reader.stats()["tiers"]["stale_replica_fallbacks"] + reader.stats()["tiers"]["owner_reads"] > 0
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.put("nope", "k", 1), UnknownDomainError),
        (lambda c: c.get("nope", "k"), UnknownDomainError),
        (lambda c: c.put("shared", "", 1), InvalidKeyError),
        (lambda c: c.put("shared", 42, 1), InvalidKeyError),
        (lambda c: c.put("shared", "x" * 2000, 1), InvalidKeyError),
        (lambda c: c.put("shared", "k", {1, 2}), InvalidValueError),
        (lambda c: c.put("shared", "k", {"a": object()}), InvalidValueError),
        (lambda c: c.put("shared", "k", 1, consistency="strongest"), InvalidConsistencyError),
        (lambda c: c.get("shared", "k", consistency=3), InvalidConsistencyError),
        (lambda c: c.put("shared", "k", 1, ttl=-1), InvalidValueError),
        (lambda c: c.put("shared", "k", 1, tags="notalist"), InvalidValueError),
        (lambda c: c.delete("nope", "k"), UnknownDomainError),
        (lambda c: c.set_consistency("sometimes"), InvalidConsistencyError),
    ],
)
def test_bad_input_raises_at_the_call_site_and_sends_nothing(client, call, error):
    before = dict(client.stats()["tiers"])
    with pytest.raises(error):
        call(client)
    after = client.stats()["tiers"]
    for k in ("buffered_puts", "batches_sent", "strong_writes", "sync_writes", "owner_reads", "replica_reads"):
        assert after[k] == before[k], k
    assert client.stats()["write_behind"]["buffered"] == 0


def test_a_retried_write_applies_once(system, client):
    owner = owner_of(system, "shared", "idem")
    op = [("idem", erlmcp_ray.core.codec.encode_value("v"), None, ())]
    first = ray.get(owner.write.remote("client-x", 7, op, True), timeout=30)
    again = ray.get(owner.write.remote("client-x", 7, op, True), timeout=30)
    assert first == again
    other = ray.get(owner.write.remote("client-x", 8, op, True), timeout=30)
    assert other[1] == first[1] + 1  # a new request seq is a new write: one more op in the log


def test_replica_refuses_an_older_epoch(system):
    replica = owner_of(system, "shared", "k", slot=1)
    with pytest.raises(erlmcp_ray.StaleEpochError):
        _ray.get(replica.apply_write.remote((0, 1, [], "x")), timeout=30, what="replica")


def test_from_sixteen_threads_sharing_one_client(client):
    errors = []

    def agent(i):
        try:
            for j in range(20):
                key = f"t{i}:{j}"
                client.put("shared", key, {"i": i, "j": j}, consistency="strong" if j % 5 == 0 else "eventual")
                assert client.get("shared", key) == {"i": i, "j": j}
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    client.flush(timeout=30)
    assert client.get("shared", "t15:19", consistency="strong") == {"i": 15, "j": 19}
    assert client.stats()["write_behind"]["group_commit_ops"] >= 16 * 4


def test_async_twins_inside_an_async_actor(client):
    agent = AsyncAgent.remote(client)
    first, second, deleted = ray.get(agent.roundtrip.remote("async-key"), timeout=60)
    assert first == {"from": "async"} and second == [1, 2, 3] and deleted is True
    ray.kill(agent)


def test_ttl_tags_get_entry_and_delete(client):
    v = client.put("shared", "tmp", "x", consistency="strong", ttl=0.3, tags=["t1"])
    entry = client.get_entry("shared", "tmp", consistency="strong")
    assert entry.value == "x" and entry.tags == ("t1",) and entry.version == v and entry.expires_at_ms
    time.sleep(0.4)
    assert client.get("shared", "tmp", consistency="strong") is None
    client.put("shared", "gone", 1, consistency="strong")
    assert client.delete("shared", "gone", consistency="strong") is True
    assert client.delete("shared", "gone", consistency="strong") is False
    assert client.get("shared", "gone") is None and client.get("shared", "gone", "dflt") == "dflt"


def test_subscribers_get_updates_in_per_key_order(system, client):
    events = []
    sub = client.subscribe("shared", events.append)
    recorder = Recorder.remote()
    actor_sub = client.subscribe("shared", recorder)
    writer = system.client()
    try:
        for i in range(30):
            writer.put("shared", "counter", i)  # eventual, batched: coalescing may skip some values
        writer.put("shared", "counter", 1000, consistency="strong")
        writer.delete("shared", "counter")
        writer.flush(timeout=10)
        wait_for(lambda: any(e.deleted for e in events if e.key == "counter"), what="callable events")
        wait_for(lambda: any(e.deleted for e in ray.get(recorder.events.remote(), timeout=30)),
                 what="actor events")
    finally:
        writer.close()
    for via, seen in (("callable", [e for e in events if e.key == "counter"]),
                      ("actor", [e for e in ray.get(recorder.events.remote(), timeout=30) if e.key == "counter"])):
        timestamps = [e.version.timestamp for e in seen]
        assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
        values = [e.value for e in seen if not e.deleted]
        assert values and values == sorted(values) and values[-1] == 1000, (via, seen)
        assert seen[-1].deleted and seen[-1].domain == "shared"
    sub.cancel()
    actor_sub.cancel()


@ray.remote(num_cpus=0)
class Recorder:
    def __init__(self):
        self._events = []

    def on_memory_update(self, event):
        self._events.append(event)

    def events(self):
        return list(self._events)


def test_set_consistency_and_local_only(system, client):
    client.set_consistency("strong")
    client.put("shared", "lvl", 1)  # strong by default now
    other = system.client()
    try:
        assert other.get("shared", "lvl", local_only=True) is None  # never left the process
        assert other.get("shared", "lvl", consistency="strong") == 1
        assert other.get("shared", "lvl", local_only=True) == 1
    finally:
        other.close()
    client.set_consistency(None)


def test_start_is_idempotent_and_refuses_a_conflicting_config(system):
    again = erlmcp_ray.start(namespace=system.namespace)
    assert again.config == system.config
    with pytest.raises(erlmcp_ray.ConfigError):
        erlmcp_ray.start({"domains": {"session": {"shards": 3}}}, namespace=system.namespace)


def test_stats_and_sync_status(client):
    client.put("shared", "s1", 1, consistency="strong")
    status = client.sync_status()
    assert set(status) == set(client.config.domains)
    assert all("replicas" in shard for shard in status["shared"])
    ds = client.get_domain_stats("shared")
    assert ds["entries"] >= 1 and ds["replicas"] == 1 and ds["limit"] == 200 * 1024 * 1024
    st = client.stats()
    assert {"cache", "tiers", "latency_ms", "write_behind"} <= set(st)


def test_asyncio_loop_is_not_blocked_by_eventual_put(client):
    async def main():
        return await client.put_async("cache", "k", 1)

    assert asyncio.run(main()) is None
