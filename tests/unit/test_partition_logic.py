"""Partitions without Ray: eventual writes taken by a copy cut off from its owner (its stash), a
deposed owner's unreplicated writes, the owner's join of stashes (conflicts and their losers), and
the partition rule of the fault seam."""

from __future__ import annotations

import pytest

from erlmcp_ray.core import record as R
from erlmcp_ray.core.codec import decode_value, encode_value
from erlmcp_ray.core.hlc import HybridLogicalClock
from erlmcp_ray.core.partition import PartitionRule
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.shard_state import ShardState
from erlmcp_ray.core.wire import write_op
from erlmcp_ray.errors import UnavailableError


class Clock:
    """Monotonic seconds for leases, and a wall clock in ms for versions that each write moves on."""

    def __init__(self) -> None:
        self.t = 100.0
        self.ms = 1_700_000_000_000

    def __call__(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        self.ms += 1
        return self.ms


def _copy(slot, clock, copies=3, epoch=1):
    state = ShardState(slot, clock=HybridLogicalClock(physical_ms=clock.wall_ms), now_ms=clock.wall_ms)
    return ShardCopy("d", 0, slot, copies, epoch, ShardSettings(lease_s=1.0), clock=clock, state=state)


def _put(copy, key, value, seq, stash_ok=False):
    return copy.write("c", seq, [write_op(key, encode_value(value))], stash_ok=stash_ok)


def _value(copy, key):
    return decode_value(R.record_value(copy.state.get_record(key)))


def _sync(src, dst):
    last, forget, payloads = src.replication_payloads()
    base, ops, snap = payloads[dst.slot]
    status, pos = dst.sync(src.epoch, src.incarnation, base, last, ops, snap, 0.0, forget)
    src.sync_answered(dst.slot, status, pos, 0.0)
    return status, pos


def test_a_replica_takes_eventual_writes_into_its_stash_only_when_allowed():
    clock = Clock()
    replica = _copy(1, clock)
    with pytest.raises(UnavailableError, match="not the owner"):
        _put(replica, "k", 1, seq=1)
    answer = _put(replica, "k", 1, seq=2, stash_ok=True)
    assert answer.stashed and list(replica.stash) == ["k"]
    assert _put(replica, "k", 1, seq=2, stash_ok=True) is answer  # a retry: the first answer
    assert replica.stashed_writes == 1
    # versioned under the replica's own slot: concurrent with anything the owner writes
    assert R.record_vector_dict(replica.stash["k"]) == {1: 1}


def test_an_owner_whose_lease_ran_out_stashes_eventual_writes_and_refuses_the_others():
    clock = Clock()
    owner = _copy(0, clock)
    clock.t += 1.5  # no replica or supervisor renewed the lease: cut off
    with pytest.raises(UnavailableError, match="lease"):
        _put(owner, "k", 1, seq=1)
    assert _put(owner, "k", 1, seq=2, stash_ok=True).stashed
    owner.renew_lease(clock.t)
    assert not _put(owner, "m", 1, seq=4, stash_ok=True).stashed  # leased again: an owner's write


def test_a_deposed_owner_keeps_its_unreplicated_writes_through_the_new_owners_snapshot():
    clock = Clock()
    old, successor, third = _copy(0, clock), _copy(1, clock), _copy(2, clock)
    _put(old, "replicated", "r", seq=1)
    _sync(old, successor), _sync(old, third)
    old.finish_round(old.state.last_seq)
    _put(old, "late", "only on the old owner", seq=2)  # acknowledged, never replicated
    successor.promote(2, 3)
    _put(successor, "new", "n", seq=1)
    # the successor's snapshot reaches the old owner: deposed, its state replaced...
    assert _sync(successor, old)[0] == "ok"
    assert not old.is_owner and old.state.get_record("late") is None
    # ...but its stash kept the write it acknowledged; the heal hands it to the owner
    handed = list(old.stash.items())
    assert [k for k, _ in handed] == ["late"]
    result, losers = successor.absorb(handed)
    assert result.changed == 1 and result.conflicts == 0 and losers == []
    assert _value(successor, "late") == "only on the old owner"
    assert old.clear_stash(handed) == 1 and old.stash == {}


def test_absorb_resolves_concurrent_writes_by_last_writer_and_returns_the_losers():
    clock = Clock()
    owner, cut_off = _copy(0, clock), _copy(1, clock)
    _put(cut_off, "x", "cut-off side, earlier", seq=1, stash_ok=True)
    _put(owner, "x", "owner side, later", seq=1)
    _put(owner, "y", "owner side, earlier", seq=2)
    _put(cut_off, "y", "cut-off side, later", seq=2, stash_ok=True)
    handed = list(cut_off.stash.items())
    result, losers = owner.absorb(handed)
    assert result.conflicts == 2
    assert _value(owner, "x") == "owner side, later" and _value(owner, "y") == "cut-off side, later"
    lost = {k: decode_value(R.record_value(rec)) for k, rec in losers}
    assert lost == {"x": "cut-off side, earlier", "y": "owner side, earlier"}
    # the merged versions dominate both sides: a second heal changes nothing and finds no conflict
    again, losers = owner.absorb(handed)
    assert (again.changed, again.conflicts, losers) == (0, 0, [])


def test_clear_stash_keeps_a_key_written_again_after_the_heal_took_it():
    clock = Clock()
    cut_off = _copy(1, clock)
    _put(cut_off, "k", 1, seq=1, stash_ok=True)
    handed = list(cut_off.stash.items())
    _put(cut_off, "k", 2, seq=2, stash_ok=True)
    assert cut_off.clear_stash(handed) == 0 and list(cut_off.stash) == ["k"]


def test_only_an_owner_absorbs():
    clock = Clock()
    with pytest.raises(UnavailableError, match="not the owner"):
        _copy(1, clock).absorb([])


# ---------------------------------------------------------------- the partition rule
def test_a_partition_blocks_only_between_listed_places_on_different_sides():
    rule = PartitionRule([["erlmcp:shard:d:0:0", "client:a*"], ["erlmcp:shard:d:0:[12]", "erlmcp:supervisor"]])
    assert rule.blocks("client:a1", "erlmcp:shard:d:0:1")
    assert rule.blocks("erlmcp:supervisor", "erlmcp:shard:d:0:0")
    assert not rule.blocks("client:a1", "erlmcp:shard:d:0:0")  # same side
    assert not rule.blocks("client:b1", "erlmcp:shard:d:0:0")  # not listed: reaches everyone
    assert not rule.blocks("erlmcp:shard:d:0:1", "erlmcp:coordinator")
    assert PartitionRule.decode(rule.encode()) == rule
    assert not PartitionRule([]).blocks("a", "b")


def test_a_partition_rule_refuses_a_place_on_two_sides():
    with pytest.raises(ValueError, match="both"):
        PartitionRule([["a"], ["a"]])
    with pytest.raises(ValueError, match="at least two"):
        PartitionRule([["a"]])


# ---------------------------------------------------------------- counting lost writes
def test_lost_writes_names_a_key_whose_last_acknowledged_put_is_gone():
    from erlmcp_ray.testing import Operation, lost_writes

    inf = float("inf")
    history = [Operation(0, "put", "a", 1, 0.0, 1.0), Operation(0, "put", "a", 2, 2.0, 3.0),
               Operation(1, "put", "b", 1, 0.0, 1.0), Operation(1, "put", "b", 2, 0.5, inf),  # may be after
               Operation(2, "put", "c", 1, 0.0, inf)]  # never acknowledged: nothing to lose
    assert lost_writes(history, {"a": 2, "b": 2, "c": None}) == []
    assert lost_writes(history, {"a": 2, "b": 1, "c": None}) == []
    assert lost_writes(history, {"a": 1, "b": None}) == ["a", "b"]


def test_replication_counts_the_bytes_it_sends():
    clock = Clock()
    owner, replica = _copy(0, clock, copies=2), _copy(1, clock, copies=2)
    _put(owner, "key", "v" * 100, seq=1)
    _sync(owner, replica)  # a snapshot: the replica was nowhere in the log
    first = owner.syncs["bytes"]
    assert first == len("key") + len(owner.state.raw_record("key"))
    _put(owner, "k2", "w", seq=2)
    _sync(owner, replica)  # a delta of one op
    assert owner.syncs["bytes"] - first == len("k2") + len(owner.state.raw_record("k2"))
