"""The running layout: the backend the persistence selector chose for each domain that sets none.

A domain's backend decides its copies per shard and its durable mode (``MemoryConfig.with_backends``).
The user's config never changes while a system runs; what the selector chose is kept beside it,
as a ``Layout``:

- in Ray's key-value store (``layout_key``), read by every actor constructor: a shard copy that Ray
  restarts reruns its constructor with the arguments of the first start, and must take the layout
  as it is now instead;
- in the durable store (blob ``LAYOUT_BLOB``), read by ``start()``: after a full restart a domain
  that was moved to disk must come back on disk, from its stored data.

It also holds the **topology**: which slot owns each shard that failed over, and under which epoch
(``owners``; a shard not listed is owned by slot 0 under the epoch its copies hold). The supervisor
changes it on a promotion; clients route by it, and a copy Ray restarts reads its role there.

``generation`` grows with every change; clients learn it from the coordinator's poll answers and
then fetch the layout again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from erlmcp_ray.config import Backend, MemoryConfig

__all__ = ["LAYOUT_BLOB", "Layout", "layout_key"]

LAYOUT_BLOB = "selector/layout"


def layout_key(namespace: str) -> bytes:
    return f"erlmcp:{namespace}:layout".encode()


@dataclass(frozen=True)
class Layout:
    generation: int = 0
    #: domain -> the backend the selector chose (only domains without an explicit backend)
    selected: dict[str, Backend] = field(default_factory=dict)
    #: domain -> (copies per shard, durable mode) that choice means: what a restarted copy reads
    shape: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: (domain, shard) -> (owner slot, epoch), for shards whose owner is not slot 0 or whose epoch the
    #: supervisor moved (a failover)
    owners: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def owner(self, domain: str, shard: int) -> int:
        """The slot that owns ``domain``/``shard``."""
        return self.owners.get((domain, shard), (0, 0))[0]

    def epoch(self, domain: str, shard: int) -> int:
        """The shard's epoch as the topology has it (0: never failed over)."""
        return self.owners.get((domain, shard), (0, 0))[1]

    def with_owner(self, domain: str, shard: int, slot: int, epoch: int) -> Layout:
        """The next generation, with ``slot`` owning ``domain``/``shard`` from ``epoch`` on."""
        return replace(self, generation=self.generation + 1, owners={**self.owners, (domain, shard): (slot, epoch)})

    def config(self, base: MemoryConfig) -> MemoryConfig:
        """``base`` (the user's config) as running."""
        return base.with_backends(self.selected)

    def with_choice(self, base: MemoryConfig, domain: str, backend: Backend) -> Layout:
        """The next generation, with ``domain`` on ``backend``."""
        return Layout(self.generation + 1, {**self.selected, domain: Backend(backend)},
                      owners=self.owners).for_config(base)

    def encode(self) -> bytes:
        return json.dumps({"generation": self.generation,
                           "selected": {d: b.value for d, b in sorted(self.selected.items())},
                           "shape": {d: list(s) for d, s in sorted(self.shape.items())},
                           "owners": [[d, sh, slot, ep] for (d, sh), (slot, ep) in sorted(self.owners.items())]}).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Layout:
        """The layout in ``raw``; the empty layout for None (nothing chosen yet)."""
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(int(data["generation"]), {d: Backend(b) for d, b in data["selected"].items()},
                   {d: (int(c), str(m)) for d, (c, m) in data.get("shape", {}).items()},
                   {(str(d), int(sh)): (int(slot), int(ep)) for d, sh, slot, ep in data.get("owners", [])})

    def for_config(self, base: MemoryConfig) -> Layout:
        """Only the choices that still apply to ``base`` (domains that exist and set no backend),
        with the shape each means under ``base``."""
        keep = {d: b for d, b in self.selected.items() if d in base.domains and base.domains[d].backend is None}
        running = base.with_backends(keep)
        shape = {d: (running.replication_factor_for(d), running.durable_mode_for(d).value) for d in keep}
        owners = {(d, sh): o for (d, sh), o in self.owners.items()
                  if d in base.domains and sh < base.domains[d].shards}
        return Layout(self.generation, keep, shape, owners)
