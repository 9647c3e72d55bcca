"""The fault seam's rule cache: never decides with a rule read more than refresh_s ago, and a process
sending messages refreshes it in the background (no call waits for the key-value store)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from erlmcp_ray._faults import FaultSeam
from erlmcp_ray.core.partition import PartitionRule
from tests.strategies import FakeClock


class Store:
    """The key-value store: each read returns a rule naming the read, and notes when it began."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.started = clock, []

    def read(self, _key: bytes) -> bytes:
        self.started.append(self.clock.now / 1000)
        return PartitionRule([[f"r{len(self.started) - 1}"], ["other"]]).encode()

    def started_of(self, rule: PartitionRule) -> float:
        return self.started[int(rule.sides[0][0][1:])]


def make(clock: FakeClock, store: Store, jobs: list) -> FaultSeam:
    return FaultSeam("ns", read=store.read, clock=lambda: clock.now / 1000, refresh_s=0.2, spawn=jobs.append)


def test_fresh_rule_no_read_half_old_read_behind_stale_read_first():
    clock = FakeClock()
    store, jobs = Store(clock), []
    seam = make(clock, store, jobs)
    first = seam.rule()
    assert store.started == [clock.now / 1000] and not jobs  # nothing cached: read at once
    clock.advance(50)
    assert seam.rule() is first and len(store.started) == 1 and not jobs
    clock.advance(60)  # 110 ms old: answered from the cache, a background read started
    assert seam.rule() is first and len(store.started) == 1 and len(jobs) == 1
    assert seam.rule() is first and len(jobs) == 1  # one at a time
    jobs.pop()()
    second = seam.rule()
    assert second != first and store.started_of(second) == clock.now / 1000
    clock.advance(250)  # idle past the window: read before deciding
    third = seam.rule()
    assert len(store.started) == 3 and store.started_of(third) == clock.now / 1000


def test_refresh_does_not_take_a_read_begun_before_it():
    clock = FakeClock()
    store, jobs = Store(clock), []
    seam = make(clock, store, jobs)
    seam.rule()
    clock.advance(120)
    seam.rule()  # a background read is started
    read = store.read

    def slow_read(key: bytes) -> bytes:  # refresh() is called while it is under way
        raw = read(key)
        clock.advance(5)
        seam.refresh()
        return raw

    seam._read = slow_read
    jobs.pop()()
    seam._read = read
    rule = seam.rule()  # the background read began before refresh(): read again
    assert len(store.started) == 3 and store.started_of(rule) == clock.now / 1000


def test_a_failing_store_keeps_the_last_rule():
    clock = FakeClock()
    store, jobs = Store(clock), []
    seam = make(clock, store, jobs)
    rule = seam.rule()
    seam._read = lambda _key: (_ for _ in ()).throw(ConnectionError("GCS down"))
    clock.advance(300)
    assert seam.rule() is rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 150), st.booleans()), min_size=1, max_size=60), st.integers(0, 2**32))
def test_no_decision_with_a_rule_read_more_than_refresh_s_ago(steps, seed):
    # calls at random gaps; background reads run after random delays (or not at all)
    rnd = random.Random(seed)
    clock = FakeClock()
    store, jobs = Store(clock), []
    seam = make(clock, store, jobs)
    for gap, run_a_job in steps:
        clock.advance(gap)
        if run_a_job and jobs:
            jobs.pop(rnd.randrange(len(jobs)))()
        rule = seam.rule()
        assert clock.now / 1000 - store.started_of(rule) < 0.2 + 1e-9


def test_the_background_worker_runs_jobs_in_turn_and_survives_a_failing_one():
    import threading

    from erlmcp_ray._faults import _Worker

    worker, done, seen = _Worker(), threading.Event(), []

    def fail() -> None:
        raise ValueError("a bad rule")

    worker(lambda: seen.append(threading.current_thread().name))
    worker(fail)
    worker(lambda: (seen.append("after"), done.set()))
    assert done.wait(5)
    assert seen == ["erlmcp-fault-seam", "after"]
