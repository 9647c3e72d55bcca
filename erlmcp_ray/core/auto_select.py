"""The persistence selector's periodic evaluation (spec ``persistence_selector.auto_select``): pure.

Every ``evaluation_interval`` the supervisor actor counts, for each domain whose backend the user
did not set, the bytes its owners hold and the reads and writes its copies served since the last
evaluation, and hands them to ``AutoSelector.evaluate``. It answers with a ``Migrate`` effect per
domain whose recommended backend (``persistence_selector.recommend_strategy`` over those figures,
the domain's ``durability_requirement`` and the cluster's topology) differs from its current one;
the actor carries them out (``actors/supervisor.py``) and reports back with ``migrated``.

Two guards keep a domain from flapping between backends on thin evidence:

- a domain that served fewer than ``min_ops`` operations since the last evaluation keeps its
  backend (a read ratio over a handful of operations means nothing);
- the same recommendation must come out of ``confirmations`` evaluations in a row before it
  is acted on (1 = at once).

Counts are cumulative per shard copy and restart from 0 when Ray restarts a copy; a count that
went down is taken as counted from 0 (``_delta``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erlmcp_ray.config import Backend, DurabilityRequirement
from erlmcp_ray.persistence_selector import recommend_strategy

__all__ = ["AutoSelector", "DomainObservation", "Migrate"]


@dataclass(frozen=True)
class DomainObservation:
    """One domain as measured now: live bytes in its owners, cumulative reads and writes."""

    domain: str
    data_bytes: int
    reads: int
    writes: int


@dataclass(frozen=True)
class Migrate:
    """Effect: move ``domain`` from ``current`` to ``target`` (``reason`` says why, for the log)."""

    domain: str
    current: Backend
    target: Backend
    reason: str
    read_ratio: float
    data_bytes: int


@dataclass
class _Seen:
    reads: int = 0
    writes: int = 0
    pending: Backend | None = None  # a recommendation not yet confirmed
    streak: int = 0
    last: dict = field(default_factory=dict)  # what the last evaluation found, for current_strategies


class AutoSelector:
    def __init__(self, current: dict[str, Backend], durability: dict[str, DurabilityRequirement], *,
                 durable_tier: bool, min_ops: int = 100, confirmations: int = 1) -> None:
        """``current``: the backend of every domain the selector manages; ``durability``: their
        ``durability_requirement``; ``durable_tier``: whether a durable store is configured (without
        one, disk is never chosen: memory stays)."""
        if set(current) != set(durability):
            raise ValueError("current and durability must name the same domains")
        if min_ops < 1 or confirmations < 1:
            raise ValueError("min_ops and confirmations must be >= 1")
        self.current = dict(current)
        self._durability = dict(durability)
        self._durable_tier = durable_tier
        self._min_ops = min_ops
        self._confirmations = confirmations
        self._seen = {d: _Seen() for d in current}

    def evaluate(self, observations: list[DomainObservation], topology: str) -> list[Migrate]:
        """The migrations these observations call for (``topology``: single_node | multi_node)."""
        out = []
        for obs in observations:
            seen = self._seen.get(obs.domain)
            if seen is None:
                continue  # a domain with an explicit backend: never migrated
            reads, writes = _delta(obs.reads, seen.reads), _delta(obs.writes, seen.writes)
            seen.reads, seen.writes = obs.reads, obs.writes
            current = self.current[obs.domain]
            ops = reads + writes
            if ops < self._min_ops:
                seen.pending, seen.streak = None, 0
                seen.last = {"ops": ops, "read_ratio": None, "data_bytes": obs.data_bytes, "recommended": None,
                             "reason": f"{ops} operations since the last evaluation (< {self._min_ops}): kept"}
                continue
            ratio = reads / ops
            strategy = recommend_strategy({
                "data_size": obs.data_bytes, "read_ratio": ratio, "cluster_topology": topology,
                "durability_requirement": self._durability[obs.domain].value})
            target, reason = strategy.backend, strategy.reason
            if target is Backend.DISK and not self._durable_tier:
                target, reason = current, f"{reason}; but durable.kind is none, so the backend stays"
            seen.last = {"ops": ops, "read_ratio": ratio, "data_bytes": obs.data_bytes,
                         "recommended": target, "reason": reason}
            if target is current:
                seen.pending, seen.streak = None, 0
                continue
            seen.streak = seen.streak + 1 if seen.pending is target else 1
            seen.pending = target
            if seen.streak >= self._confirmations:
                out.append(Migrate(obs.domain, current, target, reason, ratio, obs.data_bytes))
        return out

    def migrated(self, domain: str, backend: Backend) -> None:
        """The actor moved ``domain`` to ``backend`` (after ``evaluate`` or on an operator's request)."""
        if domain not in self.current:
            raise KeyError(domain)
        self.current[domain] = backend
        seen = self._seen[domain]
        seen.pending, seen.streak = None, 0

    def last_evaluation(self, domain: str) -> dict:
        """What the last evaluation found for ``domain`` (empty before the first)."""
        return dict(self._seen[domain].last)


def _delta(now: int, before: int) -> int:
    return now - before if now >= before else now
