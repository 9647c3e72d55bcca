"""The packed form of one versioned entry: the unit that is stored, replicated and merged.

A record is one ``bytes`` object, so 100k entries cost 100k small objects and
not a tree of Python objects per entry (the memory target is ~200 B per entry,
as the spec quotes for Mnesia). Layout, big-endian so that byte order is
timestamp order::

    hlc      u64   hybrid logical clock timestamp of the write
    writer   u16   slot id of the copy that wrote it
    flags    u8    1 deleted (tombstone) | 2 has expiry | 4 has tags
    n        u8    number of version-vector entries
    n × (slot u16, counter u64)       the version vector, sorted by slot
    [expires_at u64]                  ms since the epoch, when flag 2
    [taglen u16, msgpack list of str] when flag 4
    value    the rest: the msgpack-encoded value (empty for a tombstone)

Merge is a join on two independent parts, which makes it a CRDT join by
construction (commutative, associative, idempotent): the version vector is the
pointwise max, and the content (everything but the vector) is the greater of
the two in the total order (hlc, writer, flags, tail bytes). Because the hybrid
logical clock gives a causal successor a larger timestamp, "greater content" is
the later write when one write saw the other, and last-writer-wins on
(timestamp, slot id) when they are concurrent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import msgpack

from erlmcp_ray.core.vclock import VersionVector

__all__ = [
    "FLAG_DELETED",
    "FLAG_EXPIRY",
    "FLAG_TAGS",
    "Record",
    "content_wins",
    "join",
    "pack",
    "pack_plain",
    "plain_successor",
    "plain_version",
    "record_counter",
    "record_expires_at",
    "record_hlc",
    "record_is_deleted",
    "record_tags",
    "record_value",
    "record_vector",
    "sole_slot",
    "tombstone_of",
]

FLAG_DELETED = 1
FLAG_EXPIRY = 2
FLAG_TAGS = 4

_HEAD = struct.Struct(">QHBB")
_SLOT = struct.Struct(">HQ")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_HEAD_LEN = _HEAD.size  # 12
_ORDER_LEN = 10  # hlc + writer: compared first, and usually decisive
MAX_SLOT = 0xFFFF


def pack(
    vector: dict[int, int] | VersionVector,
    hlc: int,
    writer: int,
    value: bytes = b"",
    *,
    deleted: bool = False,
    expires_at: int | None = None,
    tags: tuple[str, ...] | list[str] = (),
) -> bytes:
    """Build a record. ``vector`` must be sorted by slot (VersionVector is)."""
    flags = FLAG_DELETED if deleted else 0
    parts = [b""]
    for slot, counter in vector.items():
        parts.append(_SLOT.pack(slot, counter))
    if expires_at is not None:
        flags |= FLAG_EXPIRY
        parts.append(_U64.pack(expires_at))
    if tags:
        flags |= FLAG_TAGS
        blob = msgpack.packb(list(tags), use_bin_type=True)
        parts.append(_U16.pack(len(blob)))
        parts.append(blob)
    parts[0] = _HEAD.pack(hlc, writer, flags, len(vector))
    parts.append(b"" if deleted else value)
    return b"".join(parts)


_PLAIN = struct.Struct(">QHBBHQ")  # the head and a one-slot vector


def pack_plain(hlc: int, writer: int, counter: int, value: bytes) -> bytes:
    """``pack({writer: counter}, hlc, writer, value)``: a live record with no expiry and no tags
    whose vector names only its writer (most writes), in one struct call."""
    return _PLAIN.pack(hlc, writer, 0, 1, writer, counter) + value


def plain_version(raw: bytes) -> tuple[int, int, int]:
    """``(hlc, slot, counter)`` of a record whose vector has one entry (``raw[11] == 1``)."""
    hlc, _writer, _flags, _n, slot, counter = _PLAIN.unpack_from(raw, 0)
    return hlc, slot, counter


def plain_successor(old: bytes, new: bytes) -> bool:
    """Whether ``join(old, new)`` is ``(new, False)`` by the cheap rule: both vectors name only one
    slot, the same, ``new``'s counter is at least ``old``'s (``new`` descends from ``old``) and
    ``new``'s content is greater (a later write of that slot: the usual overwrite). False says
    nothing: ``join`` decides. The vector entry's bytes compare as numbers (big-endian)."""
    return (old[11] == 1 == new[11] and new[:_ORDER_LEN] > old[:_ORDER_LEN] and new[12:14] == old[12:14]
            and new[14:22] >= old[14:22])


def sole_slot(raw: bytes) -> int:
    """The slot named by a record whose vector has one entry (``raw[11] == 1``)."""
    return _U16.unpack_from(raw, _HEAD_LEN)[0]


def _tail_offset(raw: bytes) -> int:
    """Offset of the first byte after the version vector."""
    return _HEAD_LEN + raw[11] * 10


def _value_offset(raw: bytes) -> int:
    off = _HEAD_LEN + raw[11] * 10
    flags = raw[10]
    if flags & FLAG_EXPIRY:
        off += 8
    if flags & FLAG_TAGS:
        off += 2 + _U16.unpack_from(raw, off)[0]
    return off


def record_hlc(raw: bytes) -> int:
    return _U64.unpack_from(raw, 0)[0]


def record_is_deleted(raw: bytes) -> bool:
    return bool(raw[10] & FLAG_DELETED)


def record_value(raw: bytes) -> bytes:
    """The encoded value (a copy; ``b""`` for a tombstone)."""
    return raw[_value_offset(raw) :]


def record_expires_at(raw: bytes) -> int | None:
    if raw[10] & FLAG_EXPIRY:
        return _U64.unpack_from(raw, _tail_offset(raw))[0]
    return None


def record_tags(raw: bytes) -> tuple[str, ...]:
    if not raw[10] & FLAG_TAGS:
        return ()
    off = _tail_offset(raw) + (8 if raw[10] & FLAG_EXPIRY else 0)
    n = _U16.unpack_from(raw, off)[0]
    return tuple(msgpack.unpackb(raw[off + 2 : off + 2 + n], raw=False))


def record_vector_dict(raw: bytes) -> dict[int, int]:
    return dict(_SLOT.iter_unpack(raw[_HEAD_LEN : _tail_offset(raw)]))


def record_vector(raw: bytes) -> VersionVector:
    return VersionVector._trusted(record_vector_dict(raw))


def record_counter(raw: bytes, slot: int) -> int:
    """This record's version-vector counter for ``slot`` (0 if absent)."""
    for i in range(raw[11]):
        s, c = _SLOT.unpack_from(raw, _HEAD_LEN + 10 * i)
        if s == slot:
            return c
    return 0


def content_wins(a: bytes, b: bytes) -> bool:
    """True when ``a``'s content is greater than ``b``'s in the total order."""
    ha, hb = a[:_ORDER_LEN], b[:_ORDER_LEN]
    if ha != hb:
        return ha > hb
    return (a[10:11] + a[_tail_offset(a) :]) > (b[10:11] + b[_tail_offset(b) :])


def _with_vector(raw: bytes, vector: dict[int, int]) -> bytes:
    head = _HEAD.pack(_U64.unpack_from(raw, 0)[0], _U16.unpack_from(raw, 8)[0], raw[10], len(vector))
    return b"".join([head, *(_SLOT.pack(s, c) for s, c in sorted(vector.items())), raw[_tail_offset(raw) :]])


def join(a: bytes, b: bytes) -> tuple[bytes, bool]:
    """The CRDT join of two records of one key, and whether they were concurrent."""
    if a == b:
        return a, False
    va, vb = record_vector_dict(a), record_vector_dict(b)
    a_ahead = any(c > vb.get(s, 0) for s, c in va.items())
    b_ahead = any(c > va.get(s, 0) for s, c in vb.items())
    winner = a if content_wins(a, b) else b
    if not (a_ahead and b_ahead):
        # One vector descends the other (the usual case): the max vector is
        # that one's, and with a causally ordered clock the winner owns it.
        top = a if not b_ahead else b
        if winner is top or va == vb:
            return winner, False
        return _with_vector(winner, va if top is a else vb), False
    merged = dict(va)
    for s, c in vb.items():
        if c > merged.get(s, 0):
            merged[s] = c
    return _with_vector(winner, merged), True


def tombstone_of(raw: bytes) -> bytes:
    """The tombstone an expired record turns into: same version, flagged deleted, no value.

    It sorts above the record it replaces (flags grow), so every copy that purges
    on its own converges on the same bytes.
    """
    off = _value_offset(raw)
    return raw[:10] + bytes([raw[10] | FLAG_DELETED]) + raw[11:off]


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record, for inspection and tests (the hot paths use the raw functions)."""

    vector: VersionVector
    hlc: int
    writer: int
    value: bytes = b""
    deleted: bool = False
    expires_at: int | None = None
    tags: tuple[str, ...] = field(default=())

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        hlc, writer, flags, _ = _HEAD.unpack_from(raw, 0)
        return cls(
            vector=record_vector(raw),
            hlc=hlc,
            writer=writer,
            value=record_value(raw),
            deleted=bool(flags & FLAG_DELETED),
            expires_at=record_expires_at(raw),
            tags=record_tags(raw),
        )

    def pack(self) -> bytes:
        return pack(
            self.vector,
            self.hlc,
            self.writer,
            self.value,
            deleted=self.deleted,
            expires_at=self.expires_at,
            tags=self.tags,
        )
