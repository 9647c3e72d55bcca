"""Checkpoint manifests, shard images and retention (core.checkpoint): pure."""

from __future__ import annotations

import pytest

from erlmcp_ray.core.checkpoint import (
    Checkpoint,
    ShardEntry,
    manifest_name,
    new_id,
    pack_shard,
    plan_retention,
    shard_blob_name,
    unpack_shard,
)
from erlmcp_ray.core.hlc import HybridLogicalClock
from erlmcp_ray.core.shard_state import ShardState
from erlmcp_ray.errors import CorruptDataError
from tests.strategies import FakeClock


def _state(clock=None) -> ShardState:
    clock = clock or FakeClock()
    s = ShardState(0, clock=HybridLogicalClock(clock), now_ms=clock)
    s.apply_local("a", b"1", tags=("t",))
    s.apply_local("b", b"2", ttl_ms=60_000)
    s.apply_local("c", b"3")
    s.apply_local("c", delete=True)
    return s


def test_a_shard_image_round_trips_to_an_equal_state():
    clock = FakeClock()
    src = _state(clock)
    data, sha = pack_shard("d", 0, 7, src.snapshot())
    snap = unpack_shard(data, sha, "x")
    assert snap["epoch"] == 7
    dst = ShardState(0, clock=HybridLogicalClock(clock), now_ms=clock)
    dst.restore(snap)
    assert dst.digest() == src.digest() and dst.get("a") == b"1" and dst.get("c") is None


def test_one_changed_byte_is_named_and_nothing_is_returned():
    data, sha = pack_shard("d", 3, 1, _state().snapshot())
    bad = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(CorruptDataError, match="checkpoint/x/d/3") as info:
        unpack_shard(bad, sha, "checkpoint/x/d/3")
    assert info.value.where == "checkpoint/x/d/3"


def test_a_manifest_sums_its_shards_and_checks_itself():
    shards = [ShardEntry("b", 0, "n1", "aa", 2, 20), ShardEntry("a", 1, "n2", "bb", 3, 30),
              ShardEntry("a", 0, "n3", "cc", 1, 10)]
    cp = Checkpoint.build("ckpt-1", 100.0, shards)
    assert cp.domains == ("a", "b") and (cp.entries, cp.bytes) == (6, 60)
    assert [(s.domain, s.shard) for s in cp.shards] == [("a", 0), ("a", 1), ("b", 0)]
    again = Checkpoint.decode(cp.encode(), "m")
    assert again == cp
    again.verify()
    other = Checkpoint.build("ckpt-1", 100.0, [*shards[:2], ShardEntry("a", 0, "n3", "cd", 1, 10)])
    assert other.checksum != cp.checksum
    forged = Checkpoint(cp.id, cp.created_at, cp.domains, cp.entries, cp.bytes, cp.checksum, other.shards)
    with pytest.raises(CorruptDataError):
        forged.verify()
    with pytest.raises(CorruptDataError, match="cannot be read"):
        Checkpoint.decode(b"{not json", "checkpoint/x/manifest")
    assert set(cp.summary()) == {"id", "created_at", "domains", "entries", "bytes", "checksum"}


def test_ids_sort_by_time():
    ids = [new_id(t, "00") for t in (1_700_000_000.5, 1_700_000_001.25, 1_800_000_000.0)]
    assert ids == sorted(ids) and ids[0].startswith("ckpt-2023")


def test_retention_keeps_the_newest_and_sweeps_manifestless_leftovers():
    def blobs(i, manifest=True):
        names = [shard_blob_name(i, "d", 0), shard_blob_name(i, "d", 1)]
        return names + ([manifest_name(i)] if manifest else [])

    all_blobs = blobs("ckpt-1") + blobs("ckpt-2", manifest=False) + blobs("ckpt-3") + blobs("ckpt-4") + \
        blobs("ckpt-5", manifest=False) + ["other/blob"]
    doomed = plan_retention(all_blobs, keep=2)
    # ckpt-1 is beyond the two newest; ckpt-2 never finished; ckpt-5 may still be being written
    assert doomed == [manifest_name("ckpt-1"), *sorted(blobs("ckpt-1")[:2]), *sorted(blobs("ckpt-2", False))]
    assert plan_retention(all_blobs, keep=0)[:1] == [manifest_name("ckpt-1")]
    assert plan_retention([], keep=3) == []
