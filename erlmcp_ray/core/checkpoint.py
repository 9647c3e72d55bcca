"""Checkpoints (spec ``erlmcp_memory_recovery`` snapshots): what one is, how it is stored: pure.

A checkpoint is one consistent cut per shard — each owner packs its state under its lock: every
record with its version vector, the slot counters (``context``), its op-log position and epoch —
taken of every shard of every domain, with a manifest written last::

    checkpoint/<id>/<domain>/<shard>   msgpack {domain, shard, epoch, seq, context, records}
    checkpoint/<id>/manifest           JSON: the Checkpoint fields + per shard {blob, sha256, entries, bytes}

in the durable store, whose blobs carry a CRC-32 each. The manifest is the checkpoint: one without
it (a crash mid-way) is invisible and its shard blobs are swept by ``plan_retention``. Its
``checksum`` is the SHA-256 over the shard blobs' SHA-256s in manifest order, so one altered byte in
any shard changes it; a restore checks every shard against it before anything is restored.

Ids sort by time (``ckpt-<UTC yyyymmddThhmmss.ffffff>-<hex>``), so "newest first" is a sort.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import msgpack

from erlmcp_ray.errors import CorruptDataError

__all__ = ["PREFIX", "Checkpoint", "ShardEntry", "checkpoint_ids", "manifest_name", "new_id", "pack_shard", "plan_retention",
           "shard_blob_name", "unpack_shard"]

PREFIX = "checkpoint/"


@dataclass(frozen=True)
class ShardEntry:
    domain: str
    shard: int
    blob: str
    sha256: str
    entries: int
    bytes: int
    #: the owner's incarnation and op-log position at the cut (a delta recovery replays from there)
    incarnation: str = ""
    seq: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """A stored checkpoint (the spec's checkpoint record): what ``list_checkpoints`` returns."""

    id: str
    created_at: float  # seconds since the epoch (UTC)
    domains: tuple[str, ...]
    entries: int
    bytes: int
    checksum: str  # SHA-256 over the shards' SHA-256s, in manifest order
    shards: tuple[ShardEntry, ...] = ()

    @classmethod
    def build(cls, checkpoint_id: str, created_at: float, shards: list[ShardEntry]) -> Checkpoint:
        shards = sorted(shards, key=lambda s: (s.domain, s.shard))
        return cls(checkpoint_id, created_at, tuple(dict.fromkeys(s.domain for s in shards)),
                   sum(s.entries for s in shards), sum(s.bytes for s in shards), _checksum(shards), tuple(shards))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Checkpoint:
        try:
            d = json.loads(raw)
            shards = tuple(ShardEntry(**s) for s in d.pop("shards"))
            return cls(**{**d, "domains": tuple(d["domains"])}, shards=shards)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptDataError(f"checkpoint manifest {where} cannot be read: {exc}", where=where) from exc

    def verify(self) -> None:
        """The manifest agrees with itself (its checksum over its shard entries)."""
        if _checksum(list(self.shards)) != self.checksum:
            raise CorruptDataError(f"checkpoint {self.id}: the manifest's checksum does not match its shards",
                                   where=manifest_name(self.id))

    def summary(self) -> dict[str, Any]:
        """The spec's fields, JSON-able (without the per-shard list)."""
        return {"id": self.id, "created_at": self.created_at, "domains": list(self.domains),
                "entries": self.entries, "bytes": self.bytes, "checksum": self.checksum}


def _checksum(shards: list[ShardEntry]) -> str:
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.domain}\x00{s.shard}\x00{s.sha256}\n".encode())
    return h.hexdigest()


def new_id(now: float, rng_hex: str | None = None) -> str:
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    return f"ckpt-{stamp}-{rng_hex or secrets.token_hex(3)}"


def checkpoint_ids(blobs: list[str]) -> list[str]:
    """The ids of the finished checkpoints among stored blob names (a manifest is written last),
    newest first."""
    return sorted({n[len(PREFIX):].split("/", 1)[0] for n in blobs if n.startswith(PREFIX) and n.endswith("/manifest")},
                  reverse=True)


def manifest_name(checkpoint_id: str) -> str:
    return f"{PREFIX}{checkpoint_id}/manifest"


def shard_blob_name(checkpoint_id: str, domain: str, shard: int) -> str:
    return f"{PREFIX}{checkpoint_id}/{domain}/{shard}"


def pack_shard(domain: str, shard: int, epoch: int, snapshot: dict, incarnation: str = "") -> tuple[bytes, str]:
    """A shard's snapshot (``ShardState.snapshot()``) as stored, and its SHA-256."""
    data = msgpack.packb({"domain": domain, "shard": shard, "epoch": epoch, "seq": snapshot["seq"],
                          "incarnation": incarnation,
                          "context": snapshot["context"], "records": snapshot["records"]}, use_bin_type=True)
    return data, hashlib.sha256(data).hexdigest()


def unpack_shard(data: bytes, expected_sha256: str, where: str) -> dict:
    """The snapshot in ``data`` (as ``ShardState.restore`` takes it), after checking its SHA-256."""
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CorruptDataError(f"checkpoint shard {where} does not match its manifest's SHA-256", where=where)
    d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return {"slot": 0, "seq": d["seq"], "context": d["context"], "incarnation": d.get("incarnation", ""),
            "records": [(k, r) for k, r in d["records"]], "epoch": d["epoch"]}


def plan_retention(blobs: list[str], keep: int) -> list[str]:
    """Blob names to delete so only the ``keep`` newest checkpoints remain, plus the shard blobs of
    checkpoints that never got a manifest (older than the newest one that did)."""
    by_id: dict[str, list[str]] = {}
    for name in blobs:
        if name.startswith(PREFIX):
            by_id.setdefault(name[len(PREFIX):].split("/", 1)[0], []).append(name)
    complete = sorted((i for i, names in by_id.items() if manifest_name(i) in names), reverse=True)
    doomed = set(complete[keep:]) if keep > 0 else set(complete)
    newest = complete[0] if complete else None
    doomed |= {i for i in by_id if i not in complete and newest is not None and i < newest}
    out = []
    for i in sorted(doomed):
        names = by_id[i]
        # The manifest first: a checkpoint half deleted is invisible, never half restorable.
        out += [n for n in names if n.endswith("/manifest")] + sorted(n for n in names if not n.endswith("/manifest"))
    return out
