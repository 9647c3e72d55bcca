"""What callers get back: ``Version`` (from ``put``) and ``Entry`` (from ``get_entry``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from erlmcp_ray.core import record as R
from erlmcp_ray.core.codec import decode_value
from erlmcp_ray.core.hlc import hlc_physical_ms
from erlmcp_ray.core.vclock import VersionVector

__all__ = ["CacheInvalidated", "Entry", "MemoryUpdate", "Subscription", "Version"]


@dataclass(frozen=True, slots=True)
class Version:
    """The version a write was given: vector, HLC timestamp and the writing slot."""

    vector: VersionVector
    timestamp: int  # hybrid logical clock; ``wall_ms`` is its physical part
    writer: int

    @property
    def wall_ms(self) -> int:
        return hlc_physical_ms(self.timestamp)

    @classmethod
    def from_record(cls, raw: bytes) -> Version:
        return cls(R.record_vector(raw), R.record_hlc(raw), R._U16.unpack_from(raw, 8)[0])


@dataclass(frozen=True, slots=True)
class Entry:
    """One live entry as stored: the decoded value and its metadata."""

    key: str
    value: Any
    version: Version
    tags: tuple[str, ...] = ()
    expires_at_ms: int | None = None

    @property
    def timestamp(self) -> int:
        return self.version.timestamp

    @classmethod
    def from_record(cls, key: str, raw: bytes) -> Entry:
        return cls(
            key=key,
            value=decode_value(R.record_value(raw)),
            version=Version.from_record(raw),
            tags=R.record_tags(raw),
            expires_at_ms=R.record_expires_at(raw),
        )


@dataclass(frozen=True, slots=True)
class MemoryUpdate:
    """Delivered to subscribers: a key of ``domain`` was written (or deleted)."""

    domain: str
    key: str
    value: Any  # None when deleted
    version: Version
    deleted: bool = False

    @classmethod
    def from_record(cls, domain: str, key: str, raw: bytes) -> MemoryUpdate:
        deleted = R.record_is_deleted(raw)
        return cls(
            domain=domain,
            key=key,
            value=None if deleted else decode_value(R.record_value(raw)),
            version=Version.from_record(raw),
            deleted=deleted,
        )


@dataclass(frozen=True, slots=True)
class MemoryConflict:
    """Delivered to subscribers when a partition healed: this version of ``domain``/``key`` was
    written on one side, a concurrent one on the other, and it lost (last writer wins on the hybrid
    logical clock; the winner arrives as a ``MemoryUpdate``). ``value`` is the losing value (None
    for a losing delete)."""

    domain: str
    key: str
    value: Any
    version: Version
    deleted: bool = False

    @classmethod
    def from_record(cls, domain: str, key: str, raw: bytes) -> MemoryConflict:
        deleted = R.record_is_deleted(raw)
        return cls(domain=domain, key=key, value=None if deleted else decode_value(R.record_value(raw)),
                   version=Version.from_record(raw), deleted=deleted)


@dataclass(frozen=True, slots=True)
class CacheInvalidated:
    """Delivered to invalidation subscribers: cached copies of ``domain``/``key`` were dropped.

    ``reason``: "write" (a write made them stale), "invalidate" (explicit), "tag", "pattern".
    ``timestamp`` is the HLC of the write that caused it (0 for an explicit invalidation).
    """

    domain: str
    key: str
    reason: str
    timestamp: int = 0
    seq: int = 0

    @classmethod
    def of(cls, domain: str, key: str, reason: str, record: bytes | None, seq: int) -> CacheInvalidated:
        return cls(domain, key, reason, 0 if record is None else R.record_hlc(record), seq)


class Subscription:
    """Returned by ``subscribe`` / ``subscribe_invalidation``; ``cancel()`` stops the deliveries."""

    def __init__(self, cancel: Callable[[], Any], sub_id: str) -> None:
        self._cancel = cancel
        self.id = sub_id
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._cancel()

    def __repr__(self) -> str:
        return f"Subscription({self.id!r}, active={self.active})"
