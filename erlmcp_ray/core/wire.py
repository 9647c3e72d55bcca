"""The messages clients and actors exchange, as named types (no Ray here).

Every message is a ``NamedTuple``, so its fields have names. The two that exist
by the hundred thousand — ``WriteOp`` (every buffered write) and ``PollMessage``
(every logged notification) — are built as plain tuples in the same field order
(``write_op``, and ``InvalidationLog``): an instance of a tuple subclass stays
tracked by the garbage collector, and 100k buffered WriteOps made the client's
gen-2 collections 20× longer (bench_ops: 1.4 s of pauses in 6 s); pickling one
also costs ~7× a plain tuple. Readers unpack them, or index by the field order here.

    WriteOp       one write of a batch: key, encoded value (None deletes), ttl, tags, ...
    WriteAnswer   the owner's answer to a batch of writes
    ReadAnswer    a copy's answer to a read
    Progress      how far an owner applied, replicated and published (what flush waits on)
    PollMessage   one coordinator message (a write's notification or an invalidation)
    PollAnswer    the coordinator's answer to a long poll

``WriteAnswer.items`` holds, per op, the record the owner wrote (a strong or
bounded write: replicas apply these, ``full=True``) or the HLC timestamp it gave
the op (a write-behind batch). An op the owner did not write is named in
``refused`` (memory pressure: the domain is full) or ``rejected`` (the op itself
is bad); its item is ``REFUSED`` / ``-1`` and the other ops of the batch are
written as usual, so one bad op never costs a good one.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "OK", "REFUSED", "SKIPPED", "STALE",
    "PollAnswer", "PollMessage", "Progress", "ReadAnswer", "WriteAnswer", "WriteOp", "write_op",
]

#: ReadAnswer.status: the copy answered / it is staler than the read allows.
OK, STALE = "ok", "stale"
#: In WriteAnswer.items (full answers), in place of the record of an op that was not written.
REFUSED = "refused"
#: In WriteAnswer.items, for a resent op that a newer version made moot (``WriteOp.resend_of``).
SKIPPED = "skipped"


class WriteOp(NamedTuple):
    key: str
    data: bytes | None  # the msgpack-encoded value; None deletes
    ttl_ms: int | None = None
    tags: tuple[str, ...] = ()
    #: relaxed coherence: other clients' caches are not told to drop their copies
    relaxed: bool = False
    #: a resend of a write an owner applied with this HLC and then lost in a restart: apply it
    #: only if the stored version is older, so a resend never overwrites a newer write (0: always)
    resend_of: int = 0


def write_op(key: str, data: bytes | None, ttl_ms: int | None = None, tags: tuple[str, ...] = (),
             relaxed: bool = False, resend_of: int = 0) -> tuple:
    """A ``WriteOp`` as a plain tuple (see the module docstring for why)."""
    return (key, data, ttl_ms, tags, relaxed, resend_of)


class WriteAnswer(NamedTuple):
    epoch: int
    seq: int  # the owner's op-log position after the batch
    items: list  # per op: (key, record | None | REFUSED | SKIPPED) when full, else hlc (0 nothing, -1 not written)
    incarnation: str  # the owner process's id: a new one means Ray restarted it
    refused: list  # [(op index, message)]: refused under memory pressure
    rejected: tuple | list = ()  # [(op index, message)]: the op was invalid (never sent by a validating client)
    #: True: not the owner's answer -- a copy cut off from its owner (a partition, a failover under
    #: way) kept the writes in its stash; the supervisor's heal merges them into the owner
    stashed: bool = False


class ReadAnswer(NamedTuple):
    status: str  # OK or STALE
    record: bytes | None  # the live record, or None
    staleness_ms: float  # how far behind the owner this copy may be (0 at the owner)
    incarnation: str


class Progress(NamedTuple):
    incarnation: str
    applied: int
    replicated: int
    published: int


class PollMessage(NamedTuple):
    seq: int
    domain: str
    key: str
    hlc: int  # the version it announces; 0: drop whatever is cached
    deleted: bool
    record: bytes | None  # the record, for domains the client asked values of
    reason: str  # core.invalidation WRITE / RELAXED / INVALIDATE / TAG / PATTERN


class PollAnswer(NamedTuple):
    epoch: int
    last_seq: int
    gap: bool
    messages: list  # [PollMessage]
    layout: int = 0  # the running layout's generation (core.layout): a new one means refetch it
