"""The partition rule of the fault seam: which processes cannot reach which.

A process is named by its *place*: a shard copy by its actor name (``erlmcp:shard:{domain}:{shard}:
{slot}``), the supervisor and coordinator by theirs (``erlmcp:supervisor``, ``erlmcp:coordinator``), a
client by ``client:{client_id}``. A rule lists two or more *sides*, each a list of ``fnmatch``
patterns over places. A message from one place to another is dropped when both match a side and
the sides differ; a place no side matches reaches everyone (Ray's own control plane, say).

Pure: ``erlmcp_ray._faults`` keeps the rule in Ray's key-value store, where every process reads it.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable

__all__ = ["PartitionRule", "partition_key"]


def partition_key(namespace: str) -> bytes:
    return f"erlmcp:{namespace}:faults:partition".encode()


class PartitionRule:
    def __init__(self, sides: Iterable[Iterable[str]]) -> None:
        self.sides: tuple[tuple[str, ...], ...] = tuple(tuple(str(p) for p in side) for side in sides)
        if not self.sides:
            return
        if len(self.sides) < 2:
            raise ValueError(f"a partition needs at least two sides, got {len(self.sides)}")
        seen: dict[str, int] = {}
        for i, side in enumerate(self.sides):
            for pattern in side:
                if seen.setdefault(pattern, i) != i:
                    raise ValueError(f"{pattern!r} is on both side {seen[pattern]} and side {i}")
        self._memo: dict[str, int | None] = {}

    def side_of(self, place: str) -> int | None:
        """The first side with a pattern matching ``place``, or None."""
        side = self._memo.get(place, -1)
        if side == -1:
            side = next((i for i, pats in enumerate(self.sides)
                         if any(fnmatch.fnmatchcase(place, p) for p in pats)), None)
            self._memo[place] = side
        return side

    def blocks(self, src: str, dst: str) -> bool:
        if not self.sides:
            return False
        a, b = self.side_of(src), self.side_of(dst)
        return a is not None and b is not None and a != b

    def encode(self) -> bytes:
        return json.dumps([list(s) for s in self.sides]).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> PartitionRule:
        return cls(json.loads(raw) if raw else [])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartitionRule) and other.sides == self.sides

    def __hash__(self) -> int:
        return hash(self.sides)

    def __repr__(self) -> str:
        return f"PartitionRule({[list(s) for s in self.sides]})"
