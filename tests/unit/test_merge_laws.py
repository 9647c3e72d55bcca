"""The CRDT algebra of shard states, as Hypothesis properties."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from erlmcp_ray.core import record as R
from erlmcp_ray.core.hlc import HybridLogicalClock
from erlmcp_ray.core.shard_state import ShardState
from tests.strategies import KEYS, SMALL_VALUES, FakeClock, Sim, events, skews


def joined(*states: ShardState) -> dict[str, bytes]:
    out = ShardState(9)
    for s in states:
        out.merge(s)
        out.validate()
    return out.records()


def copy_of(s: ShardState) -> ShardState:
    c = ShardState(s.slot)
    c.merge(s)
    return c


@settings(max_examples=150, deadline=None)
@given(skews, events)
def test_merge_is_commutative_associative_idempotent(sk, evs):
    sim = Sim(sk)
    sim.run(evs)
    a, b, c = sim.states
    assert joined(a, b) == joined(b, a)
    assert joined(copy_of_joined(a, b), c) == joined(a, copy_of_joined(b, c))
    assert joined(a, a) == joined(a) == a.records()


def copy_of_joined(x: ShardState, y: ShardState) -> ShardState:
    out = ShardState(8)
    out.merge(x)
    out.merge(y)
    return out


@settings(max_examples=100, deadline=None)
@given(skews, events, events)
def test_delta_since_seq_equals_full_merge(sk, before, after):
    sim = Sim(sk)
    sim.run(before)
    owner = sim.states[0]
    replica = ShardState(1)
    replica.apply_delta(owner.since(0))
    seq = owner.last_seq
    assert replica.records() == owner.records()
    sim.run(after)
    full = copy_of(replica)
    full.merge(owner)
    delta = owner.since(seq)
    assert delta is not None
    replica.apply_delta(delta)
    replica.validate()
    assert replica.records() == full.records()
    # The replica saw every op of the owner, so it also equals the owner on the owner's keys.
    assert {k: v for k, v in replica.records().items() if k in owner.records()} == owner.records()


@settings(max_examples=150, deadline=None)
@given(skews, st.lists(st.tuples(st.integers(0, 2), SMALL_VALUES), min_size=2, max_size=6), st.randoms())
def test_lww_picks_the_same_winner_whatever_the_order_and_skew(sk, writes, rnd):
    base = FakeClock()
    writers = [
        ShardState(slot, clock=HybridLogicalClock(lambda s=skew: base.now + s)) for slot, skew in enumerate(sk)
    ]
    records = []
    for slot, value in writes:  # concurrent: no writer has seen another's write
        records.append(writers[slot].apply_local("k", value)[1])
        base.advance(rnd.randint(0, 3))
    results = set()
    for perm in itertools.islice(itertools.permutations(records), 24):
        r = ShardState(7)
        for rec in perm:
            r.apply_remote("k", rec)
        results.add(r.raw_record("k"))
    assert len(results) == 1
    winner = R.Record.unpack(results.pop())
    top = max(records, key=lambda rec: (R.record_hlc(rec), R.Record.unpack(rec).writer))
    assert (winner.hlc, winner.writer, winner.value) == (
        R.record_hlc(top),
        R.Record.unpack(top).writer,
        R.record_value(top),
    )
    # the merged vector has seen every write
    for rec in records:
        assert winner.vector.descends(R.record_vector(rec))


@settings(max_examples=150, deadline=None)
@given(skews, events, st.data())
def test_reapplying_any_op_changes_nothing(sk, evs, data):
    sim = Sim(sk)
    sim.run(evs)
    source = sim.states[0]
    ops = source.since(0)
    target = sim.states[1]
    target.apply_delta(ops)
    before = target.records()
    if ops:
        op = data.draw(st.sampled_from(ops))
        assert target.apply_remote(op[1], op[2]) is False
    assert target.apply_delta(ops) == 0
    assert target.records() == before
    target.validate()


@settings(max_examples=60, deadline=None)
@given(skews, events)
def test_replicas_converge_after_full_exchange(sk, evs):
    sim = Sim(sk)
    sim.run(evs)
    for a in sim.states:
        for b in sim.states:
            a.merge(b)
    for a in sim.states:
        a.merge(sim.states[0])
    digests = {s.digest() for s in sim.states}
    assert len(digests) == 1
    assert len({tuple(sorted(s.records().items())) for s in sim.states}) == 1


@given(KEYS, SMALL_VALUES)
def test_causal_successor_wins_even_from_a_slow_clock(key, value):
    base = FakeClock()
    fast = ShardState(0, clock=HybridLogicalClock(lambda: base.now + 10_000))
    slow = ShardState(1, clock=HybridLogicalClock(lambda: base.now - 10_000))
    _, first = fast.apply_local(key, b"first")
    slow.apply_remote(key, first)
    _, second = slow.apply_local(key, value)  # written after seeing `first`
    fast.apply_remote(key, second)
    assert fast.get(key) == value == slow.get(key)
