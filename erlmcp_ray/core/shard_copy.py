"""One copy (slot) of one shard of a domain: its data plus the owner's and replica's bookkeeping.

Pure: no Ray, no threads, no lock. ``actors.shard.ShardActor`` holds one of these, takes its
lock around every call and runs the replication thread; ``testing.FakeTransport`` holds them
in-process to drive a ``MemoryClient`` without Ray. Both therefore run the same write, read,
replication and publication logic.

Owner: ``write`` assigns versions (idempotent per ``(client id, request seq)``), refuses growth
under critical memory pressure, evicts in the domain's policy order, and writes every op of a
batch on its own (a bad op is rejected, the others are written). ``replication_payloads`` /
``sync_answered`` / ``finish_round`` are one replication round (op-log deltas, or a snapshot
to a replica that is nowhere in the log); ``publish_batch`` / ``published`` hand what the
replicas hold to the coordinator.

Replica: ``sync`` takes a delta or snapshot; ``apply_write`` takes a strong write's records
straight from the client; both refuse a lower epoch (``StaleEpochError``).

Cut off (a partition): eventual writes stay available. A copy that cannot act as owner (a
replica, or an owner whose lease ran out) takes an eventual batch that allows it
(``write(..., stash_ok=True)``) as its own writes (versioned under its slot, so they are
concurrent with the owner's) and keeps them in ``stash``; a deposed owner stashes what it wrote
that its replicas may not hold. A stash survives the snapshot that replaces a deposed copy's
state; the supervisor's heal hands it to the owner, which joins it (``absorb``: the CRDT join,
counting conflicts and returning the versions that lost).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from erlmcp_ray._policies import shard_policy
from erlmcp_ray.config import DomainConfig
from erlmcp_ray.core import record as R
from erlmcp_ray.core.invalidation import RELAXED, WRITE
from erlmcp_ray.core.pressure import (
    DEFAULT_THRESHOLDS,
    AllowGrowth,
    CollectGarbage,
    Evict,
    LevelChanged,
    PressureMonitor,
    RefuseGrowth,
    Warn,
)
from erlmcp_ray.core.replication import Freshness, IdempotencyTable, ReplicaProgress
from erlmcp_ray.core.shard_state import MergeResult, ShardState, _klen
from erlmcp_ray.core.wire import OK, REFUSED, SKIPPED, STALE, Progress, ReadAnswer, WriteAnswer, WriteOp
from erlmcp_ray.errors import StaleEpochError, UnavailableError

__all__ = ["ShardCopy", "ShardSettings"]


@dataclass(frozen=True)
class ShardSettings:
    """How one shard copy behaves; ``system.start`` builds it from the domain's config."""

    #: the domain's config as a dict (its eviction policy, limits); None: no policy, no limits
    domain_config: dict | None = None
    #: this shard's part of the domain's limits (max_bytes / shards, max_entries / shards)
    max_bytes: int | None = None
    max_entries: int | None = None
    staleness_ms: float = 1000.0
    #: an empty sync this often keeps each replica's staleness bound fresh
    heartbeat_ms: float = 100.0
    #: after a write wakes replication, wait this long so the writes behind it share the round
    linger_ms: float = 2.0
    #: a strong write reached the replicas through its client; its publication may wait this
    #: long to share a round with the next ones
    strong_publish_delay_ms: float = 20.0
    oplog_capacity: int = 65536
    sync_timeout_s: float = 5.0
    #: copies (the owner among them) that must hold a strong write; None: every copy. An owner read
    #: serves a strong write once ``min_insync - 1`` replicas acknowledged holding it
    min_insync: int | None = None
    #: a replica that has not acked for this long is out of sync (no longer waited for)
    out_of_sync_after_s: float = 5.0
    #: the durable tier: "off", "write_behind" or "write_through" (owners only write to it)
    durable_mode: str = "off"
    #: the DurableConfig (as a dict) of the store the owner opens, when durable_mode is not off
    store: dict | None = None
    #: write_behind: seconds between flushes
    flush_s: float = 0.1
    #: write_behind: changes held for an unreachable store before writes are refused
    max_backlog: int = 100_000
    #: an owner with replicas serves writes and owner reads only while it holds a lease this long,
    #: renewed by each replication round a replica acknowledged and by the supervisor's health
    #: checks; shorter than the supervisor's failure timeout, so a paused owner (a zombie) that
    #: wakes after a failover has stopped acting as owner before its successor starts. 0: no lease.
    lease_s: float = 0.0
    #: serve the direct data plane (a socket endpoint beside the actor, ``erlmcp_ray.direct``)
    direct: bool = True
    #: the largest message that endpoint accepts
    max_frame: int = 64 * 1024 * 1024
    #: TLS for that endpoint and for replication to the replicas' (``{"cert", "key", "ca"}`` paths), or None
    tls: dict | None = None


class ShardCopy:
    def __init__(self, domain: str, shard: int, slot: int, copies: int, epoch: int,
                 settings: ShardSettings, *, clock: Callable[[], float] = time.monotonic,
                 state: ShardState | None = None) -> None:
        self.domain, self.shard, self.slot, self.copies = domain, shard, slot, copies
        self.epoch = epoch
        self.settings = settings
        self._clock = clock
        self.state = state if state is not None else ShardState(slot, oplog_capacity=settings.oplog_capacity)
        self.incarnation = uuid.uuid4().hex
        self._dedup = IdempotencyTable()
        self.freshness = Freshness(clock=clock)
        self.owner_slot = 0
        self._position: tuple[str, int] | None = None  # replica: (owner incarnation, owner seq) held
        #: owner: bumped by every reset of the replicas' progress; a replication round started
        #: before one (``_inflight_gen``) is ignored when it answers
        self._round_gen = self._inflight_gen = 0
        #: replica: the epoch of the owner whose state this copy mirrors; a snapshot from a later
        #: epoch (a restored checkpoint) replaces the state instead of joining it
        self._state_epoch = epoch
        self.progress_of = {s: ReplicaProgress(s) for s in range(copies) if s != slot}
        self.replicated_seq = 0
        self.published_seq = 0
        #: owner: key -> op-log seq of its last strong write not yet confirmed (held by ``min_insync``
        #: copies, as far as this owner knows); an owner read of such a key waits (``unconfirmed``)
        self._unconfirmed: dict[str, int] = {}
        #: owner: every op up to this seq is held by the replicas a strong write needs
        self.confirmed_seq = 0
        self._forget: list[tuple[str, int]] = []
        self._relaxed: set[int] = set()  # op-log seqs written under relaxed coherence
        #: owner: ``(first seq, last seq, client id)`` of each write call's ops not yet published;
        #: their publication names that client, which the coordinator then does not tell of them
        self._origins: list[tuple[int, int, str]] = []
        self._victims: list[str] = []
        self.policy = self._new_policy()
        self.evictions = 0
        self.pressure = PressureMonitor()
        self.subject = f"domain:{domain}:{shard}"
        if settings.max_bytes is not None:
            self.pressure.configure(self.subject, settings.max_bytes, evictable=self.policy is not None,
                                    max_entries=settings.max_entries)
        self.refused = 0
        self.rejected = 0
        self._refusing = False
        #: why a node over its limits refuses this shard's growing writes (None: it does not)
        self.node_refusal: str | None = None
        self.pressure_changes: list[tuple] = []
        self.syncs = {"completed": 0, "failed": 0, "bytes": 0, "last_sync_time": None}
        #: operations served (the persistence selector's read ratio); from 0 in each incarnation
        self.reads = 0
        self.writes = 0
        #: effects the actor acts on after the call (log lines, garbage collection)
        self.effects: list[Any] = []
        #: owner: acts as owner (writes, owner reads) only while ``not_before <= now < lease_until``
        self.lease_until = clock() + settings.lease_s
        self.not_before = float("-inf")
        self.promotions = 0
        #: a replica that started empty or from a peer (a restart, a replacement) takes no strong
        #: write until its owner's first sync brought it level: counting it would be a hollow ack
        self.joining = False
        #: writes taken while cut off from the owner, or a deposed owner's unreplicated ones, until
        #: the heal merged them into the owner: key -> record
        self.stash: dict[str, bytes] = {}
        self.stashed_writes = 0

    def _new_policy(self) -> Any:
        settings = self.settings
        if settings.domain_config is None or settings.max_bytes is None:
            return None
        return shard_policy(DomainConfig(**settings.domain_config), settings.max_bytes,
                            lambda key, _size: self._victims.append(key))

    @property
    def is_owner(self) -> bool:
        return self.slot == self.owner_slot

    # ------------------------------------------------------------ ownership (failover)
    def check_owner(self) -> None:
        """Raise ``UnavailableError`` unless this copy may act as its shard's owner now: it is the
        owner, it holds its lease (when it has replicas), and a promotion's wait is over. The
        client then looks the owner up again and retries."""
        if not self.is_owner:
            raise UnavailableError(f"{self.domain}/{self.shard} slot {self.slot} is not the owner (slot "
                                   f"{self.owner_slot} is, epoch {self.epoch})")
        now = self._clock()
        if now < self.not_before:
            raise UnavailableError(f"{self.domain}/{self.shard} slot {self.slot}: promoted, serving in "
                                   f"{self.not_before - now:.2f} s (the old owner's lease runs out then)")
        if self.settings.lease_s and self.progress_of and now >= self.lease_until:
            raise UnavailableError(f"{self.domain}/{self.shard} slot {self.slot}: the owner's lease ran out "
                                   f"{now - self.lease_until:.2f} s ago (no replica or supervisor confirmed "
                                   f"it is still the owner); the supervisor may be failing it over")

    def renew_lease(self, since: float) -> None:
        """Someone confirmed this owner at ``since`` (a replica's ack of a round sent then, or a
        supervisor's health check sent then): it holds its lease until ``since + lease_s``."""
        self.lease_until = max(self.lease_until, since + self.settings.lease_s)

    def sync_age_s(self) -> float:
        """Seconds since this replica last took a sync from its owner (inf: never)."""
        at = self.freshness.caught_up_at
        return float("inf") if at is None else self._clock() - at

    def adopt(self, owner_slot: int, epoch: int) -> bool:
        """The supervisor's topology: ``owner_slot`` owns the shard from ``epoch`` on. A copy at a
        higher epoch refuses it (``StaleEpochError``). An owner that is no longer one becomes a
        replica that takes its state from the next snapshot (replacing its own). True if the role
        changed."""
        was_owner = self.is_owner
        self.check_epoch(epoch)
        self.owner_slot = owner_slot
        if was_owner and not self.is_owner:
            self.step_down()
            return True
        return False

    def step_down(self) -> None:
        """This owner learnt that it was deposed (a newer epoch reached it): a replica from now on,
        whose state the new owner's next snapshot replaces. What it wrote that its replicas may not
        hold (after the last position every in-sync replica acknowledged) goes to its stash first:
        an eventual write it acknowledged is merged into the new owner at the heal, not dropped."""
        if self.is_owner and self.progress_of:
            ops = self.state.since(min(self.replicated_seq, self.state.last_seq))
            pairs = self.state.records().items() if ops is None else [(k, r) for _seq, k, r in ops]
            for key, rec in pairs:
                self._stash(key, rec)
        if self.owner_slot == self.slot:
            self.owner_slot = -1  # unknown until the supervisor's next health check says
        self._round_gen += 1
        self.progress_of = {}
        self._confirm_everything()
        self._position = None
        self.freshness.caught_up_at = None
        self.lease_until = float("-inf")

    def promote(self, epoch: int, copies: int, not_before: float = float("-inf")) -> None:
        """Become the owner under ``epoch`` (> every epoch the shard's copies and store have seen):
        a new incarnation (clients drop their caches of the domain and resend what the old owner
        never confirmed), every other slot a replica that gets a full snapshot and replaces its
        state with it. Serves from ``not_before`` (the deposed owner's lease has run out then)."""
        if epoch <= self.epoch:
            raise StaleEpochError(f"{self.domain}/{self.shard}: promotion to epoch {epoch}, this copy is at "
                                  f"{self.epoch}", epoch=epoch, current=self.epoch)
        self.owner_slot = self.slot
        self.copies = copies
        self.epoch = self._state_epoch = epoch
        self.incarnation = uuid.uuid4().hex
        self._dedup = IdempotencyTable()
        self._position = None
        self.progress_of = {s: ReplicaProgress(s) for s in range(copies) if s != self.slot}
        self.replicated_seq = self.published_seq = self.state.last_seq
        self._confirm_everything()
        self._forget, self._relaxed, self._origins = [], set(), []
        self._resend_everything()
        self.not_before = not_before
        self.lease_until = max(self._clock(), not_before) + self.settings.lease_s
        self.promotions += 1
        self.policy = self._new_policy()
        if self.policy is not None:
            for key in list(self.state.keys()):
                self.policy[key] = self._entry_size(key)

    def load_durable(self, records: dict[str, bytes]) -> None:
        """Start from what the durable tier holds (a restart, or the whole cluster's); from here on
        every change is tracked for it."""
        self.state.merge(records.items())
        if self.policy is not None:
            for key in list(self.state.keys()):
                self.policy[key] = self._entry_size(key)
        # What this copy held already (from a peer) and the store lacks is to be written to it.
        raw = self.state.raw_record
        self.state.dirty = {k for k in self.state.stored_keys() if raw(k) != records.get(k)}

    def set_copies(self, copies: int) -> None:
        """The domain's layout changed (the persistence selector migrated it): from now on the owner
        replicates to the copies of slots ``1 .. copies-1`` — a new one starts from a snapshot — and
        no longer to the others."""
        if not self.is_owner:
            raise ValueError("only the owner tracks replicas")
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.copies = copies
        for slot in range(copies):
            if slot != self.slot and slot not in self.progress_of:
                self.progress_of[slot] = ReplicaProgress(slot)
        for slot in [s for s in self.progress_of if s >= copies]:
            del self.progress_of[slot]

    def restore_image(self, snapshot: dict) -> None:
        """Become ``snapshot`` (a checkpoint's image of this shard), replacing the state rather than
        joining it, under a new epoch and incarnation: replicas get a full snapshot next round and
        replace theirs (``sync``), and clients that meet the new incarnation drop their caches."""
        if not self.is_owner:
            raise ValueError("only the owner restores a checkpoint; its replicas follow it")
        dirty = self.state.dirty
        self.state = ShardState(self.slot, oplog_capacity=self.settings.oplog_capacity)
        self.state.restore(snapshot)
        self.state.dirty = None if dirty is None else set()
        self.epoch = self._state_epoch = max(self.epoch, int(snapshot.get("epoch", 0))) + 1
        self.incarnation = uuid.uuid4().hex
        self._dedup = IdempotencyTable()
        # What the coordinator would announce are the restored records themselves: clients drop
        # their caches on the coordinator's new epoch instead.
        self.replicated_seq = self.published_seq = self.state.last_seq
        self._confirm_everything()  # the log is a new one: its seqs say nothing of the old one's
        self._resend_everything()
        self._forget, self._relaxed, self._origins = [], set(), []
        self.policy = self._new_policy()  # not clear(): a policy's clear() evicts, and that deletes
        if self.policy is not None:
            for key in list(self.state.keys()):
                self.policy[key] = self._entry_size(key)

    def bump_epoch(self) -> int:
        """A new epoch for this owner (a recovery): every replica gets a full snapshot next round and
        replaces its state with it (``sync``); a write from the old epoch is refused from then on."""
        if not self.is_owner:
            raise ValueError("only the owner moves its shard to a new epoch")
        self.epoch = self._state_epoch = self.epoch + 1
        self._resend_everything()
        return self.epoch

    def _resend_everything(self) -> None:
        # Every replica gets a full snapshot next round, and nothing counts as replicated until it
        # acknowledged one (a sync then waits for the replicas to hold the new state).
        self._round_gen += 1
        for progress in self.progress_of.values():
            progress.acked_seq = None
        if self.progress_of:
            self.replicated_seq = 0

    def join(self, records: Any) -> MergeResult:
        """CRDT-join ``(key, record)`` pairs from another source (a replica, the store, a checkpoint)
        into this copy: only ever keeps the newer version of each key."""
        result = self.state.merge(records)
        if self.policy is not None:
            for key in list(self.state.keys()):
                if key not in self.policy:
                    self.policy[key] = self._entry_size(key)
        return result

    def replay_from(self, image: dict) -> int:
        """Delta recovery: become a checkpoint ``image`` plus this owner's op-log since it (replacing
        the state). Possible only in the incarnation that took the checkpoint, while the log still
        reaches back to it; returns the operations replayed."""
        if image.get("incarnation") != self.incarnation:
            raise ValueError(f"{self.domain}/{self.shard}: the owner restarted since the checkpoint "
                             f"(incarnation {self.incarnation} != {image.get('incarnation')})")
        ops = self.state.since(image["seq"])
        if ops is None:
            raise ValueError(f"{self.domain}/{self.shard}: the op-log no longer reaches back to seq {image['seq']}")
        dirty = self.state.dirty
        rebuilt = ShardState(self.slot, oplog_capacity=self.settings.oplog_capacity)
        rebuilt.restore(image)
        rebuilt.apply_delta(ops)
        rebuilt.dirty = None if dirty is None else set(rebuilt.stored_keys()) | set(self.state.stored_keys())
        self.state = rebuilt
        # The rebuilt log numbers its operations afresh: the checkpoint's position means nothing in
        # it, so a second delta from that checkpoint must be refused — a new incarnation does that.
        self.incarnation = uuid.uuid4().hex
        self.published_seq = self.replicated_seq = self.state.last_seq
        self._confirm_everything()
        self._resend_everything()
        return len(ops)

    def recover(self, snapshot: dict) -> None:
        """A restarted copy starts empty: take a peer's state, and rebuild what the policy tracks
        (its access history is lost)."""
        self.state.restore(snapshot)
        if self.policy is not None:
            for key in list(self.state.keys()):
                self.policy[key] = self._entry_size(key)

    # ---------------------------------------------------------------- owner
    def write(self, client_id: str, request_seq: int, ops: list[WriteOp], full: bool = True,
              stash_ok: bool = False, strong: bool = False) -> WriteAnswer:
        """Apply a batch of ``WriteOp``; a retried ``(client_id, request_seq)`` gets the first answer.
        ``stash_ok`` (eventual batches): a copy that may not act as owner now takes them into its
        stash instead of refusing them (``WriteAnswer.stashed``). ``strong``: the client takes the
        answer to the replicas itself; owner reads of these keys wait until they confirm holding it
        (``unconfirmed``)."""
        try:
            self.check_owner()
        except UnavailableError:
            if not stash_ok:
                raise
            return self._write_stashed(client_id, request_seq, ops, full)
        answer = self._dedup.lookup(client_id, request_seq)
        if answer is not IdempotencyTable.MISSING:
            return answer
        self.writes += len(ops)
        state, items, refused, rejected = self.state, [], [], []
        # constant through the loop (the pressure is observed after it); locals: the hot path
        refusing, policy, apply_local = self._refusing, self.policy, state.apply_local
        first = state.last_seq + 1
        for i, op in enumerate(ops):
            key, data = op[0], op[1]
            if data is not None and refusing and self._would_refuse(key, data, op[3]):
                refused.append((i, self._refusal(key)))
                items.append((key, REFUSED) if full else -1)
                continue
            if len(op) > 5 and op[5] and self._superseded(key, op[5]):
                items.append((key, SKIPPED) if full else 0)
                continue
            try:
                if data is None:
                    res = apply_local(key, delete=True)
                elif op[2] is None and not op[3]:
                    res = apply_local(key, data)
                else:
                    res = apply_local(key, data, ttl_ms=op[2], tags=op[3])
            except Exception as exc:  # noqa: BLE001 - one bad op must not cost the others
                self.rejected += 1
                rejected.append((i, f"{type(exc).__name__}: {exc}"))
                items.append((key, REFUSED) if full else -1)
                continue
            if res is not None and len(op) > 4 and op[4]:
                self._relaxed.add(res[0])  # relaxed coherence: caches are not told to drop it
            if policy is not None and res is not None:
                self._track(key, data is None)
            if full:
                items.append((key, None if res is None else res[1]))
            else:
                items.append(0 if res is None else R.record_hlc(res[1]))
        last = state.last_seq
        if last >= first:  # before the evictions: those are nobody's writes
            self._origins.append((first, last, client_id))
        if self._victims:
            self._evict_victims()
        self._observe_pressure()
        last = state.last_seq  # the evictions are writes too
        if strong and self.progress_of and last > self.confirmed_seq:
            unconfirmed = self._unconfirmed
            for op, item in zip(ops, items, strict=True):
                if (type(item[1]) is bytes) if full else item > 0:  # written (not refused, skipped, a no-op)
                    unconfirmed[op[0]] = last
        answer = WriteAnswer(self.epoch, last, items, self.incarnation, refused, rejected)
        self._dedup.remember(client_id, request_seq, answer)
        return answer

    def _write_stashed(self, client_id: str, request_seq: int, ops: list[WriteOp], full: bool) -> WriteAnswer:
        answer = self._dedup.lookup(client_id, request_seq)
        if answer is not IdempotencyTable.MISSING:
            return answer
        items = []
        for op in ops:
            key, data = op[0], op[1]
            if len(op) > 5 and op[5] and self._superseded(key, op[5]):
                items.append((key, SKIPPED) if full else 0)
                continue
            if data is None:
                res = self.state.apply_local(key, delete=True)
            else:
                res = self.state.apply_local(key, data, ttl_ms=op[2], tags=op[3])
            if res is not None:
                self._stash(key, res[1])
            if full:
                items.append((key, None if res is None else res[1]))
            else:
                items.append(0 if res is None else R.record_hlc(res[1]))
        self.stashed_writes += len(ops)
        answer = WriteAnswer(self.epoch, self.state.last_seq, items, self.incarnation, [], [], True)
        self._dedup.remember(client_id, request_seq, answer)
        return answer

    def _stash(self, key: str, rec: bytes) -> None:
        old = self.stash.get(key)
        self.stash[key] = rec if old is None else R.join(old, rec)[0]

    def clear_stash(self, handed: list[tuple[str, bytes]]) -> int:
        """The owner absorbed ``handed`` (what ``stash`` held when the heal took it): forget those
        entries, but keep a key written again since (its record is another)."""
        n = 0
        for key, rec in handed:
            if self.stash.get(key) == rec:
                del self.stash[key]
                n += 1
        return n

    def absorb(self, records: list[tuple[str, bytes]]) -> tuple[MergeResult, list[tuple[str, bytes]]]:
        """The owner joins stashed records from copies that were cut off (the heal): only ever keeps
        the newer version of a key, or the last writer's of two concurrent ones. Returns the join's
        counts and the records that lost a conflict (for the subscribers' conflict events)."""
        self.check_owner()
        losers = []
        state = self.state
        for key, rec in records:
            old = state.raw_record(key)
            if old is not None and old != rec:
                _winner, concurrent = R.join(old, rec)
                if concurrent:
                    losers.append((key, rec if R.content_wins(old, rec) else old))
        result = self.join(records)
        self._observe_pressure()
        return result, losers

    def _superseded(self, key: str, resend_of: int) -> bool:
        """A resent write is moot when what is stored is as new as it (or newer)."""
        rec = self.state.raw_record(key)
        return rec is not None and R.record_hlc(rec) >= resend_of

    def read(self, key: str, max_staleness_ms: float | None = None, acked: Any = None) -> ReadAnswer:
        """A replica staler than ``max_staleness_ms`` answers STALE and no record; the owner is never stale.
        An owner read of a key whose last strong write is not confirmed yet raises ``UnavailableError``
        (the actor waits for the confirmation first). ``acked``: see ``take_acked``."""
        if max_staleness_ms is None:  # an owner read (strong, or a fallback): only the owner answers
            self.check_owner()
            if acked is not None:
                self.take_acked(key, acked)
            seq = self.unconfirmed(key)
            if seq is not None:
                raise UnavailableError(
                    f"{self.domain}/{self.shard}: the last strong write of {key!r} (seq {seq}) is not yet "
                    f"confirmed by the replicas it needs (held up to seq {self.confirmed_seq})")
        self.reads += 1
        staleness = 0.0 if self.is_owner else self.freshness.staleness_ms()
        if max_staleness_ms is not None and staleness > max_staleness_ms:
            return ReadAnswer(STALE, None, staleness, self.incarnation)
        rec = self.state.get_record(key)
        if rec is not None and self.policy is not None and self.is_owner:
            self.policy.get(key)  # an access, for LRU/LFU/ARC/W-TinyLFU
        return ReadAnswer(OK, rec, staleness, self.incarnation)

    def unconfirmed(self, key: str) -> int | None:
        """The seq of ``key``'s last strong write if no ``min_insync`` copies are known to hold it yet,
        else None. An owner that served such a write could show a value that a failover then loses
        (it was cut off, or died, before the replica had it): a read that goes back in time."""
        seq = self._unconfirmed.get(key)
        return None if seq is None or seq <= self.confirmed_seq else seq

    def take_acked(self, key: str, acked: Any) -> bool:
        """``acked``: ``(incarnation, seq)`` of a strong write of ``key`` that the reading client saw
        acknowledged -- ``min_insync`` copies applied it -- so it is confirmed without asking the
        replicas, if it is still the key's last strong write here. True if it was."""
        incarnation, seq = acked
        if incarnation == self.incarnation and self._unconfirmed.get(key) == seq:
            del self._unconfirmed[key]
            return True
        return False

    def _update_confirmed(self) -> None:
        """``confirmed_seq``: the highest position that ``min_insync - 1`` replicas acknowledged."""
        progress = self.progress_of
        needed = len(progress) if self.settings.min_insync is None else self.settings.min_insync - 1
        needed = min(max(needed, 0), len(progress))
        if needed == 0:  # no replicas, or min_insync 1: the owner's copy is enough
            self._confirm_everything()
            return
        acked = sorted((p.acked_seq or 0 for p in progress.values()), reverse=True)
        self.confirmed_seq = max(self.confirmed_seq, acked[needed - 1])

    def _confirm_everything(self) -> None:
        """Nothing waits for a confirmation any more: no replicas, or a new log (a promotion, a
        restore), or not the owner."""
        self._unconfirmed = {}
        self.confirmed_seq = self.state.last_seq

    def progress(self) -> Progress:
        self.check_owner()
        return Progress(self.incarnation, self.state.last_seq, self.replicated_seq, self.published_seq)

    def find(self, tag: str | None = None, pattern: str | None = None) -> list[str]:
        if tag is not None:
            return self.state.keys_with_tag(tag)
        return self.state.keys_matching(pattern or "*")

    # -------------------------------------------------------------- eviction
    def _entry_size(self, key: str) -> int:
        rec = self.state.raw_record(key)
        return 0 if rec is None else _klen(key) + len(rec) + self.state.entry_overhead

    def _track(self, key: str, deleted: bool) -> None:
        if deleted:
            self.policy.pop(key, None)
        else:
            self.policy[key] = self._entry_size(key)

    def _would_refuse(self, key: str, data: bytes, tags: tuple) -> bool:
        old = self._entry_size(key)
        # the new record's size, closely enough: value + key + version metadata + tags
        new = _klen(key) + len(data) + 32 + sum(len(t) + 1 for t in tags) + self.state.entry_overhead
        if self.node_refusal is not None and new > old:
            return True
        return self.pressure.would_refuse(self.subject, new - old) if self.subject in self.pressure else False

    def _refusal(self, key: str) -> str:
        self.refused += 1
        if self.node_refusal is not None and not (self.subject in self.pressure
                                                  and self.pressure.would_refuse(self.subject, 1)):
            return f"{self.node_refusal}; reads, deletes and shrinking writes still work (key {key!r})"
        snap = self.pressure.snapshot().get(self.subject, {})
        return (f"domain {self.domain!r} (shard {self.shard}) is at critical memory pressure: "
                f"{snap.get('used_bytes', 0)} of its {snap.get('limit_bytes', 0)}-byte limit for this shard "
                f"(max_bytes / shards) is used; writes that grow it are refused until deletes bring it "
                f"under {round((DEFAULT_THRESHOLDS.critical - DEFAULT_THRESHOLDS.hysteresis) * 100)} %; "
                f"reads, deletes and shrinking writes still work (key {key!r})")

    def set_node_refusal(self, reason: str | None) -> bool:
        """Refuse growing writes for ``reason`` (a node over its limits, see ``core.node_limits``), or
        accept them again (None); whether that changed anything."""
        changed = reason != self.node_refusal
        self.node_refusal = reason
        self._update_refusing()
        return changed

    def evict_amount(self, nbytes: int, entries: int = 0) -> int:
        """Evict, in the policy's order, at least ``nbytes`` bytes and ``entries`` entries (a node over
        its limits asks each evictable shard for its share); how many entries went."""
        if self.policy is None:
            return 0
        before = self.evictions
        self._evict_to(max(0, self.state.bytes_used - nbytes), max(0, len(self.state) - entries))
        self._observe_pressure()
        return self.evictions - before

    def _observe_pressure(self) -> None:
        if self.subject not in self.pressure:
            self._update_refusing()
            return
        for effect in self.pressure.handle(self.subject, self.state.bytes_used, len(self.state)):
            if isinstance(effect, CollectGarbage):
                self.state.purge_expired()
                self.effects.append(effect)  # the actor collects the young generation
            elif isinstance(effect, Evict) and self.policy is not None:
                self._evict_to(effect.target_bytes, effect.target_entries)
            elif isinstance(effect, LevelChanged):
                self.pressure_changes.append((time.time(), str(effect.old), str(effect.new), effect.ratio))
            elif isinstance(effect, (Warn, RefuseGrowth, AllowGrowth)):
                self.effects.append(effect)  # log lines, written by the actor
        self._update_refusing()

    def _update_refusing(self) -> None:
        # Sizing each op against the limit is only needed while growth is being refused (by the
        # domain's pressure or by a node over its limits).
        self._refusing = self.node_refusal is not None or (
            self.subject in self.pressure and self.pressure.would_refuse(self.subject, 1))

    def evict_to_ratio(self, ratio: float) -> int:
        """An operator's (or an alert's) eviction: evict in the policy's order until the shard uses at
        most ``ratio`` of its byte limit; how many entries went (0 for a domain without a policy)."""
        if self.policy is None or self.settings.max_bytes is None:
            return 0
        before = self.evictions
        self._evict_to(int(self.settings.max_bytes * ratio), None)
        self._observe_pressure()
        return self.evictions - before

    def _evict_to(self, target_bytes: int, target_entries: int | None) -> None:
        """Evict, in the policy's order, until the shard is under the targets."""
        state, policy = self.state, self.policy
        while len(policy) and (state.bytes_used > target_bytes or
                               (target_entries is not None and len(state) > target_entries)):
            policy.popitem()  # its on_evict queues the key in self._victims
            self._evict_victims()

    def _evict_victims(self) -> None:
        """Delete what the policy evicted, as versioned deletes: they replicate like any write,
        and their publication drops the evicted entries from every client's cache."""
        while self._victims:
            key = self._victims.pop()
            if self.state.apply_local(key, delete=True) is not None:
                self.evictions += 1

    # -------------------------------------------------------------- replica
    def check_epoch(self, epoch: int) -> None:
        if epoch < self.epoch:
            raise StaleEpochError(
                f"{self.domain}/{self.shard} slot {self.slot}: op from epoch {epoch}, current is {self.epoch}",
                epoch=epoch, current=self.epoch,
            )
        if epoch > self.epoch and self.is_owner:
            self.step_down()  # a later owner's op reached us: we were deposed
        self.epoch = epoch

    def apply_write(self, answer: WriteAnswer) -> int:
        """Apply the owner's answer to a strong write (its records, passed on by the client)."""
        self.check_epoch(answer[0])
        if self.joining:
            raise UnavailableError(f"{self.domain}/{self.shard} slot {self.slot} is still catching up with its "
                                   f"owner (a new or restarted copy)")
        items = answer[2]
        for key, rec in items:
            if type(rec) is bytes:  # None: a delete of nothing; REFUSED / SKIPPED: not written
                self.state.apply_remote(key, rec)
        return len(items)

    def sync(self, epoch: int, incarnation: str, base_seq: int | None, last_seq: int, ops: list | None,
             snapshot: dict | None, transit_s: float, forget: list) -> tuple[str, int | None]:
        """Take a delta (ops after ``base_seq``) or a snapshot from the owner: ``(OK, last_seq)``, or
        ``("need", seq-or-None)`` when the delta does not start where this copy is (resend from there,
        or a snapshot when None)."""
        self.check_epoch(epoch)  # a later owner's sync deposes us if we still thought we were the owner
        if snapshot is not None:
            if epoch > self._state_epoch:
                self.state = ShardState(self.slot, oplog_capacity=self.settings.oplog_capacity)
            self._state_epoch = epoch
            self.state.restore(snapshot)
        elif self._position != (incarnation, base_seq):
            pos = self._position
            return "need", pos[1] if pos and pos[0] == incarnation else None
        else:
            self.state.apply_delta(ops or ())
        if forget:
            self.state.forget_tombstones(forget)
        self._position = (incarnation, last_seq)
        self.joining = False
        self.freshness.caught_up(transit_s)
        return OK, last_seq

    # ---------------------------------------------------------- replication
    def replication_payloads(self, skip: Container[int] = ()) -> tuple[int, list, dict[int, tuple]]:
        """One round's ``(last seq, tombstones to forget, {slot: (base, ops, snapshot)})``, for every
        replica but those in ``skip`` (an earlier round's sync to them is still unanswered); the
        tombstones to forget are sent again next round while some replica is skipped."""
        if not self.progress_of:
            self.replicated_seq = self.state.last_seq
            self._confirm_everything()
            return self.state.last_seq, [], {}
        forget = self._forget
        self._inflight_gen = self._round_gen
        payloads = {slot: self._payload_for(p) for slot, p in self.progress_of.items() if slot not in skip}
        if len(payloads) == len(self.progress_of):
            self._forget = []
        else:
            forget = list(forget)
        return self.state.last_seq, forget, payloads

    @property
    def round_gen(self) -> int:
        """Bumped by every reset of the replicas' progress: an answer to a sync sent before one means nothing."""
        return self._round_gen

    def _payload_for(self, progress: ReplicaProgress) -> tuple:
        """A replica's delta or snapshot; its size (keys and records) counts in ``syncs["bytes"]``."""
        if progress.acked_seq is not None and progress.acked_seq <= self.state.last_seq:
            ops = self.state.since(progress.acked_seq)
            if ops is not None:
                if ops:
                    self.syncs["bytes"] += sum(len(k) + len(r) for _seq, k, r in ops)
                return progress.acked_seq, ops, None
        self.syncs["bytes"] += self.state.record_bytes
        return None, None, self.state.snapshot()

    def sync_answered(self, slot: int, status: str, pos: int | None, rtt_s: float) -> bool:
        """A replica's answer; True when it wants a resend from elsewhere in the log."""
        if self._inflight_gen != self._round_gen or slot not in self.progress_of:
            return True  # a round started before a reset (a restore, a recovery): its answers mean nothing now
        progress = self.progress_of[slot]
        if status == OK:
            progress.acked(pos, self._clock(), rtt_s)
            self._update_confirmed()
            self.syncs["completed"] += 1
            self.syncs["last_sync_time"] = time.time()
            return False
        progress.acked_seq = pos
        return True

    def replica_failed(self, slot: int) -> None:
        if slot not in self.progress_of:  # no longer ours to track (this copy was deposed meanwhile)
            return
        self.progress_of[slot].failed(self._clock(), self.settings.out_of_sync_after_s)
        self.syncs["failed"] += 1

    def finish_round(self, last: int) -> None:
        """After a round: what every in-sync replica holds is replicated; tombstones every
        replica acked (and that were published) are collected."""
        if not self.progress_of or self._inflight_gen != self._round_gen:
            return
        acked = [p.acked_seq or 0 for p in self.progress_of.values() if p.in_sync]
        self.replicated_seq = min([last, *acked])
        if self._unconfirmed:
            done = self.confirmed_seq
            self._unconfirmed = {k: seq for k, seq in self._unconfirmed.items() if seq > done}
        all_acked = min(p.acked_seq or 0 for p in self.progress_of.values())
        self._forget.extend(self.state.gc_tombstones(min(all_acked, self.published_seq)))

    def publish_batch(self) -> tuple[int, list | None] | None:
        """``(upto, items)`` to publish (items None: the log no longer reaches back), or None."""
        upto = self.replicated_seq
        if upto <= self.published_seq:
            return None
        ops = self.state.since(self.published_seq)
        if ops is None:
            return upto, None
        if not ops:
            return upto, []
        domain, relaxed = self.domain, self._relaxed
        base = ops[0][0]  # the log's seqs are consecutive: ops[i] has seq base + i
        end = min(len(ops), upto - base + 1)
        items: list[tuple] = []
        pos = 0
        for first, last, client in self._origins:  # in seq order, as the ops
            lo, hi = max(first - base, pos), min(last - base + 1, end)
            if hi <= lo:
                continue
            items += [(domain, key, rec, RELAXED if seq in relaxed else WRITE) for seq, key, rec in ops[pos:lo]]
            items += [(domain, key, rec, RELAXED if seq in relaxed else WRITE, 0, client)
                      for seq, key, rec in ops[lo:hi]]
            pos = hi
        items += [(domain, key, rec, RELAXED if seq in relaxed else WRITE) for seq, key, rec in ops[pos:end]]
        return upto, items

    def published(self, upto: int) -> None:
        self.published_seq = max(self.published_seq, upto)
        self._relaxed = {seq for seq in self._relaxed if seq > upto}
        if self._origins and self._origins[0][1] <= upto:
            self._origins = [r for r in self._origins if r[1] > upto]

    # ------------------------------------------------------------ inspection
    def stats(self) -> dict:
        out = self.state.stats()
        out.update(
            domain=self.domain, shard=self.shard, slot=self.slot, role="owner" if self.is_owner else "replica",
            epoch=self.epoch, replicated_seq=self.replicated_seq, published_seq=self.published_seq,
            confirmed_seq=self.confirmed_seq, unconfirmed_keys=len(self._unconfirmed),
            evictions=self.evictions, refused_writes=self.refused, rejected_ops=self.rejected,
            node_refusal=self.node_refusal,
            reads=self.reads, writes=self.writes, copies=self.copies, incarnation=self.incarnation,
            pressure=self.pressure.snapshot().get(self.subject), pressure_changes=list(self.pressure_changes),
            owner_slot=self.owner_slot, promotions=self.promotions, sync_age_s=self.sync_age_s(),
            stash=len(self.stash), stashed_writes=self.stashed_writes,
            policy=None if self.policy is None else type(self.policy).__name__,
            staleness_ms=0.0 if self.is_owner else self.freshness.staleness_ms(),
            syncs=dict(self.syncs),
            replicas={s: {"acked_seq": p.acked_seq, "in_sync": p.in_sync, "rtt_ms": p.rtt_s * 1000}
                      for s, p in self.progress_of.items()} if self.is_owner else {},
        )
        return out
