"""Version vectors and the hybrid logical clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erlmcp_ray.core.hlc import LOGICAL_BITS, HybridLogicalClock, hlc_physical_ms
from erlmcp_ray.core.vclock import Ordering, VersionVector
from tests.strategies import FakeClock, version_vectors


def happened_before(a: VersionVector, b: VersionVector) -> bool:
    return b.dominates(a)


@given(version_vectors)
def test_happens_before_is_irreflexive(a):
    assert not happened_before(a, a)
    assert a.compare(a) is Ordering.EQUAL


@given(version_vectors, version_vectors)
def test_happens_before_is_asymmetric_and_compare_is_consistent(a, b):
    assert not (happened_before(a, b) and happened_before(b, a))
    flipped = {
        Ordering.EQUAL: Ordering.EQUAL,
        Ordering.DOMINATES: Ordering.DOMINATED,
        Ordering.DOMINATED: Ordering.DOMINATES,
        Ordering.CONCURRENT: Ordering.CONCURRENT,
    }
    assert b.compare(a) is flipped[a.compare(b)]
    assert (a.compare(b) is Ordering.EQUAL) == (a == b)


@given(version_vectors, version_vectors, version_vectors)
def test_happens_before_is_transitive(a, b, c):
    if happened_before(a, b) and happened_before(b, c):
        assert happened_before(a, c)


@given(version_vectors, version_vectors, version_vectors)
def test_merge_is_the_least_upper_bound(a, b, c):
    m = a.merge(b)
    assert m.descends(a) and m.descends(b)
    assert m == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    if c.descends(a) and c.descends(b):
        assert c.descends(m)


@given(version_vectors, st.integers(0, 4))
def test_increment_dominates(a, slot):
    assert a.increment(slot).dominates(a)


def test_spec_comparison_rules():
    v1 = VersionVector({1: 5, 2: 3, 3: 7})
    assert v1.compare(VersionVector({1: 5, 2: 3, 3: 7})) is Ordering.EQUAL
    assert v1.compare(VersionVector({1: 5, 2: 2, 3: 7})) is Ordering.DOMINATES
    assert v1.compare(VersionVector({1: 6, 2: 3, 3: 7})) is Ordering.DOMINATED
    assert v1.compare(VersionVector({1: 6, 2: 2, 3: 7})) is Ordering.CONCURRENT
    assert VersionVector({1: 0}) == VersionVector()  # a zero counter carries nothing


def test_vector_rejects_bad_entries():
    with pytest.raises(ValueError):
        VersionVector({-1: 1})
    with pytest.raises(ValueError):
        VersionVector({1: -2})
    with pytest.raises(ValueError):
        VersionVector({"node1": 1})  # slot ids, never names of processes


def test_hlc_is_monotonic_when_the_clock_stands_still_or_goes_back():
    clock = FakeClock()
    hlc = HybridLogicalClock(clock)
    a = hlc.now()
    b = hlc.now()
    clock.advance(-1000)
    c = hlc.now()
    assert a < b < c
    assert hlc_physical_ms(a) == clock.now + 1000
    clock.advance(2000)
    d = hlc.now()
    assert d == (clock.now << LOGICAL_BITS) > c


def test_hlc_update_moves_past_a_remote_timestamp_from_a_fast_clock():
    local = FakeClock()
    remote = HybridLogicalClock(lambda: local.now + 60_000).now()
    hlc = HybridLogicalClock(local)
    assert hlc.update(remote) > remote
    assert hlc.now() > remote
    hlc2 = HybridLogicalClock(local)
    hlc2.observe(remote)
    assert hlc2.now() > remote


@given(st.lists(st.tuples(st.integers(-50, 50), st.booleans(), st.integers(0, 2**40)), max_size=50))
def test_hlc_never_goes_backwards(steps):
    clock = FakeClock()
    hlc = HybridLogicalClock(clock)
    last = 0
    for delta, remote_event, remote in steps:
        clock.advance(delta)
        ts = hlc.update(remote << LOGICAL_BITS) if remote_event else hlc.now()
        assert ts > last
        last = ts
