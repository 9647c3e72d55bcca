"""Regression tests for the client's races and ordering bugs, made deterministic (no Ray).

Each test names the bug it pins down (issue 9, section 1). The interleavings are forced through
injected seams: the cache's clock, the fake transport's call hooks, the write-behind's sleep.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from erlmcp_ray.client._cache import PENDING, LocalCache
from erlmcp_ray.client._group_commit import GroupCommit
from erlmcp_ray.client._transport import Copy
from erlmcp_ray.core.wire import WriteOp
from erlmcp_ray.errors import OperationTimeoutError
from erlmcp_ray.testing import FakeTransport, check_linearizable
from tests.conftest import wait_for
from tests.workloads import strong_register_history

CFG = {"domains": {"shared": {"shards": 1}}, "client": {"poll_timeout_s": 0.2}}


# ------------------------------------------------------------------ bug 1: an invalidated entry comes back
class SwitchingClock:
    """A clock whose reading, once armed, runs ``switch`` in another thread: the coherence thread's
    invalidation arrives exactly while ``lookup`` reads the clock between finding an L1 entry and
    promoting it into L0."""

    def __init__(self):
        self.switch = None
        self.worker = None

    def __call__(self):
        if self.switch is not None:
            switch, self.switch = self.switch, None
            self.worker = threading.Thread(target=switch)
            self.worker.start()
            self.worker.join(0.3)  # on the fixed cache it blocks on the lock until lookup is done
        return time.monotonic()


def test_an_invalidation_between_l1_check_and_l0_promotion_is_not_undone():
    clock = SwitchingClock()
    cache = LocalCache(l0_entries=1, clock=clock)
    cache.store("d", "k", b"old", 1)
    cache.store("d", "other", b"x", 1)  # pushes k out of the one-entry L0: k is in L1 only
    assert ("d", "k") not in cache._l0
    clock.switch = lambda: cache.invalidate("d", "k", 2)  # a newer version (2) was written elsewhere
    cache.lookup("d", "k")  # may serve the old value: it was read before the invalidation
    clock.worker.join(5)
    assert cache.lookup("d", "k") is None, "the invalidated entry was promoted back into L0"


def test_a_fetch_started_before_our_own_buffered_write_is_not_cached():
    cache = LocalCache(l0_entries=1)
    token = cache.begin_fetch()  # a remote read of k starts
    cache.store_pending("d", "k", b"mine")  # then our own eventual write of k is buffered
    cache.store_pending("d", "z", b"other")  # and L0 (one entry) drops the pending copy of k
    # the old fetch answers with the version it read before our write
    assert cache.store("d", "k", b"older", 5, token=token) is False
    assert cache.lookup("d", "k") is None


def _pending_shown(cache, data):
    e = cache.lookup("d", "k")
    return e is not None and e[0] == data and e[1] == PENDING


@pytest.mark.parametrize("step", ["store", "acknowledge", "promote"])
def test_a_write_of_ours_noted_while_a_locked_writer_runs_stays_in_front(step):
    """``store_pending`` takes no lock (the eventual put path). It runs exactly while a fetched
    answer is stored, an older write of ours is acknowledged, or an L1 entry is promoted: the
    pending write must be what L0 shows afterwards, and no older version may be left in L1."""
    clock = SwitchingClock()
    cache = LocalCache(l0_entries=1, clock=clock)
    if step == "acknowledge":
        cache.store_pending("d", "k", b"older")
    if step == "promote":
        cache.store("d", "k", b"cached", 1)
        cache.store("d", "other", b"x", 1)  # k in L1 only
    clock.switch = lambda: cache.store_pending("d", "k", b"mine")
    if step == "store":
        cache.store("d", "k", b"fetched", 5, token=cache.begin_fetch())
    elif step == "acknowledge":
        cache.acknowledge("d", "k", b"older", 7)
    else:
        cache.lookup("d", "k")
    clock.worker.join(5)
    assert _pending_shown(cache, b"mine")
    cache.store("d", "z", b"z", 1)  # L0 (one entry) drops the pending copy of k
    assert cache.lookup("d", "k") is None, "an older version of k was left in L1"


def test_a_late_acknowledgement_of_an_older_write_is_not_cached_over_a_newer_version():
    cache = LocalCache()
    older = b"older"
    cache.store_pending("d", "k", older)
    cache.invalidate("d", "k", 10)  # a strong write of ours (version 10) completed meanwhile
    cache.acknowledge("d", "k", older, 7)  # the older write's answer arrives late
    assert cache.lookup("d", "k") is None
    assert cache.store("d", "k", b"newer", 10) is True


# ------------------------------------------------------------------ bug 2: resends overwrite newer writes
def test_a_write_lost_in_an_owner_restart_is_not_resent_over_a_newer_one():
    fake = FakeTransport(CFG)
    client, other = fake.client(), fake.client()
    try:
        fake.hold("shared", 0)  # the owner applies, but does not replicate yet
        client.put("shared", "k", 1)
        wait_for(lambda: fake.owner("shared").state.get("k") is not None, what="v1 at the owner")
        fake.restart(Copy("shared", 0, 0))  # the owner dies before replicating v1: the new one lacks it
        client.put("shared", "k", 2)
        wait_for(lambda: fake.owner("shared").state.get("k") is not None, what="v2 at the new owner")
        fake.release("shared", 0)
        client.flush(timeout=10)
        for slot in range(2):
            rec = fake.copies[Copy("shared", 0, slot)].state.get("k")
            assert rec is not None and rec == b"\x02", f"slot {slot} holds {rec!r}"
        assert client.get("shared", "k") == 2
        assert other.get("shared", "k", consistency="strong") == 2
    finally:
        client.close()
        other.close()


def test_a_lost_write_is_resent_when_nothing_newer_exists():
    fake = FakeTransport(CFG)
    client = fake.client()
    try:
        fake.hold("shared", 0)
        client.put("shared", "k", 1)
        wait_for(lambda: fake.owner("shared").state.get("k") is not None, what="v1 at the owner")
        fake.restart(Copy("shared", 0, 0))
        fake.release("shared", 0)
        client.flush(timeout=10)
        assert client.counters["resent_after_restart"] == 1
        assert fake.copies[Copy("shared", 0, 1)].state.get("k") == b"\x01"
    finally:
        client.close()


def test_a_stream_of_writes_with_owner_restarts_ends_at_the_last_value():
    rng = random.Random(7)
    fake = FakeTransport(CFG)
    client = fake.client()
    try:
        for i in range(1, 2001):
            client.put("shared", "k", i)
            if i % 97 == 0:
                fake.hold("shared", 0)
            if i % 97 == 40:
                time.sleep(0.003)
                fake.restart(Copy("shared", 0, rng.choice([0, 1])))
                fake.release("shared", 0)
        client.flush(timeout=30)
        for slot in range(2):
            assert fake.copies[Copy("shared", 0, slot)].state.get("k") == b"\xcd\x07\xd0"  # 2000
        assert client.get("shared", "k") == 2000
    finally:
        client.close()


def test_the_owner_skips_a_resend_older_than_what_it_holds():
    fake = FakeTransport(CFG)
    owner = fake.owner("shared")
    old = owner.write("c", 1, [WriteOp("k", b"\x01")], True).items[0][1]
    owner.write("c", 2, [WriteOp("k", b"\x02")], True)
    from erlmcp_ray.core import record as R
    answer = owner.write("c", 3, [WriteOp("k", b"\x01", resend_of=R.record_hlc(old))], False)
    assert answer.items == [0] and owner.state.get("k") == b"\x02"


# ------------------------------------------------------------------ bug 4: a strong read joins an older fetch
def test_a_strong_read_does_not_share_a_fetch_that_started_before_it():
    held, release = threading.Event(), threading.Event()
    reads = []

    def after_call(target, method, args):
        if method == "read" and args[0] == "k":
            reads.append(threading.current_thread().name)
            if threading.current_thread().name == "slow-reader":
                held.set()
                release.wait(5)  # its answer (the old value) was read; it returns late

    fake = FakeTransport(CFG, after_call=after_call)
    client = fake.client()
    try:
        client.put("shared", "k", "old", consistency="strong")
        out = {}
        slow = threading.Thread(target=lambda: out.update(slow=client.get("shared", "k", consistency="strong")),
                                name="slow-reader")
        slow.start()
        assert held.wait(5)
        client.put("shared", "k", "new", consistency="strong")
        assert client.get("shared", "k", consistency="strong") == "new"
        release.set()
        slow.join(5)
        assert out["slow"] == "old"  # it was invoked before the put: old is a valid answer for it
    finally:
        release.set()
        client.close()


def test_readers_arriving_during_a_fetch_share_one_follow_up_fetch():
    gate, started = threading.Event(), threading.Event()

    def before_call(target, method, args):
        if method == "read" and args[0] == "hot" and not started.is_set():
            started.set()
            gate.wait(5)

    fake = FakeTransport(CFG, before_call=before_call)
    writer, reader = fake.client(), fake.client()
    try:
        writer.put("shared", "hot", 1, consistency="strong")
        out = []
        first = threading.Thread(target=lambda: out.append(reader.get("shared", "hot", consistency="strong")))
        first.start()
        assert started.wait(5)
        late = [threading.Thread(target=lambda: out.append(reader.get("shared", "hot", consistency="strong")))
                for _ in range(8)]
        for t in late:
            t.start()
        wait_for(lambda: reader.counters["shared_fetches"] >= 7, what="late readers to share a fetch")
        reads_before = fake.calls.get("read", 0)  # the first read is held before it is counted
        gate.set()
        for t in [first, *late]:
            t.join(5)
        assert out == [1] * 9
        assert fake.calls["read"] - reads_before == 2  # the first fetch, and one follow-up for the 8 late readers
    finally:
        gate.set()
        writer.close()
        reader.close()


def test_concurrent_strong_operations_are_linearizable():
    rng = random.Random(3)

    def jitter(target, method, args):
        if method in ("read", "write") and rng.random() < 0.3:
            time.sleep(rng.random() * 0.002)

    fake = FakeTransport(CFG, before_call=jitter, after_call=jitter)
    client = fake.client()
    try:
        history = strong_register_history([client], threads=8, ops=150, keys=3)
        result = check_linearizable(history)
        assert result.ok, result.explanation
        assert result.operations == 8 * 150
    finally:
        client.close()


# ------------------------------------------------------------------ bug 6: locks, sleeps, bounded waits
def _write_in_a_retry_pause():
    """A client whose owner is down and whose write-behind is in the retry pause of its write of
    ``a`` (its sleep is a seam): the pause, and every later one, lasts until the test sets ``release``.
    Returns ``(fake, client, owner, release)``."""
    fake = FakeTransport(CFG)
    client = fake.client()
    owner = Copy("shared", 0, 0)
    pausing, release = threading.Event(), threading.Event()
    real_sleep = client._wb._sleep

    def held_sleep(seconds):
        if threading.current_thread().name == "erlmcp-write-behind" and not release.is_set():
            pausing.set()
            release.wait(30)
        else:
            real_sleep(seconds)

    client._wb._sleep = held_sleep
    fake.down(owner)
    client.put("shared", "a", 1)
    assert pausing.wait(10), "the write-behind never paused to retry"
    return fake, client, owner, release


def test_puts_and_reads_do_not_wait_for_a_retry_pause_of_the_write_behind():
    """The write-behind thread's retry pause is held open by the test (its injected sleep blocks)
    while the caller puts and reads: they must all complete during the pause. The old thread slept
    holding the lock every put takes, so here they would wait for the release."""
    fake, client, owner, release = _write_in_a_retry_pause()
    try:
        done = threading.Event()

        def caller():
            for i in range(200):
                client.put("shared", f"b{i}", i)
                assert client.get("shared", "a") == 1
            done.set()

        t = threading.Thread(target=caller)
        t.start()
        t.join(20)
        assert done.is_set() and not release.is_set(), "puts waited for the write-behind's retry pause"
        release.set()
        fake.up(owner)
        client.flush(timeout=20)
        assert fake.owner("shared").state.get("b199") is not None
    finally:
        release.set()
        client.close()


def test_a_group_commit_follower_gives_up_after_its_timeout_unsent():
    gate = threading.Event()
    sent = []

    def send(domain, shard, ops):
        sent.extend(ops)
        gate.wait(5)
        return list(ops)

    gc = GroupCommit(send, timeout_s=0.2)
    leader = threading.Thread(target=lambda: gc.submit("d", 0, "first"))
    leader.start()
    wait_for(lambda: sent == ["first"], what="the leader's round")
    with pytest.raises(OperationTimeoutError, match="was not sent"):
        gc.submit("d", 0, "second")
    gate.set()
    leader.join(5)
    assert sent == ["first"]
    assert gc.submit("d", 0, "third") == "third"  # leadership was not lost


def test_subscribing_while_the_coherence_thread_registers_is_safe():
    fake = FakeTransport(CFG)
    client = fake.client()
    errors = []

    def churn():
        try:
            for _ in range(300):
                client.subscribe("shared", lambda e: None).cancel()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        client.close()


def test_counters_are_exact_under_concurrent_puts():
    fake = FakeTransport(CFG)
    client = fake.client()
    try:
        threads = [threading.Thread(target=lambda n=n: [client.put("shared", f"{n}:{i}", i) for i in range(2000)])
                   for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert client.counters["buffered_puts"] == 8000
        client.flush(timeout=20)
    finally:
        client.close()


# ------------------------------------------------------------------ flush() returned during a retry pause
def test_flush_waits_for_a_batch_that_is_pausing_before_its_retry():
    """A batch whose send failed left the in-flight list for its backoff pause, and ``flush()`` saw
    nothing buffered or in flight and returned: the write had reached no one (found with the
    partition test, where the pause repeats for as long as the owner is cut off)."""
    fake, client, owner, release = _write_in_a_retry_pause()
    try:
        with pytest.raises(OperationTimeoutError):
            client.flush(timeout=0.5)  # the write is nowhere yet: flush must not say it is done
        fake.up(owner)
        release.set()
        client.flush(timeout=20)
        assert fake.owner("shared").state.get("a") is not None
    finally:
        release.set()
        client.close()
