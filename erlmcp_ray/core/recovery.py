"""Recovery planning (spec "Recovery Procedures"): which mode each shard gets, and the progress: pure.

The spec's modes, per shard, in this port's terms:

    full      join every source into the owner — each live replica's state, the durable store's rows,
              the latest checkpoint's image — by the CRDT join (nothing acknowledged is lost: a join
              only ever keeps the newer version), then every replica takes the owner's state
    delta     the latest checkpoint's image plus the owner's op-log since it, replacing the owner's
              state (possible only while that log still reaches back to the checkpoint, in the same
              incarnation of the owner)
    peer      every replica replaced by the live owner's state (one live peer's snapshot)
    snapshot  the latest checkpoint only, replacing; what changed since it is dropped, and counted
    auto      full when there is anything to join beyond the owner (a live replica, stored rows or a
              checkpoint), else peer; the reason is reported

and the steps every run goes through: detect (which copies answer), assess (the plan), reconstruct
(per shard), validate (``verify_state`` after a sync), reintegrate (clients drop their caches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erlmcp_ray.errors import InvalidValueError

__all__ = ["MODES", "STEPS", "RecoveryStatus", "ShardFacts", "ShardPlan", "plan"]

MODES = ("full", "delta", "peer", "snapshot", "auto")
STEPS = ("detect", "assess", "reconstruct", "validate", "reintegrate")


@dataclass(frozen=True)
class ShardFacts:
    """What detection found for one shard."""

    domain: str
    shard: int
    owner_alive: bool
    live_replicas: int
    durable: bool  # the domain writes to the durable store
    checkpoint: bool  # the latest checkpoint holds this shard
    delta_possible: bool  # the owner's op-log reaches back to that checkpoint


@dataclass(frozen=True)
class ShardPlan:
    domain: str
    shard: int
    mode: str
    reason: str


def plan(mode: str, facts: list[ShardFacts]) -> list[ShardPlan]:
    """The mode of each shard (``mode`` for all, or chosen per shard for ``auto``); raises
    ``InvalidValueError`` for an unknown mode and when a mode cannot apply to a shard (naming it)."""
    if mode not in MODES:
        raise InvalidValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", where="mode")
    out = []
    for f in facts:
        where = f"{f.domain}/{f.shard}"
        if not f.owner_alive:
            raise InvalidValueError(f"{where}: its owner does not answer (Ray is restarting it); try again "
                                    f"once it does", where="mode")
        if mode == "auto":
            sources = [s for s, present in (("live replicas", f.live_replicas > 0), ("stored rows", f.durable),
                                            ("the latest checkpoint", f.checkpoint)) if present]
            if sources:
                out.append(ShardPlan(f.domain, f.shard, "full", f"join of the owner with {', '.join(sources)}: "
                                     f"no acknowledged write is lost"))
            else:
                out.append(ShardPlan(f.domain, f.shard, "peer", "nothing to join beyond the owner: its replicas "
                                     "(if any come back) take its state"))
            continue
        if mode in ("snapshot", "delta") and not f.checkpoint:
            raise InvalidValueError(f"{where}: no checkpoint holds this shard (mode {mode!r} needs one)", where="mode")
        if mode == "delta" and not f.delta_possible:
            raise InvalidValueError(f"{where}: the owner's op-log no longer reaches back to the latest checkpoint "
                                    f"(or the owner restarted since); use 'full' or 'snapshot'", where="mode")
        out.append(ShardPlan(f.domain, f.shard, mode, f"asked for {mode}"))
    return out


@dataclass
class RecoveryStatus:
    """What ``get_recovery_status()`` reports."""

    status: str = "idle"  # idle | running | completed | failed
    mode: str | None = None
    step: str | None = None
    shards_total: int = 0
    shards_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    shards: dict[str, dict] = field(default_factory=dict)
    validation: dict | None = None

    @property
    def progress(self) -> int:
        """0-100: the steps before and after reconstruct weigh 10 each, reconstruct 60 by shards."""
        if self.status == "completed":
            return 100
        if self.step is None:
            return 0
        done_steps = STEPS.index(self.step)
        if self.step == "reconstruct":
            part = self.shards_done / self.shards_total if self.shards_total else 1.0
            return int(20 + 60 * part)
        return min(99, [0, 10, 20, 80, 90][done_steps])

    def begin(self, mode: str, now: float) -> None:
        self.__init__()  # a fresh run
        self.status, self.mode, self.started_at = "running", mode, now

    def to_dict(self) -> dict:
        return {"status": self.status, "mode": self.mode, "step": self.step, "progress": self.progress,
                "shards_total": self.shards_total, "shards_done": self.shards_done, "started_at": self.started_at,
                "finished_at": self.finished_at, "error": self.error, "shards": dict(self.shards),
                "validation": self.validation}
