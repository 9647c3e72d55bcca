"""``check_store(factory)``: the contract of a durable store (``erlmcp_ray.storage.DurableStore``).

``factory()`` must return a new, empty store; ``reopen(store)`` (optional) closes it and returns
a store on the same data (proving writes outlive the object). Raises ``AssertionError`` naming
the broken rule; returns nothing when all hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from erlmcp_ray.core import record as R
from erlmcp_ray.errors import StaleEpochError

__all__ = ["check_store"]


def _rec(value: bytes, hlc: int = 1, *, deleted: bool = False, expires_at: int | None = None,
         tags: tuple[str, ...] = ()) -> bytes:
    return R.pack({0: hlc}, hlc, 0, value, deleted=deleted, expires_at=expires_at, tags=tags)


def check_store(factory: Callable[[], Any], reopen: Callable[[Any], Any] | None = None) -> None:
    for check in (_empty, _round_trip, _shards_are_separate, _deletes, _epochs, _epoch_race, _blobs,
                  _large_batch, _purge):
        store = factory()
        try:
            check(store)
        finally:
            store.close()
    if reopen is not None:
        _survives_reopen(factory, reopen)


def _empty(s: Any) -> None:
    image = s.load_shard("d", 0)
    assert image.epoch == 0 and image.records == {}, "a new store holds nothing"
    assert s.shards() == [] and s.list_blobs() == [] and s.get_blob("x") is None


def _round_trip(s: Any) -> None:
    recs = [("a", _rec(b"\x01")), ("b", _rec(b"", 2, deleted=True)), ("c", _rec(b"\x03", 3, expires_at=123)),
            ("ü/ключ", _rec(b"\x04", 4, tags=("t1", "t2")))]
    assert s.write_batch("d", 0, 1, recs) == 1
    assert s.load_shard("d", 0).records == dict(recs), "records (tombstones, expiry, tags) come back byte for byte"
    s.write_batch("d", 0, 1, [("a", _rec(b"\x09", 9))])
    assert s.load_shard("d", 0).records["a"] == _rec(b"\x09", 9), "a later write of a key replaces it"
    assert ("d", 0) in s.shards()


def _shards_are_separate(s: Any) -> None:
    s.write_batch("d", 0, 1, [("k", _rec(b"\x00"))])
    s.write_batch("d", 1, 5, [("k", _rec(b"\x01"))])
    s.write_batch("e", 0, 2, [("k", _rec(b"\x02"))])
    assert s.load_shard("d", 0).records == {"k": _rec(b"\x00")}
    assert s.load_shard("d", 1).epoch == 5 and s.load_shard("e", 0).epoch == 2 and s.epoch("d", 0) == 1
    assert sorted(s.shards()) == [("d", 0), ("d", 1), ("e", 0)]


def _deletes(s: Any) -> None:
    s.write_batch("d", 0, 1, [("a", _rec(b"\x01")), ("b", _rec(b"\x02"))])
    s.write_batch("d", 0, 1, [("c", _rec(b"\x03"))], deletes=["a", "missing"])
    assert sorted(s.load_shard("d", 0).records) == ["b", "c"], "deletes drop exactly the keys named"


def _epochs(s: Any) -> None:
    s.write_batch("d", 0, 3, [("k", _rec(b"\x03"))])
    try:
        s.write_batch("d", 0, 2, [("k", _rec(b"\x02"))])
    except StaleEpochError as exc:
        assert exc.epoch == 2 and exc.current == 3
    else:
        raise AssertionError("a write of a lower epoch was not refused")
    assert s.load_shard("d", 0).records == {"k": _rec(b"\x03")}, "a refused write changed nothing"
    assert s.fence("d", 0, 7) == 7 and s.epoch("d", 0) == 7
    for stale in (lambda: s.fence("d", 0, 6), lambda: s.write_batch("d", 0, 6, [], deletes=["k"])):
        try:
            stale()
        except StaleEpochError:
            pass
        else:
            raise AssertionError("the store accepted an epoch lower than its fence")
    assert s.load_shard("d", 0).records == {"k": _rec(b"\x03")}
    s.write_batch("d", 0, 7, [("k", _rec(b"\x07", 7))])  # the fencing owner writes
    assert s.load_shard("d", 0).epoch == 7


def _epoch_race(s: Any) -> None:
    """A deposed owner (epoch 1) keeps writing one shard while its successor fences it (epoch 2) and
    writes: from the first refusal on, every write of the deposed owner is refused, and none of them
    lands over the successor's."""
    results: list[bool] = []  # per write of the deposed owner: accepted?
    started = threading.Event()

    def old_owner() -> None:
        for i in range(5000):
            try:
                s.write_batch("r", 0, 1, [("k", _rec(b"old", 1 + i)), (f"old{i}", _rec(b"o"))])
                results.append(True)
            except StaleEpochError:
                results.append(False)
                if results.count(False) >= 20:
                    return
            if i == 10:
                started.set()

    t = threading.Thread(target=old_owner)
    t.start()
    assert started.wait(60), "the deposed owner's writes did not start"
    s.fence("r", 0, 2)
    for j in range(50):
        s.write_batch("r", 0, 2, [("k", _rec(b"new", 10_000 + j))])
    t.join(60)
    image = s.load_shard("r", 0)
    assert image.epoch == 2 and image.records["k"] == _rec(b"new", 10_049), "the deposed owner overwrote its successor"
    assert False in results, "the deposed owner was never refused"
    first = results.index(False)
    assert not any(results[first:]), "a deposed owner's write was accepted after one was refused"
    assert sum(1 for k in image.records if k.startswith("old")) == first, "refused writes left records behind"


def _blobs(s: Any) -> None:
    s.put_blob("ckpt/2", b"two")
    s.put_blob("ckpt/1", b"\x00one" * 1000)
    s.put_blob("other", b"")
    assert s.get_blob("ckpt/1") == b"\x00one" * 1000 and s.get_blob("other") == b""
    assert s.list_blobs("ckpt/") == ["ckpt/1", "ckpt/2"] and s.list_blobs() == ["ckpt/1", "ckpt/2", "other"]
    s.put_blob("ckpt/2", b"TWO")
    assert s.get_blob("ckpt/2") == b"TWO"
    assert s.delete_blob("ckpt/2") and not s.delete_blob("ckpt/2")
    assert s.list_blobs("ckpt/") == ["ckpt/1"] and s.get_blob("ckpt/2") is None


def _large_batch(s: Any) -> None:
    recs = [(f"key:{i}", _rec(i.to_bytes(4, "big"), i + 1)) for i in range(5000)]
    s.write_batch("big", 0, 1, recs)
    assert s.load_shard("big", 0).records == dict(recs), "a large batch is stored whole"
    s.write_batch("big", 0, 1, [], deletes=[k for k, _ in recs[:2500]])
    assert len(s.load_shard("big", 0).records) == 2500


def _purge(s: Any) -> None:
    s.write_batch("d", 0, 4, [("k", _rec(b"\x01"))])
    s.put_blob("b", b"x")
    s.purge()
    assert s.shards() == [] and s.list_blobs() == [] and s.load_shard("d", 0).epoch == 0


def _survives_reopen(factory: Callable[[], Any], reopen: Callable[[Any], Any]) -> None:
    s = factory()
    s.write_batch("d", 0, 3, [("k", _rec(b"\x01"))])
    s.put_blob("b", b"blob")
    s = reopen(s)
    try:
        assert s.load_shard("d", 0).records == {"k": _rec(b"\x01")} and s.epoch("d", 0) == 3
        assert s.get_blob("b") == b"blob", "data outlives the store object"
    finally:
        s.close()
