"""The coordinator actor on a real local Ray: long polls, wake-ups, restarts, actor subscriptions."""

from __future__ import annotations

import time

import pytest
import ray

from erlmcp_ray.actors.coordinator import CoordinatorActor
from erlmcp_ray.core.codec import encode_value
from erlmcp_ray.core.record import pack

pytestmark = pytest.mark.ray

NS = "coord-test"
T = 30  # every ray.get gets a timeout: a hang must fail the test, not stall the run


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", namespace=NS, include_dashboard=False, num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def make_coordinator(**options):
    cls = ray.remote(max_concurrency=1000, num_cpus=0, **options)(CoordinatorActor)
    return cls.remote(config={}, namespace=NS)


@pytest.fixture
def coord():
    handle = make_coordinator()
    yield handle
    ray.kill(handle)


def rec(value, hlc=1):
    return pack({0: 1}, hlc, 0, encode_value(value))


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def waiting_polls(handle, n):
    def waiting():
        return ray.get(handle.stats.remote(), timeout=T)["waiting_polls"] >= n

    wait_until(waiting, what=f"{n} waiting polls")


@ray.remote(num_cpus=0)
class Recorder:
    def __init__(self):
        self._events = []

    def on_memory_update(self, update):
        self._events.append(update)

    def events(self):
        return list(self._events)


def test_a_poll_with_nothing_new_waits_for_its_timeout_and_answers_empty(coord):
    epoch = ray.get(coord.ping.remote(), timeout=T)
    start = time.monotonic()
    answer = ray.get(coord.poll.remote("c1", 0, ["cache"], [], 0.5), timeout=T)
    elapsed = time.monotonic() - start
    assert answer == (epoch, 0, False, [], 0)  # 0: no layout change (the selector's)
    assert 0.4 <= elapsed < 3  # jitter shortens the wait by at most 10 %


def test_a_waiting_poll_returns_on_publish(coord):
    ref = coord.poll.remote("c1", 0, ["cache"], ["cache"], 5.0)
    waiting_polls(coord, 1)
    start = time.monotonic()
    assert ray.get(coord.publish.remote([("cache", "k", rec("v", hlc=9))]), timeout=T) == 1
    _epoch, last, gap, messages, _layout = ray.get(ref, timeout=T)
    assert time.monotonic() - start < 2  # woken, not timed out
    assert (last, gap) == (1, False) and messages == [(1, "cache", "k", 9, False, rec("v", hlc=9), "write")]


def test_publishes_to_other_domains_do_not_end_the_wait(coord):
    ref = coord.poll.remote("c1", 0, ["cache"], [], 1.0)
    waiting_polls(coord, 1)
    ray.get(coord.publish.remote([("session", "k", rec(1))]), timeout=T)
    ready, _ = ray.wait([ref], timeout=0.3)
    assert not ready
    assert ray.get(ref, timeout=T)[1:4] == (1, False, [])  # the skipped message is covered


def test_fifty_waiting_polls_all_wake_on_one_publish(coord):
    refs = [coord.poll.remote(f"c{i}", 0, ["cache"], [], 5.0) for i in range(50)]
    waiting_polls(coord, 50)
    start = time.monotonic()
    ray.get(coord.publish.remote([("cache", "k", rec(1))]), timeout=T)
    answers = ray.get(refs, timeout=T)
    assert time.monotonic() - start < 2
    assert all(a[1:3] == (1, False) and [m[2] for m in a[3]] == ["k"] for a in answers)
    assert all(a[3][0][5] is None for a in answers)  # no value_domains: records stripped
    stats = ray.get(coord.stats.remote(), timeout=T)
    assert stats["clients"] == 50 and stats["waiting_polls"] == 0


def test_register_config_and_stats(coord):
    ray.get(coord.publish.remote([("cache", "a", None)]), timeout=T)
    epoch, last = ray.get(coord.register_client.remote("c1", ["cache"], []), timeout=T)
    assert epoch == ray.get(coord.ping.remote(), timeout=T) and last == 1
    assert ray.get(coord.get_config.remote(), timeout=T) == {}
    assert ray.get(coord.stats.remote(), timeout=T)["clients"] == 1
    assert ray.get(coord.unregister_client.remote("c1"), timeout=T)
    assert ray.get(coord.stats.remote(), timeout=T)["clients"] == 0


def test_a_waiting_invalidation_stops_waiting_for_a_client_that_unregisters(coord):
    """Nothing else polls here: before, the invalidation noticed the client had gone only at the next
    acknowledgement of another client, or at its own timeout (20 s)."""
    ray.get(coord.register_client.remote("leaving", ["cache"], []), timeout=T)
    ref = coord.invalidate.remote([("cache", "k", None, "invalidate")], True, 20.0)
    ready, _ = ray.wait([ref], timeout=0.5)
    assert not ready  # it waits for "leaving"
    start = time.monotonic()
    assert ray.get(coord.unregister_client.remote("leaving"), timeout=T)
    _seq, acked, missing = ray.get(ref, timeout=T)
    assert (acked, missing) == ([], []) and time.monotonic() - start < 5


def test_a_waiting_invalidation_stops_waiting_for_a_client_when_its_lease_runs_out():
    """A client that went silent (a killed process) is waited for until its lease runs out, then no
    longer: it is no live client (``ack_status``), whether or not anything else polls meanwhile."""
    handle = ray.remote(max_concurrency=1000, num_cpus=0)(CoordinatorActor).remote(
        config={"cache_coordinator": {"lease_ms": 1000}}, namespace=NS)
    try:
        ray.get(handle.register_client.remote("silent", ["cache"], []), timeout=T)
        start = time.monotonic()
        _seq, acked, missing = ray.get(handle.invalidate.remote([("cache", "k", None, "invalidate")], True, 20.0),
                                       timeout=T)
        took = time.monotonic() - start
        assert (acked, missing) == ([], []) and 0.5 < took < 5, took
    finally:
        ray.kill(handle)


@pytest.mark.parametrize("epoch", [None, 5], ids=["default-epoch", "given-epoch"])
def test_a_restart_brings_a_new_epoch_and_old_positions_gap(epoch):
    # Ray reruns the constructor with the same arguments, so a given epoch must not come back.
    cls = ray.remote(max_concurrency=1000, num_cpus=0, max_restarts=1)(CoordinatorActor)
    handle = cls.remote(config={}, namespace=NS, epoch=epoch)
    try:
        first = ray.get(handle.ping.remote(), timeout=T)
        assert epoch is None or first == epoch
        ray.get(handle.publish.remote([("cache", str(i), None) for i in range(3)]), timeout=T)
        ray.kill(handle, no_restart=False)
        second = _ping_until_changed(handle, first)
        assert second > first
        epoch, last, gap, messages, _layout = ray.get(handle.poll.remote("c1", 3, ["cache"], [], 0.1), timeout=T)
        assert (epoch, last, gap, messages) == (second, 0, True, [])
    finally:
        ray.kill(handle)


def _ping_until_changed(handle, epoch, timeout=30.0):
    # ray.kill is asynchronous: a ping may still reach the old incarnation, or find none.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = ray.get(handle.ping.remote(), timeout=T)
        except ray.exceptions.RayActorError:
            answer = epoch
        if answer != epoch:
            return answer
        time.sleep(0.05)
    raise AssertionError("the coordinator did not come back with a new epoch")


def test_an_actor_subscription_gets_updates_in_publish_order(coord):
    recorder = Recorder.remote()
    everything = Recorder.remote()
    sub = ray.get(coord.subscribe_actor.remote("cache", recorder), timeout=T)
    ray.get(coord.subscribe_actor.remote(None, everything), timeout=T)
    for batch in range(5):
        items = [("cache", f"k{i % 3}", rec([batch, i], hlc=batch * 10 + i)) for i in range(4)]
        ray.get(coord.publish.remote(items + [("session", "s", rec(batch)), ("cache", "x", None)]), timeout=T)
    wait_until(lambda: len(ray.get(recorder.events.remote(), timeout=T)) == 20, what="20 events")
    events = ray.get(recorder.events.remote(), timeout=T)
    assert [e.value for e in events] == [[b, i] for b in range(5) for i in range(4)]
    assert [e.key for e in events[:4]] == ["k0", "k1", "k2", "k0"]
    assert all(e.domain == "cache" and not e.deleted for e in events)
    assert [e.version.timestamp for e in events] == sorted(e.version.timestamp for e in events)
    wait_until(lambda: len(ray.get(everything.events.remote(), timeout=T)) == 25, what="25 events")
    assert ray.get(coord.unsubscribe.remote(sub), timeout=T)
    assert not ray.get(coord.unsubscribe.remote(sub), timeout=T)


def test_a_dead_subscriber_is_dropped(coord):
    recorder = Recorder.remote()
    ray.get(coord.subscribe_actor.remote("cache", recorder), timeout=T)
    ray.get(recorder.events.remote(), timeout=T)
    ray.kill(recorder)

    def dropped():
        ray.get(coord.publish.remote([("cache", "k", rec(1))]), timeout=T)
        return ray.get(coord.stats.remote(), timeout=T)["subscriptions"] == 0

    wait_until(dropped, what="the dead subscriber's removal")


def test_a_client_the_coordinator_does_not_know_gets_a_gap(coord):
    last = ray.get(coord.stats.remote(), timeout=T)["last_seq"]
    _epoch, _, gap, messages, _layout = ray.get(coord.poll.remote("never-registered", last, None, None, 0.2), timeout=T)
    assert gap and messages == []
    ray.get(coord.register_client.remote("now-registered", ["shared"], []), timeout=T)
    _, _, gap, _, _ = ray.get(coord.poll.remote("now-registered", last, None, None, 0.2), timeout=T)
    assert not gap


def test_a_new_layout_answers_every_waiting_poll_with_its_generation(coord):
    """The persistence selector writes the layout to the KV store and tells the coordinator; a
    client's long poll returns at once carrying the new generation (then it refetches the layout)."""
    from ray.experimental import internal_kv

    from erlmcp_ray.config import Backend
    from erlmcp_ray.core.layout import Layout, layout_key

    ray.get(coord.register_client.remote("c1", ["cache"], []), timeout=T)
    ref = coord.poll.remote("c1", 0, None, None, 30.0)
    waiting_polls(coord, 1)
    layout = Layout(3, {"notes": Backend.DISK}, {"notes": (1, "write_through")})
    internal_kv._internal_kv_put(layout_key(NS), layout.encode(), overwrite=True)
    try:
        start = time.monotonic()
        assert ray.get(coord.layout_changed.remote(), timeout=T) == 3
        answer = ray.get(ref, timeout=T)
        assert time.monotonic() - start < 5 and answer[4] == 3 and answer[3] == []
        assert Layout.decode(ray.get(coord.get_layout.remote(), timeout=T)) == layout
    finally:
        internal_kv._internal_kv_del(layout_key(NS))
