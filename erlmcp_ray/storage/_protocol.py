"""The durable store protocol (spec L3): what a shard and the checkpoint index need from a disk.

A store keeps, per ``(domain, shard)``, the packed records of its entries (``core.record``:
tombstones and expiry included, so a reload never resurrects a delete or an expired entry) and
the shard's **epoch**. Every write carries the writer's epoch and is refused atomically
(``StaleEpochError``) when the shard is fenced at a higher one: a deposed owner can never
overwrite its successor. Beside the shards, named blobs (checkpoints).

Every stored record and blob carries a CRC-32 of its bytes; a load that finds one that does not
match raises ``CorruptDataError`` naming the shard (or blob) and the file or key.

``check_store(factory)`` in ``erlmcp_ray.testing`` holds an implementation to this contract.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

from erlmcp_ray.errors import CorruptDataError

__all__ = ["DurableStore", "ShardImage", "checked", "crc"]


@dataclass
class ShardImage:
    """What a store holds of one shard."""

    epoch: int = 0  # 0: never written or fenced
    records: dict[str, bytes] = field(default_factory=dict)  # key -> packed record


class DurableStore(Protocol):
    #: where the data lives, for error messages ("sqlite:/path/file.db", "redis://host:port/0")
    location: str

    def write_batch(self, domain: str, shard: int, epoch: int, records: list[tuple[str, bytes]],
                    deletes: list[str] = ()) -> int:
        """Store ``records`` (key, packed record) and drop ``deletes`` (collected tombstones) in one
        atomic step under ``epoch``: refused with ``StaleEpochError`` if the shard is fenced higher;
        a higher ``epoch`` fences it. Returns the shard's epoch after the write."""

    def fence(self, domain: str, shard: int, epoch: int) -> int:
        """Raise the shard's epoch to ``epoch`` (``StaleEpochError`` if it is higher already)."""

    def epoch(self, domain: str, shard: int) -> int:
        """The shard's epoch (0 when never written or fenced)."""

    def load_shard(self, domain: str, shard: int) -> ShardImage:
        """Every stored record of the shard, checksums verified, and its epoch."""

    def shards(self) -> list[tuple[str, int]]:
        """Every ``(domain, shard)`` the store holds anything of."""

    def put_blob(self, name: str, data: bytes) -> None: ...

    def get_blob(self, name: str) -> bytes | None:
        """The blob, checksum verified, or None."""

    def list_blobs(self, prefix: str = "") -> list[str]:
        """Names starting with ``prefix``, sorted."""

    def delete_blob(self, name: str) -> bool: ...

    def purge(self) -> None:
        """Delete everything this store holds."""

    def close(self) -> None: ...


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def checked(data: bytes, expected: int, where: str, location: str) -> bytes:
    """``data`` if its CRC-32 is ``expected``, else ``CorruptDataError`` naming where it is."""
    if crc(data) != expected:
        raise CorruptDataError(f"corrupt durable data at {where} in {location}: checksum mismatch "
                               f"(stored crc {expected:#010x}, computed {crc(data):#010x})", where=where)
    return data
