"""What a client needs to know, read once from the system's config: typed, named, frozen.

``ClientSettings`` holds the knobs (some from ``MemoryConfig.client`` and
``cache_coordinator``, some fixed here with the reason next to them); ``DomainRoute`` is
one domain as the client routes it. Nothing here reads the config again later.
"""

from __future__ import annotations

from dataclasses import dataclass

from erlmcp_ray.config import CoherenceLevel, Consistency, MemoryConfig
from erlmcp_ray.core.layout import Layout

__all__ = ["ClientSettings", "DomainRoute"]


@dataclass(frozen=True)
class DomainRoute:
    name: str
    shards: int
    copies: int  # owner + replicas
    consistency: Consistency  # the domain's default
    staleness_ms: float  # bounded_stale window
    min_insync: int  # copies that must hold a strong write
    default_ttl_ms: int | None
    max_bytes: int  # named in memory-pressure errors
    invalidate_source: bool  # an invalidation also deletes the entry in the shards
    #: the slot that owns each shard (the supervisor's topology: not slot 0 after a failover)
    owners: tuple[int, ...] = ()

    def owner(self, shard: int) -> int:
        return self.owners[shard] if self.owners else 0

    def replicas(self, shard: int) -> list[int]:
        """The slots of ``shard`` that are not its owner."""
        owner = self.owner(shard)
        return [slot for slot in range(self.copies) if slot != owner]


@dataclass(frozen=True)
class ClientSettings:
    call_timeout_s: float = 30.0
    poll_timeout_s: float = 1.0
    l0_entries: int = 256
    l1_max_bytes: int = 64 * 1024 * 1024
    write_behind_interval_s: float = 0.002
    write_behind_max_batch: int = 1024
    lease_s: float = 10.0
    invalidation_timeout_s: float = 5.0
    coherence: CoherenceLevel = CoherenceLevel.EVENTUAL
    #: Cached reads are served only while a coordinator poll answered within
    #: ``trust_factor × min(lease, invalidation_timeout)``: shorter than a synchronous
    #: invalidation's timeout, so a client that ``invalidate()`` reports as missing has
    #: stopped serving its cache before ``invalidate()`` returns.
    trust_factor: float = 0.8
    #: A write-behind batch is retried this often (with growing pauses: ~12 s in all, enough for
    #: Ray to restart an owner's process) before its writes are reported failed at ``flush()``.
    max_batch_attempts: int = 40
    #: A replica that has not heard from its owner for this long stops serving eventual reads.
    replica_fresh_limit_ms: float = 5000.0
    #: For this long after writing a key, this client reads it from the owner on a cache miss.
    own_write_window_s: float = 5.0
    #: How often the write-behind thread asks owners how far they replicated its writes.
    confirm_interval_s: float = 0.05

    @property
    def trust_s(self) -> float:
        return min(self.lease_s, self.invalidation_timeout_s) * self.trust_factor

    @classmethod
    def from_config(cls, cfg: MemoryConfig) -> ClientSettings:
        cc, co = cfg.client, cfg.cache_coordinator
        return cls(
            call_timeout_s=cc.call_timeout_s, poll_timeout_s=cc.poll_timeout_s, l0_entries=cc.l0_entries,
            l1_max_bytes=cc.l1_max_bytes, write_behind_interval_s=cc.write_behind_interval_ms / 1000.0,
            write_behind_max_batch=cc.write_behind_max_batch, lease_s=co.lease_ms / 1000.0,
            invalidation_timeout_s=co.invalidation_timeout / 1000.0, coherence=co.coherence_level,
        )


def domain_routes(cfg: MemoryConfig, layout: Layout | None = None) -> dict[str, DomainRoute]:
    """Each domain as routed under ``cfg`` (the running config) and ``layout``'s topology."""
    out = {}
    for name in cfg.domains:
        d = cfg.domain(name)
        out[name] = DomainRoute(
            name=name, shards=d.shards, copies=cfg.replication_factor_for(name),
            consistency=cfg.consistency_for(name), staleness_ms=float(d.staleness_ms),
            min_insync=cfg.min_insync_for(name),
            default_ttl_ms=None if d.default_ttl is None else int(d.default_ttl * 1000),
            max_bytes=d.max_bytes, invalidate_source=bool(d.invalidate_source),
            owners=tuple(layout.owner(name, shard) for shard in range(d.shards)) if layout else (),
        )
    return out
