"""ShardCopy under the persistence selector and the recovery API: its replica set changing
(set_copies), its counters, a delta replay, and replication rounds across a reset: pure, no Ray."""

from __future__ import annotations

import pytest

from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.wire import write_op


def test_an_owner_given_more_copies_sends_the_new_ones_a_snapshot_and_fewer_forgets_them():
    owner = ShardCopy("d", 0, 0, 1, 1, ShardSettings())
    owner.write("c", 1, [write_op("a", b"x")])
    assert owner.replication_payloads()[2] == {}
    owner.set_copies(3)
    _, _, payloads = owner.replication_payloads()
    assert set(payloads) == {1, 2}
    assert all(snap is not None for _base, _ops, snap in payloads.values())
    replica = ShardCopy("d", 0, 1, 3, 1, ShardSettings())
    base, ops, snap = payloads[1]
    replica.sync(1, owner.incarnation, base, owner.state.last_seq, ops, snap, 0.0, [])
    assert replica.state.digest() == owner.state.digest()
    owner.set_copies(1)
    assert owner.replication_payloads()[2] == {} and owner.stats()["copies"] == 1
    with pytest.raises(ValueError):
        replica.set_copies(2)
    with pytest.raises(ValueError):
        owner.set_copies(0)


def test_copies_count_the_operations_they_serve():
    owner = ShardCopy("d", 0, 0, 1, 1, ShardSettings())
    owner.write("c", 1, [write_op("a", b"x"), write_op("b", b"y")])
    owner.write("c", 1, [write_op("a", b"x"), write_op("b", b"y")])  # a retry: answered, not counted
    owner.read("a")
    assert (owner.stats()["reads"], owner.stats()["writes"]) == (1, 2)


def test_a_delta_replay_rebuilds_the_state_and_cannot_be_replayed_again():
    """Checkpoint image + op-log since it = the state; the rebuilt log is numbered afresh, so the
    same checkpoint's position must not be used on it again (it could skip operations)."""
    from erlmcp_ray.core.checkpoint import pack_shard, unpack_shard

    owner = ShardCopy("d", 0, 0, 1, 1, ShardSettings())
    for i in range(5):
        owner.write("c", i + 1, [write_op(f"k{i}", b"v%d" % i)])
    data, sha = pack_shard("d", 0, owner.epoch, owner.state.snapshot(), owner.incarnation)
    image = unpack_shard(data, sha, "x")
    owner.write("c", 10, [write_op("k0", None), write_op("k9", b"new")])
    want = owner.state.digest()
    assert owner.replay_from(image) == 2
    assert owner.state.digest() == want and owner.state.get("k0") is None
    with pytest.raises(ValueError, match="incarnation"):
        owner.replay_from(image)


def test_a_replication_round_in_flight_across_a_reset_counts_for_nothing():
    """A round's answer that arrives after a new epoch (a recovery, a restore) must not mark the
    replica as holding the new state: it gets a full snapshot, and nothing is replicated before."""
    owner = ShardCopy("d", 0, 0, 2, 1, ShardSettings())
    owner.write("c", 1, [write_op("a", b"x")])
    last, _, payloads = owner.replication_payloads()  # the round goes out ...
    owner.bump_epoch()  # ... a recovery resets the replicas' progress meanwhile ...
    assert owner.sync_answered(1, "ok", last, 0.001) is True  # ... and its answer comes back: resend
    owner.finish_round(last)
    assert owner.progress().replicated == 0
    _, _, payloads = owner.replication_payloads()
    base, _ops, snap = payloads[1]
    assert snap is not None and base is None  # a full snapshot, not a delta from the stale position


def test_an_owner_publishes_each_write_with_the_client_that_made_it_and_evictions_with_none():
    """The coordinator skips a write's notification for the client that made it: the owner says
    who that was. A deletion the owner makes itself (an eviction) has no such client: every cache,
    the writer's too, must hear of it."""
    from erlmcp_ray.config import DomainConfig

    d = DomainConfig(max_bytes=10**6, eviction="lru")
    owner = ShardCopy("d", 0, 0, 1, 1, ShardSettings(domain_config=d.model_dump(mode="json"), max_bytes=400))
    owner.write("alice", 1, [write_op("a", b"x"), write_op("b", b"y")])
    owner.write("bob", 1, [write_op("c", b"z")])  # 400 bytes hold two entries: evicts a
    owner.replication_payloads()  # a round (no replicas): everything is replicated
    upto, items = owner.publish_batch()
    got = [(item[1], item[5] if len(item) > 5 else None) for item in items]
    assert got[:3] == [("a", "alice"), ("b", "alice"), ("c", "bob")]
    assert got[3:] and all(origin is None for _key, origin in got[3:])  # the eviction's tombstone
    owner.published(upto)
    owner.write("carol", 1, [write_op("b", b"w")])
    owner.replication_payloads()
    _, items = owner.publish_batch()
    assert [(item[1], item[5]) for item in items] == [("b", "carol")]
