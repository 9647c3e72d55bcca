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


@given(st.integers(0, 2**64 - 1), st.integers(0, R.MAX_SLOT), st.integers(0, 2**64 - 1), SMALL_VALUES)
def test_pack_plain_is_pack_with_a_one_slot_vector(hlc, writer, counter, value):
    rec = R.pack_plain(hlc, writer, counter, value)
    assert rec == R.pack({writer: counter}, hlc, writer, value)
    assert R.plain_version(rec) == (hlc, writer, counter)
    assert R.sole_slot(rec) == writer


@settings(max_examples=150, deadline=None)
@given(skews, events)
def test_owner_writes_are_canonical_records(sk, evs):
    # apply_local packs its common writes with pack_plain: every record must be what pack() makes
    # of its decoded fields
    sim = Sim(sk)
    sim.run(evs)
    for s in sim.states:
        for rec in s.records().values():
            assert R.Record.unpack(rec).pack() == rec


@settings(max_examples=150, deadline=None)
@given(skews, events, events)
def test_apply_delta_is_apply_remote_of_each_op(sk, evs, replica_evs):
    # A replica's batch path (new keys inlined) ends where applying the ops one by one does: the
    # same records, version context, clock, accounting and op-log contents.
    sim = Sim(sk)
    sim.run(evs)
    owner = sim.states[0]
    other = Sim(sk)  # the replica held some keys already (written elsewhere, some concurrently)
    other.run(replica_evs)
    fast, slow = copy_of(other.states[1]), copy_of(other.states[1])
    ops = owner.since(0)
    changed = fast.apply_delta(ops)
    assert changed == sum(slow.apply_remote(key, rec) for _seq, key, rec in ops)
    fast.validate()
    assert fast.records() == slow.records()
    assert fast.context == slow.context
    assert fast.clock.last == slow.clock.last
    assert fast.stats() == slow.stats()
    assert [op[1:] for op in fast.since(0)] == [op[1:] for op in slow.since(0)]


@settings(max_examples=150, deadline=None)
@given(skews, events)
def test_plain_successor_only_where_join_takes_the_newer_record(sk, evs):
    # apply_remote's cheap rule must agree with the join wherever it applies
    sim = Sim(sk)
    sim.run(evs)
    history = [rec for s in sim.states for _seq, _key, rec in s.since(0)]
    for a, b in itertools.product(history, repeat=2):
        if R.plain_successor(a, b):
            assert R.join(a, b) == (b, False)


def test_a_later_write_with_a_smaller_counter_is_not_a_plain_successor():
    # a slot that lost its state (a restart from nothing) counts again from 1 with a later clock:
    # its record wins on content, but the join keeps the larger counter -- not the cheap rule
    before = R.pack({0: 50}, 1_000, 0, b"old")
    after = R.pack({0: 1}, 2_000, 0, b"new")
    assert not R.plain_successor(before, after)
    assert R.record_vector_dict(R.join(before, after)[0]) == {0: 50}
    s = ShardState(1)
    s.apply_remote("k", before)
    s.apply_remote("k", after)
    assert s.get("k") == b"new" and R.record_vector_dict(s.raw_record("k")) == {0: 50}
    assert R.plain_successor(before, R.pack({0: 51}, 2_000, 0, b"new"))
    assert not R.plain_successor(before, R.pack({1: 51}, 2_000, 1, b"other slot"))
