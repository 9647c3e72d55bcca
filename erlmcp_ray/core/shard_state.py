"""One copy of one shard: versioned entries, op-log, merge, digest, accounting.

Pure logic (no Ray, no I/O): the shard actors are thin shells around it. Each
key maps to one packed record (see ``record``), tombstones included, so a
delete is a versioned write like any other and merges the same way.

Versions: the copy in slot ``s`` stamps a write with the next value of its own
counter ``context[s]`` (one counter per shard, not per key, so a key written
again after its tombstone was collected still gets a version above the old one).
``context`` is the pointwise max of every vector this copy has seen.

Accounting counts, per live entry, the key's UTF-8 bytes + the packed record
(encoded value plus version metadata) + ``ENTRY_OVERHEAD`` bytes for what
Python holds around them (the str and bytes object headers and the dict slot),
measured with tracemalloc in ``benchmarks/bench_core.py``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from erlmcp_ray.core import record as R
from erlmcp_ray.core.hlc import HybridLogicalClock, wall_clock_ms
from erlmcp_ray.core.oplog import Op, OpLog
from erlmcp_ray.core.vclock import VersionVector

__all__ = ["ENTRY_OVERHEAD", "MergeResult", "ShardState"]

#: Bytes counted per entry on top of key and record bytes (see module docstring).
ENTRY_OVERHEAD = 128


@dataclass(frozen=True, slots=True)
class MergeResult:
    changed: int  # keys whose record changed
    conflicts: int  # concurrent versions resolved by last-writer-wins


def _klen(key: str) -> int:
    return len(key) if key.isascii() else len(key.encode("utf-8"))


class ShardState:
    """The state of one shard copy in slot ``slot``."""

    def __init__(
        self,
        slot: int = 0,
        *,
        clock: HybridLogicalClock | None = None,
        now_ms: Callable[[], int] | None = None,
        oplog_capacity: int = 65536,
        entry_overhead: int = ENTRY_OVERHEAD,
    ) -> None:
        if not 0 <= slot <= R.MAX_SLOT:
            raise ValueError(f"slot must be in 0..{R.MAX_SLOT}, got {slot}")
        self.slot = slot
        self.clock = clock or HybridLogicalClock()
        self._now_ms = now_ms or wall_clock_ms
        self.entry_overhead = entry_overhead
        self.log = OpLog(oplog_capacity)
        self._data: dict[str, bytes] = {}
        self._context: dict[int, int] = {}
        self._tombstones: dict[str, int] = {}  # key -> log seq that stored the tombstone
        self._expiry: list[tuple[int, str]] = []  # min-heap; stale items are skipped on pop
        self._tagged: dict[str, set[str]] = {}  # tag -> keys of live entries carrying it
        self._live_bytes = 0
        self._tomb_bytes = 0
        self._entries = 0
        self.conflicts_resolved = 0
        #: keys changed since the durable tier last took them (None: no durable tier, not tracked)
        self.dirty: set[str] | None = None

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes | None:
        """The encoded value, or None when absent, deleted or expired."""
        rec = self.get_record(key)
        return None if rec is None else R.record_value(rec)

    def get_record(self, key: str) -> bytes | None:
        """The live record of ``key`` (None when absent, deleted or expired)."""
        rec = self._data.get(key)
        if rec is None:
            return None
        flags = rec[10]
        if flags and (flags & R.FLAG_DELETED or (flags & R.FLAG_EXPIRY and self._expired(rec))):
            return None
        return rec

    def raw_record(self, key: str) -> bytes | None:
        """The stored record, tombstones and expired ones included."""
        return self._data.get(key)

    def _expired(self, rec: bytes) -> bool:
        exp = R.record_expires_at(rec)
        return exp is not None and exp <= self._now_ms()

    def __len__(self) -> int:
        return self._entries

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get_record(key) is not None

    def keys(self) -> Iterator[str]:
        """Keys of live entries."""
        return (k for k in list(self._data) if self.get_record(k) is not None)

    def records(self) -> dict[str, bytes]:
        """Every stored record, expired ones shown as the tombstone they become."""
        now = self._now_ms()
        out = {}
        for key, rec in self._data.items():
            exp = R.record_expires_at(rec) if rec[10] & R.FLAG_EXPIRY else None
            out[key] = R.tombstone_of(rec) if exp is not None and exp <= now and not rec[10] & 1 else rec
        return out

    @property
    def context(self) -> VersionVector:
        """The pointwise max of every version this copy has seen."""
        return VersionVector(self._context)

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    # ----------------------------------------------------------------- writes
    def apply_local(
        self,
        key: str,
        value: bytes = b"",
        *,
        delete: bool = False,
        ttl_ms: int | None = None,
        tags: tuple[str, ...] | list[str] = (),
    ) -> tuple[int, bytes] | None:
        """Apply a write as the owner; returns (seq, record), or None for a delete of nothing."""
        old = self._data.get(key)
        if delete and (old is None or old[10] & R.FLAG_DELETED or (old[10] & R.FLAG_EXPIRY and self._expired(old))):
            return None
        slot = self.slot
        counter = self._context.get(slot, 0) + 1
        self._context[slot] = counter
        if not delete and ttl_ms is None and not tags and (old is None or old[11] == 1 and R.sole_slot(old) == slot):
            # The common write (no expiry, no tags) of a key only this slot wrote: its vector is
            # {slot: counter}, packed in one struct call (R.pack_plain).
            rec = R.pack_plain(self.clock.now(), slot, counter, value)
            return self._store(key, old, rec), rec
        if old is None:
            vector = {slot: counter}
        else:
            vector = R.record_vector_dict(old)
            vector[slot] = counter
            if len(vector) > 1:
                vector = dict(sorted(vector.items()))
        expires_at = None if ttl_ms is None else self._now_ms() + ttl_ms
        rec = R.pack(vector, self.clock.now(), slot, value, deleted=delete, expires_at=expires_at, tags=tags)
        return self._store(key, old, rec), rec

    def apply_remote(self, key: str, rec: bytes) -> bool:
        """Join a record written elsewhere; idempotent. Returns True if the state changed."""
        old = self._data.get(key)
        if rec[11] == 1 and (old is None or R.plain_successor(old, rec)):
            # the usual case, joined without decoding the vectors: a new key, or a later write of
            # a key only one slot wrote
            hlc, slot, counter = R.plain_version(rec)
            self.clock.observe(hlc)
            if counter > self._context.get(slot, 0):
                self._context[slot] = counter
            self._store(key, old, rec)
            return True
        self.clock.observe(R.record_hlc(rec))
        if old is None:
            new = rec
        else:
            new, concurrent = R.join(old, rec)
            if new == old:
                return False
            if concurrent:
                self.conflicts_resolved += 1
        ctx = self._context
        for slot, counter in R.record_vector_dict(rec).items():
            if counter > ctx.get(slot, 0):
                ctx[slot] = counter
        self._store(key, old, new)
        return True

    def apply_delta(self, ops: Iterable[Op]) -> int:
        """Apply ``since()`` output from another copy; returns how many keys changed. The same as
        ``apply_remote`` for each op, with the usual one -- a key this copy does not hold, whose
        record carries a one-slot vector -- inlined (a replica applies every write this way)."""
        data, ctx, store, remote = self._data, self._context, self._store, self.apply_remote
        top = self.clock.last
        changed = 0
        for _seq, key, rec in ops:
            if rec[11] != 1 or key in data:
                changed += remote(key, rec)
                continue
            hlc, slot, counter = R.plain_version(rec)
            top = max(top, hlc)
            if counter > ctx.get(slot, 0):
                ctx[slot] = counter
            store(key, None, rec)
            changed += 1
        self.clock.observe(top)
        return changed

    def merge(self, other: ShardState | Iterable[tuple[str, bytes]]) -> MergeResult:
        """CRDT join with another copy's state (or its ``(key, record)`` pairs)."""
        items = other._data.items() if isinstance(other, ShardState) else other
        before = self.conflicts_resolved
        changed = sum(self.apply_remote(key, rec) for key, rec in list(items))
        return MergeResult(changed, self.conflicts_resolved - before)

    def since(self, seq: int) -> list[Op] | None:
        """Operations after ``seq`` for a follower; None means it needs a full snapshot."""
        return self.log.since(seq)

    def _store(self, key: str, old: bytes | None, new: bytes) -> int:
        klen = len(key) if key.isascii() else len(key.encode("utf-8"))  # _klen, inlined: hot path
        if old is None and not new[10]:  # a new key, a plain record (no tags, expiry, tombstone)
            self._data[key] = new
            if self.dirty is not None:
                self.dirty.add(key)
            self._live_bytes += klen + len(new)
            self._entries += 1
            return self.log.append(key, new)
        if old is not None and old[10] & R.FLAG_TAGS:
            self._untag(key, old)
        if new[10] & R.FLAG_TAGS and not new[10] & R.FLAG_DELETED:
            for tag in R.record_tags(new):
                self._tagged.setdefault(tag, set()).add(key)
        if old is not None:
            if old[10] & R.FLAG_DELETED:
                self._tomb_bytes -= klen + len(old)
            else:
                self._live_bytes -= klen + len(old)
                self._entries -= 1
        self._data[key] = new
        if self.dirty is not None:
            self.dirty.add(key)
        seq = self.log.append(key, new)
        flags = new[10]
        if flags & R.FLAG_DELETED:
            self._tomb_bytes += klen + len(new)
            self._tombstones[key] = seq
        else:
            self._live_bytes += klen + len(new)
            self._entries += 1
            if old is not None and old[10] & R.FLAG_DELETED:
                del self._tombstones[key]
            if flags & R.FLAG_EXPIRY:
                heapq.heappush(self._expiry, (R.record_expires_at(new), key))
        return seq

    def _untag(self, key: str, rec: bytes) -> None:
        for tag in R.record_tags(rec):
            keys = self._tagged.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tagged[tag]

    def keys_with_tag(self, tag: str) -> list[str]:
        """Live keys whose entry carries ``tag`` (from an index: O(matches))."""
        return [k for k in self._tagged.get(tag, ()) if self.get_record(k) is not None]

    def keys_matching(self, pattern: str) -> list[str]:
        """Live keys matching the glob ``pattern`` (``*``, ``?``, ``[...]``; case-sensitive)."""
        match = fnmatch.fnmatchcase
        return [k for k in self.keys() if match(k, pattern)]

    # ------------------------------------------------------------ maintenance
    def purge_expired(self, limit: int | None = None) -> int:
        """Turn expired entries into tombstones (every copy does so alike); returns how many."""
        now, heap, done = self._now_ms(), self._expiry, 0
        while heap and heap[0][0] <= now and (limit is None or done < limit):
            exp, key = heapq.heappop(heap)
            rec = self._data.get(key)
            if rec is not None and not rec[10] & R.FLAG_DELETED and R.record_expires_at(rec) == exp:
                self._store(key, rec, R.tombstone_of(rec))
                done += 1
        return done

    def gc_tombstones(self, acked_seq: int) -> list[tuple[str, int]]:
        """Drop tombstones that every copy has acknowledged (stored at seq <= ``acked_seq``).

        Returns ``(key, hlc)`` of each dropped tombstone, for ``forget_tombstones``
        on the other copies.
        """
        dropped = [(k, s) for k, s in self._tombstones.items() if s <= acked_seq]
        out = []
        for key, _ in dropped:
            out.append((key, R.record_hlc(self._data[key])))
            self._drop(key)
        return out

    def forget_tombstones(self, items: Iterable[tuple[str, int]]) -> int:
        """Drop the tombstones the owner collected, unless a newer write replaced them here."""
        n = 0
        for key, hlc in items:
            rec = self._data.get(key)
            if rec is not None and rec[10] & R.FLAG_DELETED and R.record_hlc(rec) <= hlc:
                self._drop(key)
                n += 1
        return n

    def _drop(self, key: str) -> None:
        if self.dirty is not None:
            self.dirty.add(key)
        rec = self._data.pop(key)
        del self._tombstones[key]
        self._tomb_bytes -= _klen(key) + len(rec)

    def compact(self) -> dict[str, int]:
        """Give back memory the structures hold beyond what they need: Python dicts never shrink
        after deletes, the expiry heap keeps superseded items, the op-log keeps up to twice its
        capacity. Returns what was dropped."""
        stale = len(self._expiry)
        self._data = dict(self._data)
        self._tombstones = dict(self._tombstones)
        self._expiry = [(exp, k) for exp, k in self._expiry
                        if (rec := self._data.get(k)) is not None and not rec[10] & R.FLAG_DELETED
                        and R.record_expires_at(rec) == exp]
        heapq.heapify(self._expiry)
        log_before = len(self.log)
        self.log.trim()
        return {"expiry_items_dropped": stale - len(self._expiry), "log_ops_dropped": log_before - len(self.log)}

    def clear(self) -> None:
        """Forget every entry (versions seen are kept, so later writes still sort above)."""
        self._data.clear()
        self._tombstones.clear()
        self._expiry.clear()
        self._tagged.clear()
        self._live_bytes = self._tomb_bytes = self._entries = 0

    def take_dirty(self, limit: int | None = None, keys: Iterable[str] | None = None,
                   ) -> tuple[list[tuple[str, bytes]], list[str]]:
        """What changed since the last call, for the durable tier: ``(records, deleted keys)`` —
        tombstones and expired entries are records (so a reload resurrects nothing); collected
        tombstones are deletes. ``limit``: at most that many keys (the rest stay for the next
        call); ``keys``: only those of them that changed."""
        dirty = self.dirty or set()
        if keys is not None:
            keys = [k for k in keys if k in dirty]
            dirty.difference_update(keys)
            self.dirty = dirty
        elif limit is not None and len(dirty) > limit:
            keys = [dirty.pop() for _ in range(limit)]
            self.dirty = dirty
        else:
            keys, self.dirty = dirty, set()
        records, deletes = [], []
        for key in keys:
            rec = self._data.get(key)
            if rec is None:
                deletes.append(key)
            else:
                records.append((key, rec))
        return records, deletes

    def stored_keys(self) -> list[str]:
        """Every key with a stored record, tombstones included."""
        return list(self._data)

    def mark_dirty(self, keys: Iterable[str]) -> None:
        """Keys the durable tier did not take after all (its write failed): offer them again."""
        if self.dirty is not None:
            self.dirty.update(keys)

    # ------------------------------------------------------- snapshots/digest
    def snapshot(self) -> dict[str, Any]:
        """A msgpack-able copy of the whole state (for full sync and checkpoints)."""
        return {
            "slot": self.slot,
            "seq": self.log.last_seq,
            "context": dict(self._context),
            "records": list(self._data.items()),
        }

    def restore(self, snapshot: dict[str, Any]) -> MergeResult:
        """Join a snapshot into this state (a fresh state becomes a copy of it)."""
        for slot, counter in snapshot.get("context", {}).items():
            if counter > self._context.get(int(slot), 0):
                self._context[int(slot)] = counter
        return self.merge((k, r) for k, r in snapshot["records"])

    def digest(self) -> str:
        """An order-independent checksum of the records (equal states, equal digests)."""
        total = 0
        for key, rec in self.records().items():
            h = hashlib.blake2b(key.encode("utf-8") + b"\x00" + rec, digest_size=8).digest()
            total = (total + int.from_bytes(h, "big")) & 0xFFFFFFFFFFFFFFFF
        return f"{total:016x}"

    # -------------------------------------------------------------- accounting
    @property
    def record_bytes(self) -> int:
        """Keys and records of every entry, tombstones included: what a snapshot carries."""
        return self._live_bytes + self._tomb_bytes

    @property
    def bytes_used(self) -> int:
        """Accounted bytes of live entries: key + record + ENTRY_OVERHEAD each."""
        return self._live_bytes + self._entries * self.entry_overhead

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def stats(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "entries": self._entries,
            "bytes": self.bytes_used,
            "record_bytes": self.record_bytes,
            "tombstones": len(self._tombstones),
            "tombstone_bytes": self._tomb_bytes + len(self._tombstones) * self.entry_overhead,
            "seq": self.log.last_seq,
            "log_first_seq": self.log.first_seq,
            "conflicts_resolved": self.conflicts_resolved,
            "context": dict(self._context),
        }

    def validate(self) -> None:
        """Check every internal invariant; raises AssertionError. Tests call it after each step."""
        live = tomb = entries = 0
        for key, rec in self._data.items():
            assert isinstance(key, str) and isinstance(rec, bytes), key
            size = _klen(key) + len(rec)
            vector = R.record_vector_dict(rec)
            assert list(vector) == sorted(vector), f"{key}: vector not sorted"
            for slot, counter in vector.items():
                assert counter <= self._context.get(slot, 0), f"{key}: context behind the record"
            if rec[10] & R.FLAG_DELETED:
                tomb += size
                assert key in self._tombstones, f"{key}: tombstone not indexed"
            else:
                live += size
                entries += 1
                assert key not in self._tombstones, f"{key}: live entry indexed as tombstone"
        assert len(self._tombstones) == sum(1 for r in self._data.values() if r[10] & R.FLAG_DELETED)
        tagged: dict[str, set[str]] = {}
        for key, rec in self._data.items():
            if rec[10] & R.FLAG_TAGS and not rec[10] & R.FLAG_DELETED:
                for tag in R.record_tags(rec):
                    tagged.setdefault(tag, set()).add(key)
        assert tagged == self._tagged, "tag index drift"
        assert (live, tomb, entries) == (self._live_bytes, self._tomb_bytes, self._entries), "accounting drift"
