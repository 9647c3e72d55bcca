"""The client's pure parts: local cache tiers, write buffer, group commit."""

from __future__ import annotations

import threading
import time

import pytest

from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.client._group_commit import GroupCommit
from erlmcp_ray.client._reads import OwnWrites
from erlmcp_ray.client._write_behind import WriteBuffer
from tests.strategies import FakeClock


def seconds_clock():
    c = FakeClock(now=1000)
    return c, (lambda: c.now / 1000.0)


def test_l0_then_l1_and_fresh_decoding_is_the_callers_job():
    cache = LocalCache(l0_entries=2, l1_max_bytes=10_000)
    cache.store("d", "a", b"A", 10)
    cache.store("d", "b", b"B", 11)
    cache.store("d", "c", b"C", 12)  # pushes "a" out of L0, L1 keeps it
    assert cache.lookup("d", "c")[0] == b"C" and cache.hits_l0 == 1
    assert cache.lookup("d", "a")[0] == b"A" and cache.hits_l1 == 1
    assert cache.lookup("d", "zzz") is None and cache.misses == 1
    assert cache.lookup("other", "a") is None


def test_l1_is_byte_bounded_and_counts_evictions():
    cache = LocalCache(l0_entries=1, l1_max_bytes=1000)
    for i in range(20):
        cache.store("d", f"k{i}", b"x" * 100, i + 1)
    _, l1_entries, l1_bytes = cache.sizes()
    assert l1_bytes <= 1000 and l1_entries < 20
    assert cache.stats()["evictions"] == 20 - l1_entries
    assert cache.store("d", "huge", b"x" * 5000, 99) is False  # larger than L1: not cached


def test_bounded_staleness_window():
    c, clock = seconds_clock()
    cache = LocalCache(clock=clock)
    cache.store("d", "k", b"v", 5, stale_ms=100.0)
    assert cache.lookup("d", "k", max_stale_ms=150) is not None
    c.advance(60)  # 60 ms later: 100 + 60 > 150
    assert cache.lookup("d", "k", max_stale_ms=150) is None
    assert cache.lookup("d", "k") is not None  # eventual reads have no window
    cache.store_pending("d", "mine", b"v")
    c.advance(10_000)
    assert cache.lookup("d", "mine", max_stale_ms=1) is not None  # our own pending write


def test_invalidation_by_version():
    cache = LocalCache()
    cache.store("d", "k", b"v", 100)
    assert cache.invalidate("d", "k", 100) is False  # the version we hold
    assert cache.invalidate("d", "k", 101) is True and cache.lookup("d", "k") is None
    cache.store_pending("d", "p", b"mine")
    assert cache.invalidate("d", "p", 500) is False  # our newer pending write stays
    cache.store("d", "u", b"v", 1)
    assert cache.invalidate("d", "u") is True  # unconditional


def test_fetch_overtaken_by_invalidation_is_not_cached():
    cache = LocalCache()
    token = cache.begin_fetch()
    cache.invalidate("d", "k", 200)  # processed while the fetch was in flight
    assert cache.store("d", "k", b"old", 150, token=token) is False
    assert cache.store("d", "k", b"new", 200, token=token) is True  # as new as announced: fine
    token = cache.begin_fetch()
    assert cache.store("d", "k2", b"v", 1, token=token) is True


def test_forgotten_invalidations_make_old_fetches_uncacheable():
    cache = LocalCache(remember_invalidations=2)
    token = cache.begin_fetch()
    for i in range(5):
        cache.invalidate("d", f"x{i}", 10)
    assert cache.store("d", "k", b"v", 1, token=token) is False


def test_acknowledge_keeps_own_write_unless_something_newer_was_announced():
    cache = LocalCache()
    data = b"mine"
    cache.store_pending("d", "k", data)
    cache.acknowledge("d", "k", data, 300)
    assert cache.lookup("d", "k")[1] == 300
    other = b"mine2"
    cache.store_pending("d", "j", other)
    cache.invalidate("d", "j", 900)  # someone else wrote j later than we will be versioned
    cache.acknowledge("d", "j", other, 500)
    assert cache.lookup("d", "j") is None


def test_an_older_fetched_version_never_replaces_a_newer_cached_one():
    """Our own write, acknowledged at 300 while a read of the key begun before it was in flight:
    the read's older answer must not take its place (no message about our own write follows to
    drop it again: the coordinator does not send a client its own writes)."""
    cache = LocalCache(l0_entries=1)
    token = cache.begin_fetch()
    data = b"mine"
    cache.store_pending("d", "k", data)
    cache.acknowledge("d", "k", data, 300)
    assert cache.store("d", "k", b"older", 200, token=token) is False
    assert cache.lookup("d", "k")[:2] == (b"mine", 300)
    cache.store("d", "x", b"v", 1)  # k now only in L1: checked there too
    assert cache.store("d", "k", b"older", 250) is False
    assert cache.lookup("d", "k")[:2] == (b"mine", 300)
    assert cache.store("d", "k", b"same", 300) is True  # the same version (a refetch) is fine
    assert cache.store("d", "k", b"newer", 301) is True and cache.lookup("d", "k")[1] == 301


def test_drop_domains():
    cache = LocalCache()
    cache.store("a", "k", b"1", 1)
    cache.store("b", "k", b"2", 1)
    assert cache.drop_domains({"a"}) == 1
    assert cache.lookup("a", "k") is None and cache.lookup("b", "k") is not None
    assert cache.stats()["evictions"] == 0


def test_write_buffer_coalesces_and_batches():
    buf = WriteBuffer()
    buf.add("d", 0, ("k", b"1", None, ()))
    buf.add("d", 0, ("k", b"2", None, ()))
    for i in range(5):
        buf.add("d", 1, (f"x{i}", b"v", None, ()))
    assert len(buf) == 6 and buf.peek("d", 0, "k")[1] == b"2"
    assert buf.pop("d", 1, "x0")[0] == "x0" and buf.pop("d", 1, "x0") is None
    batches = buf.take(max_batch=3)
    assert sorted((d, s, len(ops)) for d, s, ops in batches) == [("d", 0, 1), ("d", 1, 1), ("d", 1, 3)]
    assert len(buf) == 0 and buf.take(3) == []


def test_group_commit_batches_concurrent_callers_and_spreads_errors():
    calls = []
    gate = threading.Event()

    def send(domain, shard, ops):
        calls.append(len(ops))
        if len(calls) == 1:
            gate.wait(5)  # hold the first round so the others queue up behind it
        if any(op[0] == "bad" for op in ops):
            raise RuntimeError("owner refused")
        return [op[0].upper() for op in ops]

    gc = GroupCommit(send)
    results = {}

    def worker(name):
        try:
            results[name] = gc.submit("d", 0, (name, b"", None, ()))
        except RuntimeError as exc:
            results[name] = exc

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    time.sleep(0.05)
    others = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(10)]
    for t in others:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [first, *others]:
        t.join(5)
    assert results["first"] == "FIRST" and all(results[f"w{i}"] == f"W{i}" for i in range(10))
    assert calls[0] == 1 and sum(calls) == 11 and len(calls) <= 3  # the ten went in one or two rounds
    with pytest.raises(RuntimeError):
        gc.submit("d", 0, ("bad", b"", None, ()))
    assert gc.submit("d", 0, ("ok", b"", None, ())) == "OK"


def test_pending_write_replaces_an_older_cached_version_and_moves_to_l1_on_ack():
    cache = LocalCache(l0_entries=4)
    cache.store("d", "k", b"old", 10)
    data = b"new"
    cache.store_pending("d", "k", data)
    assert cache.lookup("d", "k")[0] == b"new"
    cache.acknowledge("d", "k", data, 20)
    for i in range(10):  # push k out of L0: L1 now has the acknowledged version
        cache.store("d", f"x{i}", b"v", 1)
    assert cache.lookup("d", "k")[:2] == (b"new", 20)
    newer = b"newer"
    cache.store_pending("d", "k", newer)
    cache.acknowledge("d", "k", data, 20)  # a late ack of the older write changes nothing
    assert cache.lookup("d", "k")[0] == b"newer"


def test_cache_entries_are_untracked_by_the_gc():
    import gc

    cache = LocalCache()
    cache.store("d", "k", b"v", 5)
    gc.collect()
    assert not gc.is_tracked(cache.lookup("d", "k"))


def test_entries_expire_after_max_age_even_without_an_invalidation():
    c, clock = seconds_clock()
    cache = LocalCache(clock=clock, max_age_s=2.0)
    cache.store("d", "k", b"v", 5)
    c.advance(1999)
    assert cache.lookup("d", "k") is not None
    c.advance(2)
    assert cache.lookup("d", "k") is None
    cache.store_pending("d", "mine", b"v")
    c.advance(60_000)
    assert cache.lookup("d", "mine") is not None  # our own unacknowledged write is never too old


def test_retry_backs_off_while_unavailable_but_not_once_the_new_owner_is_known():
    from erlmcp_ray.client._transport import OwnerMoved, Retry
    from erlmcp_ray.errors import UnavailableError

    pauses, now = [], [0.0]

    def sleep(s):
        pauses.append(s)
        now[0] += s

    retry = Retry(5.0, sleep=sleep, clock=lambda: now[0])
    errors = iter([UnavailableError("down"), UnavailableError("down"), OwnerMoved("slot 1 owns it now")])

    def call():
        err = next(errors, None)
        if err is not None:
            raise err
        return "ok"

    assert retry.run(call) == "ok"
    assert len(pauses) == 2  # two backoff pauses for the outage, none after the failover was learnt


def test_own_writes_are_recent_for_their_window_then_not():
    clock = FakeClock()
    own = OwnWrites(window_s=5.0, capacity=10, clock=clock)
    own.note("d", "a")
    assert own.recent("d", "a") and not own.recent("d", "b") and not own.recent("e", "a")
    clock.advance(4.9)
    own.note("d", "b", ("d", "b"))
    assert own.recent("d", "a") and own.recent("d", "b")
    clock.advance(0.2)
    assert not own.recent("d", "a") and own.recent("d", "b")
    own.note("d", "a")  # written again: a new window
    assert own.recent("d", "a")


def test_own_writes_keep_the_newest_half_of_their_capacity_and_stay_bounded():
    own = OwnWrites(window_s=60.0, capacity=100, clock=FakeClock())
    for i in range(1_000):
        own.note("d", f"k{i}")
        # the last capacity // 2 keys noted are always remembered ...
        assert all(own.recent("d", f"k{j}") for j in range(max(0, i - 49), i + 1))
        # ... and no more than the capacity are held
        assert len(own._at) + len(own._old) <= 100
    assert not own.recent("d", "k0") and not own.recent("d", "k899")
    # a key noted again moves to the current generation: it outlives its first note's generation
    own.note("d", "k950")
    for i in range(1_000, 1_060):
        own.note("d", f"k{i}")
    assert own.recent("d", "k950") and not own.recent("d", "k951")


def test_own_writes_refuse_a_capacity_that_cannot_hold_two_generations():
    with pytest.raises(ValueError, match="capacity"):
        OwnWrites(window_s=1.0, capacity=1)


def test_a_group_commit_gate_stays_shut_until_set_then_open_for_good():
    from erlmcp_ray.client._group_commit import _Gate

    gate = _Gate()
    assert not gate.wait(0.05)
    opener = threading.Timer(0.05, gate.set)
    opener.start()
    assert gate.wait(5)  # woken by the set from another thread
    gate.set()  # a second set changes nothing
    assert gate.wait(0) and gate.wait(0)
    opener.join()
