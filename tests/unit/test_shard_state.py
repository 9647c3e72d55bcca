"""ShardState behaviour beyond the merge laws: tombstones, expiry, accounting, snapshots."""

from __future__ import annotations

import pytest

from erlmcp_ray.core import record as R
from erlmcp_ray.core.hlc import HybridLogicalClock
from erlmcp_ray.core.oplog import OpLog
from erlmcp_ray.core.shard_state import ENTRY_OVERHEAD, ShardState
from tests.strategies import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


def make(slot, clock, **kw):
    return ShardState(slot, clock=HybridLogicalClock(clock), now_ms=clock, **kw)


def test_put_get_delete_and_versions(clock):
    s = make(0, clock)
    seq, rec = s.apply_local("k", b"v1", tags=("t",))
    assert seq == 1 and s.get("k") == b"v1"
    r = R.Record.unpack(rec)
    assert r.vector == {0: 1} and r.writer == 0 and r.tags == ("t",) and not r.deleted
    _, rec2 = s.apply_local("k", b"v2")
    assert R.record_vector(rec2).dominates(R.record_vector(rec))
    assert s.apply_local("k", delete=True) is not None
    assert s.get("k") is None and "k" not in s and len(s) == 0 and s.tombstone_count == 1
    assert s.apply_local("k", delete=True) is None  # deleting nothing writes nothing
    assert s.apply_local("missing", delete=True) is None
    s.validate()


def test_accounting_counts_key_record_and_overhead(clock):
    s = make(0, clock)
    _, rec = s.apply_local("kéy", b"x" * 100)
    assert s.bytes_used == len("kéy".encode()) + len(rec) + ENTRY_OVERHEAD
    s.apply_local("kéy", b"y" * 10)
    assert s.bytes_used == len("kéy".encode()) + len(s.raw_record("kéy")) + ENTRY_OVERHEAD
    s.apply_local("kéy", delete=True)
    assert s.bytes_used == 0 and s.stats()["tombstone_bytes"] > 0
    s.validate()


def test_ttl_expiry_turns_into_the_same_tombstone_on_every_copy(clock):
    a, b = make(0, clock), make(1, clock)
    _, rec = a.apply_local("k", b"v", ttl_ms=1000)
    b.apply_remote("k", rec)
    clock.advance(999)
    assert a.get("k") == b"v"
    clock.advance(1)
    assert a.get("k") is None and b.get("k") is None
    assert a.digest() == b.digest()  # expired counts as its tombstone even before purge
    assert a.purge_expired() == 1 and len(a) == 0
    assert a.digest() == b.digest()
    b.merge(a)
    a.merge(b)
    assert a.raw_record("k") == b.raw_record("k") == R.tombstone_of(rec)
    assert b.purge_expired() == 0  # already replaced by the tombstone through merge
    a.validate(), b.validate()


def test_overwrite_without_ttl_clears_expiry(clock):
    s = make(0, clock)
    s.apply_local("k", b"v", ttl_ms=10)
    s.apply_local("k", b"w")
    clock.advance(100)
    assert s.purge_expired() == 0 and s.get("k") == b"w"


def test_tombstone_gc_only_after_ack_and_versions_keep_rising(clock):
    owner, replica = make(0, clock), make(1, clock)
    owner.apply_local("k", b"v")
    seq, _ = owner.apply_local("k", delete=True)
    replica.apply_delta(owner.since(0))
    assert owner.gc_tombstones(seq - 1) == []  # replica has not acked the tombstone yet
    dropped = owner.gc_tombstones(seq)
    assert [k for k, _ in dropped] == ["k"] and owner.raw_record("k") is None
    assert replica.forget_tombstones(dropped) == 1 and replica.raw_record("k") is None
    _, rec = owner.apply_local("k", b"again")
    assert R.record_counter(rec, 0) == 3  # the shard counter, not a per-key one restarted at 1
    replica.apply_remote("k", rec)
    assert replica.get("k") == b"again"
    owner.validate(), replica.validate()


def test_forget_tombstones_keeps_a_newer_write(clock):
    owner, replica = make(0, clock), make(1, clock)
    owner.apply_local("k", b"v")
    seq, _ = owner.apply_local("k", delete=True)
    replica.apply_delta(owner.since(0))
    dropped = owner.gc_tombstones(seq)
    clock.advance(5)
    replica.apply_local("k", b"newer")
    assert replica.forget_tombstones(dropped) == 0 and replica.get("k") == b"newer"


def test_concurrent_writes_count_conflicts(clock):
    a, b = make(0, clock), make(1, clock)
    a.apply_local("k", b"from-a")
    clock.advance(1)
    b.apply_local("k", b"from-b")
    result = a.merge(b)
    assert result.changed == 1 and result.conflicts == 1 and a.conflicts_resolved == 1
    assert a.get("k") == b"from-b"  # later HLC wins
    assert R.record_vector(a.raw_record("k")) == {0: 1, 1: 1}


def test_snapshot_restore_makes_an_equal_copy_that_keeps_counting(clock):
    s = make(0, clock)
    for i in range(50):
        s.apply_local(f"k{i}", str(i).encode(), tags=("even",) if i % 2 == 0 else ())
    s.apply_local("k3", delete=True)
    fresh = make(0, clock)  # an owner restarted with empty state
    fresh.restore(s.snapshot())
    assert fresh.records() == s.records() and fresh.digest() == s.digest()
    _, rec = fresh.apply_local("k1", b"next")
    assert R.record_vector(rec).dominates(R.record_vector(s.raw_record("k1")))
    fresh.validate()


def test_since_reports_a_gap_after_trimming(clock):
    s = make(0, clock, oplog_capacity=4)
    for i in range(20):
        s.apply_local(f"k{i}", b"v")
    assert s.since(0) is None
    assert s.since(s.last_seq) == []
    tail = s.since(s.last_seq - 3)
    assert [op[0] for op in tail] == [s.last_seq - 2, s.last_seq - 1, s.last_seq]


def test_oplog_bounds_and_errors():
    log = OpLog(capacity=3, start_seq=10)
    assert log.last_seq == 10 and log.since(10) == []
    for i in range(7):
        log.append(str(i), b"")
    assert log.last_seq == 17 and len(log) <= 6
    with pytest.raises(ValueError):
        log.since(99)
    with pytest.raises(ValueError):
        OpLog(capacity=0)
    with pytest.raises(ValueError):
        ShardState(slot=70000)


def test_record_round_trip_and_order():
    r = R.Record(vector=R.record_vector(R.pack({0: 2, 3: 1}, 5, 0)), hlc=77, writer=3, value=b"v",
                 expires_at=123, tags=("a", "b"))
    assert R.Record.unpack(r.pack()) == r
    lo = R.pack({0: 1}, 10, 0, b"zzz")
    hi = R.pack({1: 1}, 10, 1, b"aaa")
    assert R.content_wins(hi, lo) and not R.content_wins(lo, hi)
    joined, concurrent = R.join(lo, hi)
    assert concurrent and R.record_value(joined) == b"aaa"
    assert R.record_vector(joined) == {0: 1, 1: 1}


def test_entry_and_version_from_record(clock):
    from erlmcp_ray.core.codec import encode_value
    from erlmcp_ray.core.entry import Entry, Version

    s = make(2, clock)
    _, rec = s.apply_local("k", encode_value({"a": [1, 2]}), tags=("x",), ttl_ms=5000)
    e = Entry.from_record("k", rec)
    assert e.value == {"a": [1, 2]} and e.tags == ("x",) and e.expires_at_ms == clock.now + 5000
    assert e.version == Version.from_record(rec) and e.version.writer == 2 and e.version.vector == {2: 1}
    assert e.version.wall_ms == clock.now and e.timestamp == e.version.timestamp


def test_tag_index_and_patterns(clock):
    s = make(0, clock)
    s.apply_local("session:1", b"a", tags=("user_sessions", "eu"))
    s.apply_local("session:2", b"b", tags=("user_sessions",))
    s.apply_local("other", b"c", tags=("eu",))
    assert sorted(s.keys_with_tag("user_sessions")) == ["session:1", "session:2"]
    s.apply_local("session:2", b"b2")  # rewritten without tags: leaves the index
    s.apply_local("other", delete=True)
    assert s.keys_with_tag("user_sessions") == ["session:1"] and s.keys_with_tag("eu") == ["session:1"]
    assert sorted(s.keys_matching("session:*")) == ["session:1", "session:2"]
    assert s.keys_matching("Session:*") == [] and s.keys_matching("sess?on:[12]") != []
    s.validate()


def test_take_dirty_in_chunks_and_by_key_hands_over_every_change_once(clock):
    """The durable tier's view: a migration's backlog goes in chunks, a write-through write takes
    only its own keys, and together they hand over each change exactly once."""
    s = make(0, clock)
    s.dirty = set()
    for i in range(10):
        s.apply_local(f"k{i}", b"v")
    s.apply_local("k3", delete=True)
    records, deletes = s.take_dirty(keys=["k1", "k3", "absent"])
    assert sorted(k for k, _ in records) == ["k1", "k3"] and deletes == []
    assert R.record_is_deleted(dict(records)["k3"])  # a tombstone is a record: a reload keeps it deleted
    taken = []
    while True:
        records, deletes = s.take_dirty(limit=3)
        if not records and not deletes:
            break
        assert len(records) + len(deletes) <= 3
        taken += [k for k, _ in records] + deletes
    assert sorted(taken) == sorted(f"k{i}" for i in range(10) if i not in (1, 3))
    assert s.take_dirty() == ([], [])


def test_a_write_keeps_the_versions_it_saw_from_other_slots(clock):
    # the owner's one-struct path is for keys only its own slot wrote; a key another slot wrote
    # (merged in) keeps that slot's counter, so the new write descends from it
    a, b = make(0, clock), make(1, clock)
    _, theirs = b.apply_local("k", b"theirs")
    a.apply_remote("k", theirs)
    _, mine = a.apply_local("k", b"mine")
    assert R.record_vector_dict(mine) == {0: 1, 1: 1}
    b.apply_remote("k", mine)
    assert b.get("k") == b"mine" and b.conflicts_resolved == 0  # a successor, not a conflict
    _, again = a.apply_local("k", b"again")
    assert R.record_vector_dict(again) == {0: 2, 1: 1}
    _, plain = a.apply_local("fresh", b"v")
    assert R.record_vector_dict(plain) == {0: 3} and plain == R.pack({0: 3}, R.record_hlc(plain), 0, b"v")
