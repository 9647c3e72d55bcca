"""The client's logic without Ray: read path, coherence, subscriptions, strong-write failures, on the
in-process ``FakeTransport`` (real shard copies and a real invalidation log)."""

from __future__ import annotations

import threading
import time

import pytest

from erlmcp_ray.client import COORDINATOR, Copy
from erlmcp_ray.core.invalidation import InvalidationLog
from erlmcp_ray.errors import ReplicationError, UnavailableError
from erlmcp_ray.testing import FakeTransport
from tests.conftest import wait_for

CFG = {
    "domains": {"shared": {"shards": 2}, "session": {"shards": 1, "staleness_ms": 200}},
    "client": {"poll_timeout_s": 0.2},
    "cache_coordinator": {"lease_ms": 2000, "invalidation_timeout": 1000},
}


@pytest.fixture
def fake():
    return FakeTransport(CFG)


@pytest.fixture
def pair(fake):
    a, b = fake.client(), fake.client()
    yield a, b
    a.close()
    b.close()


def test_a_write_drops_other_clients_cached_copies(fake, pair):
    a, b = pair
    a.put("shared", "k", 1, consistency="strong")
    assert b.get("shared", "k") == 1 and b.get("shared", "k", local_only=True) == 1
    a.put("shared", "k", 2, consistency="strong")
    wait_for(lambda: b.get("shared", "k", local_only=True) is None, what="b to drop its copy")
    assert b.get("shared", "k") == 2


def test_strong_coherence_drops_copies_before_put_returns(fake, pair):
    a, b = pair
    a.put("shared", "k", 1, consistency="strong")
    assert b.get("shared", "k") == 1
    a.put("shared", "k", 2, coherence="strong")
    assert b.get("shared", "k", local_only=True) is None


def test_a_new_coordinator_epoch_makes_clients_drop_everything(fake, pair):
    a, b = pair
    a.put("shared", "k", 1, consistency="strong")
    assert b.get("shared", "k") == 1
    with fake._lock:
        fake.log = InvalidationLog(epoch=2, lease_ms=2000)  # as a restarted coordinator
    wait_for(lambda: b.counters["gaps"] >= 1, what="b to notice the new epoch")
    assert b.get("shared", "k", local_only=True) is None
    assert b.get("shared", "k") == 1


def test_without_a_recent_poll_the_cache_is_not_trusted(fake, pair):
    a, b = pair
    a.put("shared", "k", 1, consistency="strong")
    assert b.get("shared", "k") == 1
    fake.down(COORDINATOR)
    trust_s = b.settings.trust_s
    time.sleep(trust_s + 0.3)
    owner_reads = b.counters["owner_reads"] + b.counters["replica_reads"]
    assert b.get("shared", "k") == 1  # served, but not from its cache
    assert b.counters["owner_reads"] + b.counters["replica_reads"] == owner_reads + 1
    fake.up(COORDINATOR)


def test_subscribers_get_every_write_in_order(fake, pair):
    a, b = pair
    seen = []
    sub = b.subscribe("shared", lambda e: seen.append((e.key, e.value, e.deleted)))
    for i in range(20):
        a.put("shared", "k", i)
    a.delete("shared", "k")
    a.flush(timeout=5)
    wait_for(lambda: len(seen) >= 2 and seen[-1][2], what="the delete to arrive")
    values = [v for k, v, d in seen if not d]
    assert values == sorted(values) and values[-1] == 19  # coalesced writes may be skipped, never reordered
    sub.cancel()


def test_a_stale_replica_sends_a_bounded_read_to_the_owner(fake, pair):
    a, b = pair
    fake.hold("session", 0)  # the replica never caught up: its staleness is unbounded
    a.put("session", "s", "v", consistency="bounded_stale")
    before = b.counters["stale_replica_fallbacks"]
    assert b.get("session", "s", consistency="bounded_stale") == "v"
    assert b.counters["stale_replica_fallbacks"] == before + 1  # the one replica answered "stale"
    fake.release("session", 0)


def test_a_strong_write_short_of_min_insync_raises_replication_error_and_is_indeterminate():
    # The writer retries the missing replica for its call timeout (30 s by default) before giving up.
    fake = FakeTransport({**CFG, "client": {**CFG["client"], "call_timeout_s": 3.0}})
    a, b = fake.client(), fake.client()
    try:
        fake.down(Copy("session", 0, 1))
        with pytest.raises(ReplicationError, match="not acknowledged"):
            a.put("session", "r", "maybe", consistency="strong")
        # Documented: the owner applied it, so a later read may see it (like a timeout's outcome) --
        # once the replicas hold it: never while it could still be lost with the owner.
        with pytest.raises(UnavailableError):
            b.get("session", "r", consistency="strong")
        fake.up(Copy("session", 0, 1))
        assert b.get("session", "r", consistency="strong") == "maybe"  # the owner's next round took it there
    finally:
        a.close()
        b.close()


def test_reads_of_a_key_being_written_by_this_client_see_the_write(fake):
    c = fake.client()
    try:
        errors = []

        def writer():
            for i in range(500):
                c.put("shared", "mine", i)
                got = c.get("shared", "mine")
                if got != i:
                    errors.append((i, got))

        threads = [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        c.flush(timeout=5)
    finally:
        c.close()


def test_a_client_is_not_sent_its_own_writes_but_others_are_and_listeners_still_hear_them(fake, pair):
    """A writer's own writes come back to it from the coordinator only when something of its wants
    them (an invalidation callback, a value subscription): its cached copy took the version from the
    write's answer. Every other caching client is told, and the writer still reads its writes."""
    a, b = pair
    for i in range(50):
        assert b.get("shared", f"k{i}") is None  # b caches nothing yet, but polls for the domain
    for i in range(50):
        a.put("shared", f"k{i}", i)
    a.put("shared", "s", "strong", consistency="strong")
    a.flush(timeout=5)
    wait_for(lambda: b.counters["invalidations_received"] >= 51, what="b to hear of a's writes")
    marker = b.counters["polls"]
    wait_for(lambda: a.counters["polls"] >= marker + 2 and b.counters["polls"] >= marker + 2, what="polls")
    assert a.counters["invalidations_received"] == 0
    assert [a.get("shared", f"k{i}", local_only=True) for i in range(50)] == list(range(50))
    assert a.get("shared", "s", local_only=True) == "strong"

    heard, values = [], []
    sub = a.coordinator.subscribe_invalidation(lambda e: heard.append(e.key), domain="shared")
    a.put("shared", "k0", "again")
    a.flush(timeout=5)
    wait_for(lambda: "k0" in heard, what="a's invalidation listener to hear of a's own write")
    sub.cancel()
    vsub = a.subscribe("shared", lambda e: values.append((e.key, e.value)))
    a.put("shared", "k1", "once more")
    a.flush(timeout=5)
    wait_for(lambda: ("k1", "once more") in values, what="a's value subscriber to get a's own write")
    vsub.cancel()
    assert a.get("shared", "k0") == "again" and b.get("shared", "k0") == "again"


def test_caches_converge_on_the_last_write_under_racing_writers_and_readers(fake, pair):
    """Two clients write the same keys from two threads each while two more threads read them
    through both caches (eventual reads race the writers' acknowledgements): once the writes are
    flushed and a poll round has passed, every cached copy is the owner's version."""
    a, b = pair
    keys = [f"r{i}" for i in range(8)]
    stop = threading.Event()
    errors = []

    def write(client, tag):
        try:
            for n in range(300):
                client.put("shared", keys[n % len(keys)], f"{tag}{n}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read(client):
        while not stop.is_set():
            for k in keys:
                client.get("shared", k)

    writers = [threading.Thread(target=write, args=(c, f"{c.client_id[:4]}-{t}-")) for c in (a, b) for t in (0, 1)]
    readers = [threading.Thread(target=read, args=(c,)) for c in (a, b)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(60)
    a.flush(timeout=10)
    b.flush(timeout=10)
    stop.set()
    for t in readers:
        t.join(10)
    assert errors == []
    marker = max(a.counters["polls"], b.counters["polls"])
    wait_for(lambda: min(a.counters["polls"], b.counters["polls"]) >= marker + 2, what="a poll round")
    truth = {k: a.get("shared", k, consistency="strong") for k in keys}
    for client in (a, b):
        cached = {k: client.get("shared", k, local_only=True) for k in keys}
        assert {k: v for k, v in cached.items() if v is not None} == {
            k: truth[k] for k, v in cached.items() if v is not None}


def test_who_may_spin_waiting_for_an_answer():
    """A direct connection's reader spins only for a lone caller's own call (``erlmcp_ray.direct.
    spinning``): the transport sees, per call, whether the calling thread may. A lone strong put and
    a get may; the write-behind thread's batches never; strong puts while other callers of the client
    are writing (one group-commit round for several, or a lone op with others queueing) never."""
    from erlmcp_ray.direct import _client as direct_client

    seen: list[tuple[str, str, bool]] = []

    def record(target, method, args):
        if method in ("write", "read"):
            seen.append((threading.current_thread().name, method, not getattr(direct_client._threads, "quiet", False)))

    fake = FakeTransport(CFG, before_call=record)
    client = fake.client()
    try:
        client.put("session", "lone", 1, consistency="strong")
        assert seen[-1] == (threading.current_thread().name, "write", True)
        assert client.get("session", "lone", consistency="strong") == 1
        assert seen[-1][1:] == ("read", True)
        seen.clear()
        client.put("session", "later", 2, consistency="eventual")  # the write-behind thread sends it
        wait_for(lambda: any(s[1] == "write" for s in seen), what="the write-behind's batch")
        assert [s for s in seen if s[1] == "write"] == [("erlmcp-write-behind", "write", False)]

        seen.clear()
        gate = threading.Event()

        holding = [True]

        def hold(target, method, args):  # the first write waits (until the gate opens); the rest pass
            record(target, method, args)
            if method == "write" and holding[0]:
                holding[0] = False
                gate.wait(5)

        fake.before_call = hold
        threads = [threading.Thread(target=client.put, args=("session", f"c{i}", i),
                                    kwargs={"consistency": "strong"}) for i in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: client._group.callers == 4, what="4 callers writing")
        gate.set()
        for t in threads:
            t.join(10)
        writes = [s for s in seen if s[1] == "write"]
        # the first round began before the others came; every later one had company
        assert len(writes) >= 2 and not any(may for _t, _m, may in writes[1:]), writes
        assert client._group.callers == 0
        assert [client.get("session", f"c{i}", consistency="strong") for i in range(4)] == list(range(4))

        # A lone op of its shard's round while another caller writes to another shard: no spin either.
        from erlmcp_ray.core.routing import shard_for

        k0 = next(f"a{i}" for i in range(100) if shard_for(f"a{i}", 2) == 0)
        k1 = next(f"b{i}" for i in range(100) if shard_for(f"b{i}", 2) == 1)
        gate.clear()
        seen.clear()
        holding[0] = True
        first = threading.Thread(target=client.put, args=("shared", k0, 0), kwargs={"consistency": "strong"})
        first.start()
        wait_for(lambda: any(s[1] == "write" for s in seen), what="the first write held")
        client.put("shared", k1, 1, consistency="strong")  # its round: this one op, with company
        gate.set()
        first.join(10)
        assert [may for _t, m, may in seen if m == "write"] == [True, False], seen
    finally:
        client.close()
