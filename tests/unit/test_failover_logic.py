"""Failover without Ray: the failure detector, the successor choice, the promotion wait, and a shard
copy's ownership rules (lease, promotion, deposition, strong writes served only once confirmed) with
an injected clock, and the tokens that make a health check renew a lease from its sending."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erlmcp_ray.core import record as R
from erlmcp_ray.core.codec import decode_value, encode_value
from erlmcp_ray.core.failover import CheckTokens, FailureDetector, plan_promotion, promotion_wait
from erlmcp_ray.core.layout import Layout
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.wire import OK, write_op
from erlmcp_ray.errors import StaleEpochError, UnavailableError


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------- detector
def test_a_copy_is_failed_after_the_timeout_without_an_answer():
    clock = Clock()
    d = FailureDetector(1.0, clock=clock)
    d.answered("a", "n1")
    clock.t += 0.9
    assert not d.failed("a")
    clock.t += 0.2
    assert d.failed("a")
    d.answered("a", "n1")
    assert not d.failed("a")


def test_a_copy_never_heard_from_gets_a_whole_timeout_from_the_detectors_start():
    clock = Clock()
    d = FailureDetector(2.0, clock=clock)
    clock.t += 1.9
    assert not d.failed("new")  # a restarted supervisor does not fail everything at once
    clock.t += 0.2
    assert d.failed("new")


def test_a_copy_on_a_dead_node_is_failed_at_once():
    clock = Clock()
    d = FailureDetector(10.0, clock=clock)
    d.answered("a", "n1")
    assert not d.failed("a", {"n1", "n2"})
    assert d.failed("a", {"n2"})


def test_detector_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s"):
        FailureDetector(0)


# ---------------------------------------------------------------- successor
def _facts(epoch=1, inc="i1", seq=10, age=0.1):
    return {"epoch": epoch, "position": None if inc is None else [inc, seq], "sync_age_s": age}


def test_the_in_sync_replica_with_the_highest_position_is_promoted():
    plan = plan_promotion(0, {1: _facts(seq=10), 2: _facts(seq=12)}, 0, in_sync_s=2.0)
    assert plan.successor == 2 and plan.epoch == 2


def test_an_out_of_sync_replica_is_never_promoted():
    assert plan_promotion(0, {1: _facts(age=30.0)}, 0, in_sync_s=2.0) is None
    plan = plan_promotion(0, {1: _facts(seq=99, age=30.0), 2: _facts(seq=1)}, 0, in_sync_s=2.0)
    assert plan.successor == 2


def test_a_replica_of_an_older_incarnation_ranks_below_the_current_ones():
    # slot 1 missed the owner's restart: its position counts in the old log, whatever its number
    plan = plan_promotion(0, {1: _facts(inc="old", seq=500, epoch=1), 2: _facts(inc="new", seq=3, epoch=2)},
                          0, in_sync_s=2.0)
    assert plan.successor == 2


def test_the_new_epoch_is_above_every_epoch_reported_and_the_topologys():
    assert plan_promotion(0, {1: _facts(epoch=3), 2: _facts(epoch=5)}, 0, in_sync_s=2.0).epoch == 6
    assert plan_promotion(0, {1: _facts(epoch=3)}, 9, in_sync_s=2.0).epoch == 10


def test_ties_go_to_the_most_recently_synced_then_the_lowest_slot():
    assert plan_promotion(0, {1: _facts(age=0.5), 2: _facts(age=0.1)}, 0, in_sync_s=2.0).successor == 2
    assert plan_promotion(0, {2: _facts(), 1: _facts()}, 0, in_sync_s=2.0).successor == 1


def test_the_successor_waits_out_the_old_owners_lease():
    assert promotion_wait(1.0, [0.3, 2.0], all_fenced=True) == pytest.approx(0.7)
    assert promotion_wait(1.0, [1.5, 2.0], all_fenced=True) == 0.0
    assert promotion_wait(1.0, [5.0], all_fenced=False) == 1.0  # an unfenced copy may renew it
    # the last health check sent to the old owner renewed its lease from its sending
    assert promotion_wait(1.0, [1.5, 2.0], all_fenced=True, check_age_s=0.4) == pytest.approx(0.6)
    assert promotion_wait(1.0, [0.3], all_fenced=True, check_age_s=0.9) == pytest.approx(0.7)
    assert promotion_wait(1.0, [], all_fenced=True, check_age_s=0.25) == pytest.approx(0.75)
    assert promotion_wait(1.0, [], all_fenced=True) == 0.0


def test_a_check_renews_from_no_earlier_than_it_was_sent():
    """The copy answered at 100.0 and the supervisor held that answer 0.3 s before sending its next
    check: that check was sent at 100.3 at the earliest, however late it arrives (a paused process
    finds it in its queue on waking, long after the owner was failed over)."""
    clock = Clock()
    tokens = CheckTokens(clock=clock, rng=random.Random(1))
    token = tokens.issue()
    clock.t = 160.0  # received a minute later
    assert tokens.sent_after((token, 0.3)) == pytest.approx(100.3)
    assert tokens.sent_after([token, 0]) == pytest.approx(100.0)  # msgpack and Ray may hand a list


def test_a_check_without_a_token_this_copy_issued_renews_nothing():
    clock = Clock()
    tokens = CheckTokens(keep=2, clock=clock, rng=random.Random(2))
    first = tokens.issue()
    assert tokens.sent_after(None) is None  # a first check (a new supervisor), or one with no topology
    other = CheckTokens(clock=clock, rng=random.Random(3))
    assert other.sent_after((first, 0.1)) is None  # a token of this copy's previous process
    clock.t += 1
    second, third = tokens.issue(), tokens.issue()
    assert tokens.sent_after((first, 0.1)) is None  # only the latest `keep` are known
    assert tokens.sent_after((second, 0.1)) == pytest.approx(101.1)
    assert tokens.sent_after((third, 0.0)) == pytest.approx(101.0)


@pytest.mark.parametrize("since", [5, "x", (1, 2, 3), (1, -0.1), (1, "0.1"), (1, True), (1, float("nan"))])
def test_a_malformed_check_token_is_refused(since):
    with pytest.raises((TypeError, ValueError), match="since"):
        CheckTokens().sent_after(since)


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5), st.floats(0, 60)), min_size=1, max_size=30))
def test_no_check_renews_from_later_than_it_was_sent(rounds):
    """A supervisor's rounds against one copy, with random delays: the answer's way back, the
    supervisor holding it, the next check's way there (a paused copy: up to a minute). The renewal
    each check grants starts no later than that check was sent."""
    clock = Clock()
    tokens = CheckTokens(clock=clock, rng=random.Random(4))
    token, taken = tokens.issue(), None
    for back, held, there in rounds:
        clock.t += back
        taken = clock.t  # the supervisor takes the answer (one clock here: only durations cross)
        clock.t += held
        sent = clock.t
        clock.t += there
        start = tokens.sent_after((token, sent - taken))  # what the supervisor measured
        assert start is not None and start <= sent + 1e-9
        token = tokens.issue()


# ---------------------------------------------------------------- topology
def test_the_topology_survives_encoding_and_a_migrations_new_generation():
    from erlmcp_ray.config import MemoryConfig

    cfg = MemoryConfig.load({"domains": {"d": {"shards": 2, "max_bytes": "1MB"}}})
    layout = Layout().with_owner("d", 1, 2, 7)
    assert layout.generation == 1 and layout.owner("d", 1) == 2 and layout.epoch("d", 1) == 7
    assert layout.owner("d", 0) == 0
    again = Layout.decode(layout.encode())
    assert again.owners == {("d", 1): (2, 7)}
    assert again.for_config(cfg).owners == {("d", 1): (2, 7)}
    other = MemoryConfig.load({"domains": {"e": {"max_bytes": "1MB"}}})
    assert again.for_config(other).owners == {}  # a domain that is gone is dropped


# ---------------------------------------------------------------- a shard copy's ownership
def _copy(slot, clock, copies=2, lease_s=1.0, epoch=1, **settings):
    return ShardCopy("d", 0, slot, copies, epoch, ShardSettings(lease_s=lease_s, **settings), clock=clock)


def _put(copy, key, value, seq=1):
    return copy.write("c", seq, [write_op(key, encode_value(value))])


def test_an_owner_with_replicas_serves_only_while_it_holds_its_lease():
    clock = Clock()
    owner = _copy(0, clock)
    _put(owner, "k", 1)
    clock.t += 1.1
    with pytest.raises(UnavailableError, match="lease ran out"):
        _put(owner, "k", 2, seq=2)
    with pytest.raises(UnavailableError, match="lease"):
        owner.read("k")  # an owner read
    assert owner.read("k", max_staleness_ms=1e9).status == OK  # a replica-style read is no promise
    owner.renew_lease(clock.t)
    _put(owner, "k", 3, seq=3)


def test_a_one_copy_owner_needs_no_lease():
    clock = Clock()
    owner = _copy(0, clock, copies=1)
    clock.t += 100
    _put(owner, "k", 1)


def test_a_replica_refuses_writes_and_owner_reads():
    clock = Clock()
    replica = _copy(1, clock)
    with pytest.raises(UnavailableError, match="not the owner"):
        _put(replica, "k", 1)
    with pytest.raises(UnavailableError, match="not the owner"):
        replica.read("k")


def test_promotion_takes_over_the_shard_under_a_new_epoch_and_waits_for_the_old_lease():
    clock = Clock()
    owner, replica = _copy(0, clock), _copy(1, clock)
    answer = _put(owner, "k", "v")
    replica.apply_write(answer)
    replica.promote(2, 2, not_before=clock.t + 0.5)
    assert replica.is_owner and replica.epoch == 2 and replica.progress_of.keys() == {0}
    with pytest.raises(UnavailableError, match="promoted"):
        _put(replica, "k", "new")
    clock.t += 0.6
    _put(replica, "k", "new")
    # the old owner's strong writes are refused by the promoted copy (fencing)
    with pytest.raises(StaleEpochError):
        replica.apply_write(_put(owner, "k", "zombie", seq=9))
    with pytest.raises(StaleEpochError):
        replica.promote(2, 2)  # never twice under one epoch


def test_an_owner_that_meets_a_later_epoch_steps_down():
    clock = Clock()
    owner, promoted = _copy(0, clock), _copy(1, clock)
    promoted.promote(2, 2)
    # the promoted owner's snapshot reaches the old owner: it becomes a replica and takes the state
    _last, _forget, payloads = promoted.replication_payloads()
    base, ops, snap = payloads[0]
    assert owner.sync(2, promoted.incarnation, base, promoted.state.last_seq, ops, snap, 0.0, []) == (
        OK, promoted.state.last_seq)
    assert not owner.is_owner
    with pytest.raises(UnavailableError, match="not the owner"):
        _put(owner, "k", 1, seq=5)


def test_adopt_fences_a_replica_and_deposes_an_owner():
    clock = Clock()
    owner, replica = _copy(0, clock), _copy(1, clock)
    assert replica.adopt(2, 3) is False and replica.epoch == 3
    with pytest.raises(StaleEpochError):
        replica.apply_write(_put(owner, "k", 1))  # the old epoch's strong write
    assert owner.adopt(1, 3) is True and not owner.is_owner and owner.progress_of == {}
    with pytest.raises(StaleEpochError):
        owner.adopt(0, 2)  # an older topology is refused


def test_a_joining_replica_takes_no_strong_write_before_its_first_sync():
    clock = Clock()
    owner, fresh = _copy(0, clock), _copy(1, clock)
    fresh.joining = True
    answer = _put(owner, "k", 1)
    with pytest.raises(UnavailableError, match="catching up"):
        fresh.apply_write(answer)
    _last, _forget, payloads = owner.replication_payloads()
    base, ops, snap = payloads[1]
    fresh.sync(1, owner.incarnation, base, owner.state.last_seq, ops, snap, 0.0, [])
    assert fresh.apply_write(answer) == 1


# ---------------------------------------------------------------- strong writes: confirmed before served
def _strong(copy, key, value, seq):
    return copy.write("c", seq, [write_op(key, encode_value(value))], strong=True)


def _round(owner, replicas):
    """One replication round in which the replicas in ``replicas`` (slot -> copy) answer."""
    last, forget, payloads = owner.replication_payloads()
    for slot, (base, ops, snap) in payloads.items():
        if slot in replicas:
            status, pos = replicas[slot].sync(owner.epoch, owner.incarnation, base, last, ops, snap, 0.0, forget)
            owner.sync_answered(slot, status, pos, 0.0)
        else:
            owner.replica_failed(slot)
    owner.finish_round(last)


def _value(answer):
    return decode_value(R.record_value(answer.record))


def test_an_owner_reads_a_strong_write_only_once_its_replicas_confirm_holding_it():
    # The partition_and_heal fault found this: an owner cut off with a client took that client's
    # strong write, could not get it to its replica, and served it to the client's strong reads;
    # the promoted replica then served the older value -- a read that went back in time.
    clock = Clock()
    owner, replica = _copy(0, clock), _copy(1, clock)
    _strong(owner, "k", "old", 1)
    _strong(owner, "other", "x", 2)
    _round(owner, {1: replica})
    assert _value(owner.read("k")) == "old"
    answer = _strong(owner, "k", "new", 3)
    assert owner.unconfirmed("k") == answer.seq and owner.unconfirmed("other") is None
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k")
    assert _value(owner.read("other")) == "x"  # other keys are served as ever
    assert _value(owner.read("k", max_staleness_ms=1e9)) == "new"  # a replica-style read promises nothing
    replica.apply_write(answer)  # the client's chained apply: the owner does not know of it yet
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k")
    _round(owner, {1: replica})  # the replica acknowledges a position at or past the write
    assert owner.unconfirmed("k") is None
    assert _value(owner.read("k")) == "new"


def test_a_replica_that_went_out_of_sync_confirms_nothing():
    clock = Clock()
    owner, replica = _copy(0, clock, out_of_sync_after_s=1.0), _copy(1, clock)
    _round(owner, {1: replica})
    _strong(owner, "k", "cut off", 1)
    clock.t += 2.0
    owner.renew_lease(clock.t)
    _round(owner, {})  # the replica does not answer, and is out of sync by now
    assert not owner.progress_of[1].in_sync
    assert owner.replicated_seq == owner.state.last_seq  # no in-sync replica holds back replication ...
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k")  # ... but nothing confirmed the write: it is not served


def test_min_insync_copies_confirm_a_strong_write():
    clock = Clock()
    owner = _copy(0, clock, copies=3, min_insync=2)
    r1, r2 = _copy(1, clock, copies=3), _copy(2, clock, copies=3)
    _round(owner, {1: r1, 2: r2})
    _strong(owner, "k", "v", 1)
    _round(owner, {1: r1})  # slot 2 is away: the owner and slot 1 are the two copies required
    assert _value(owner.read("k")) == "v"
    _strong(owner, "k", "w", 2)
    _round(owner, {})
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k")


def test_a_deposed_owner_forgets_what_it_waited_for_and_a_one_copy_owner_waits_for_nothing():
    clock = Clock()
    owner = _copy(0, clock)
    _strong(owner, "k", "v", 1)
    owner.adopt(1, 2)  # deposed: a replica now, which serves no owner reads at all
    assert owner.unconfirmed("k") is None
    alone = _copy(0, clock, copies=1)
    _strong(alone, "k", "v", 1)
    assert _value(alone.read("k")) == "v"


def test_a_round_skips_a_straggling_replica_and_keeps_the_tombstones_to_forget_for_it():
    clock = Clock()
    owner = _copy(0, clock, copies=3)
    owner._forget = [("gone", 1)]
    _last, forget, payloads = owner.replication_payloads(skip={2})
    assert payloads.keys() == {1} and forget == [("gone", 1)]
    _last, forget, payloads = owner.replication_payloads()  # the straggler is back: everyone, once
    assert payloads.keys() == {1, 2} and forget == [("gone", 1)]
    assert owner.replication_payloads()[1] == []


def test_a_reader_that_saw_the_write_acknowledged_needs_no_confirmation_round():
    clock = Clock()
    owner, replica = _copy(0, clock), _copy(1, clock)
    answer = _strong(owner, "k", "mine", 1)
    replica.apply_write(answer)  # the writer collected the acknowledgements itself
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k", None, ("another incarnation", answer.seq))  # not this owner's log
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k", None, (owner.incarnation, answer.seq - 1))  # not the key's last strong write
    assert _value(owner.read("k", None, (owner.incarnation, answer.seq))) == "mine"
    later = _strong(owner, "k", "theirs", 2)  # another client's write, unconfirmed: the old hint is moot
    with pytest.raises(UnavailableError, match="not yet confirmed"):
        owner.read("k", None, (owner.incarnation, answer.seq))
    assert owner.unconfirmed("k") == later.seq
