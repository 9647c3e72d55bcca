"""The shard actor: one copy (slot) of one shard of one domain.

A thin shell over ``ShardState``. Slot 0 starts as the owner: it assigns
versions (``write``), and a replication thread pushes op-log deltas to the
replicas (batched: one call per replica carries every op since its last ack,
and an empty call every heartbeat keeps a replica's staleness bound fresh),
then publishes the replicated ops to the coordinator, which is what other
clients' caches invalidate on. Publishing only what the replicas already hold
means a client that drops a cached entry and reads a replica sees the new value.

Strong writes do not wait on this thread: the client passes the owner's answer
straight to each replica's ``apply_write`` (one Ray dependency, no extra hop
through the owner's Python), and returns once all have applied it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from typing import Any

import psutil
import ray

from erlmcp_ray import _ray
from erlmcp_ray._policies import shard_policy
from erlmcp_ray.actors.options import COORDINATOR, shard_name
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
from erlmcp_ray.core.shard_state import ShardState, _klen
from erlmcp_ray.errors import StaleEpochError, UnavailableError

log = logging.getLogger(__name__)

OK, STALE = "ok", "stale"
#: In a write answer, in place of the record of an op refused under memory pressure.
REFUSED = "refused"


class ShardActor:
    def __init__(
        self, domain: str, shard: int, slot: int, copies: int, namespace: str, epoch: int, settings: dict
    ) -> None:
        self.domain, self.shard, self.slot, self.copies = domain, shard, slot, copies
        self.namespace = namespace
        self._epoch = epoch
        self._settings = settings
        self._lock = threading.RLock()
        self._state = ShardState(slot, oplog_capacity=settings.get("oplog_capacity", 65536))
        self._dedup = IdempotencyTable()
        self._freshness = Freshness()
        self._incarnation = uuid.uuid4().hex
        self._position: tuple[str, int] | None = None  # replica: (owner incarnation, owner seq) we hold
        self._owner_slot = 0
        self._progress = {s: ReplicaProgress(s) for s in range(copies) if s != slot}
        self._peers: dict[int, Any] = {}
        self._coordinator: Any = None
        self._replicated_seq = 0
        self._published_seq = 0
        self._forget: list[tuple[str, int]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._held_until = 0.0
        self._strong_dirty = False
        self._relaxed: set[int] = set()  # op-log seqs written under relaxed coherence
        self._victims: list[str] = []
        self._policy = None
        if "domain_config" in settings:
            self._policy = shard_policy(DomainConfig(**settings["domain_config"]), settings["max_bytes"],
                                        lambda key, _size: self._victims.append(key))
        self._evictions = 0
        # Memory pressure of this shard against its part of the domain's limits (spec levels).
        self._pressure = PressureMonitor()
        self._subject = f"domain:{domain}:{shard}"
        if "max_bytes" in settings:
            self._pressure.configure(self._subject, settings["max_bytes"], evictable=self._policy is not None,
                                     max_entries=settings.get("max_entries"))
        self._refused = 0
        self._refusing = False
        self._pressure_changes: list[tuple] = []
        self._syncs = {"completed": 0, "failed": 0, "bytes": 0, "last_sync_time": None}
        if _ray.was_restarted():
            self._recover_from_peers()
            if self._policy is not None:  # rebuild what the policy tracks (access history is lost)
                for key in list(self._state.keys()):
                    self._policy[key] = self._entry_size(key)
        if self.is_owner:
            self._thread = threading.Thread(target=self._replication_loop, name="erlmcp-replication", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------------- roles
    @property
    def is_owner(self) -> bool:
        return self.slot == self._owner_slot

    def _peer(self, slot: int) -> Any:
        if slot not in self._peers:
            self._peers[slot] = _ray.get_actor(shard_name(self.domain, self.shard, slot), self.namespace)
        return self._peers[slot]

    def _recover_from_peers(self) -> None:
        """A restarted copy starts empty; take a peer's state before serving."""
        for slot in range(self.copies):
            if slot == self.slot:
                continue
            try:
                snap = _ray.get(self._peer(slot).snapshot.remote(), timeout=30, what=f"slot {slot} snapshot")
            except Exception as exc:  # noqa: BLE001 - try the next peer
                log.warning("%s/%s slot %s: recovery from slot %s failed: %s", self.domain, self.shard, self.slot,
                            slot, exc)
                continue
            self._state.restore(snap)
            log.info("%s/%s slot %s recovered %d entries from slot %s", self.domain, self.shard, self.slot,
                     len(self._state), slot)
            return

    # ---------------------------------------------------------------- owner
    def write(self, client_id: str, request_seq: int, ops: list, full: bool = True, chained: bool = False) -> tuple:
        """Apply ``ops`` — ``(key, data | None, ttl_ms | None, tags)``, data None deletes.

        Returns ``(epoch, seq, items, incarnation)``: items are ``(key, record | None)`` when
        ``full`` (a strong write: the replicas apply these records), else the HLC
        timestamp of each op (0 for a delete of nothing). A retried request with
        the same ``(client_id, request_seq)`` gets the first answer, applied once.
        ``chained``: the client passes this answer to every replica itself (a strong write).
        """
        with self._lock:
            answer = self._dedup.lookup(client_id, request_seq)
            if answer is not IdempotencyTable.MISSING:
                return answer
            state, items, refused = self._state, [], []
            for i, op in enumerate(ops):
                key, data, ttl_ms, tags = op[0], op[1], op[2], op[3]
                if data is not None and self._refusing and self._would_refuse(key, data, tags):
                    refused.append((i, self._refusal(key)))
                    items.append((key, REFUSED) if full else -1)
                    continue
                if data is None:
                    res = state.apply_local(key, delete=True)
                else:
                    res = state.apply_local(key, data, ttl_ms=ttl_ms, tags=tags)
                if res is not None and len(op) > 4 and op[4]:
                    self._relaxed.add(res[0])  # relaxed coherence: caches are not told to drop it
                if self._policy is not None and res is not None:
                    self._track(key, data is None)
                if full:
                    items.append((key, None if res is None else res[1]))
                else:
                    items.append(0 if res is None else R.record_hlc(res[1]))
            self._evict_victims()
            self._observe_pressure()
            answer = (self._epoch, state.last_seq, items, self._incarnation, refused)
            self._dedup.remember(client_id, request_seq, answer)
        if chained:
            # A strong write reached the replicas through the client already; syncing and
            # publishing it can wait for the next lazy round and share it with the next ones.
            self._strong_dirty = True
        else:
            self._wake.set()
        return answer

    def read(self, key: str, max_staleness_ms: float | None = None) -> tuple[str, bytes | None, float, str]:
        """``(status, live record or None, staleness ms, incarnation)``.

        A replica staler than ``max_staleness_ms`` answers ``STALE`` and no
        record; the owner is never stale.
        """
        staleness = 0.0 if self.is_owner else self._freshness.staleness_ms()
        if max_staleness_ms is not None and staleness > max_staleness_ms:
            return STALE, None, staleness, self._incarnation
        with self._lock:
            rec = self._state.get_record(key)
            if rec is not None and self._policy is not None and self.is_owner:
                self._policy.get(key)  # an access, for LRU/LFU/ARC/W-TinyLFU
            return OK, rec, staleness, self._incarnation

    # -------------------------------------------------------------- eviction
    def _entry_size(self, key: str) -> int:
        rec = self._state.raw_record(key)
        return 0 if rec is None else _klen(key) + len(rec) + self._state.entry_overhead

    def _track(self, key: str, deleted: bool) -> None:
        if deleted:
            self._policy.pop(key, None)
        else:
            self._policy[key] = self._entry_size(key)

    def _would_refuse(self, key: str, data: bytes, tags: tuple) -> bool:
        old = self._entry_size(key)
        # the new record's size, closely enough: value + key + version metadata + tags
        new = _klen(key) + len(data) + 32 + sum(len(t) + 1 for t in tags) + self._state.entry_overhead
        return self._pressure.would_refuse(self._subject, new - old) if self._subject in self._pressure else False

    def _refusal(self, key: str) -> str:
        self._refused += 1
        snap = self._pressure.snapshot().get(self._subject, {})
        return (f"domain {self.domain!r} (shard {self.shard}) is at critical memory pressure: "
                f"{snap.get('used_bytes', 0)} of its {snap.get('limit_bytes', 0)}-byte limit for this shard "
                f"(max_bytes / shards) is used; writes that grow it are refused until deletes bring it "
                f"under {round((DEFAULT_THRESHOLDS.critical - DEFAULT_THRESHOLDS.hysteresis) * 100)} %; "
                f"reads, deletes and shrinking writes still work (key {key!r})")

    def _observe_pressure(self) -> None:
        if self._subject not in self._pressure:
            return
        for effect in self._pressure.handle(self._subject, self._state.bytes_used, len(self._state)):
            self._apply_pressure_effect(effect)
        # Sizing each op against the limit is only needed while growth is being refused.
        self._refusing = self._pressure.would_refuse(self._subject, 1)

    def _apply_pressure_effect(self, effect: Any) -> None:
        if isinstance(effect, Warn):
            log.warning("%s", effect.message)
        elif isinstance(effect, CollectGarbage):
            self._state.purge_expired()
            gc.collect(0)  # young generation only here: the write path must stay fast
        elif isinstance(effect, Evict) and self._policy is not None:
            self._evict_to(effect.target_bytes, effect.target_entries)
        elif isinstance(effect, (RefuseGrowth, AllowGrowth)):
            log.warning("%s: %s", effect.subject, "refusing writes that grow it" if isinstance(effect, RefuseGrowth)
                        else "accepting writes again")
        elif isinstance(effect, LevelChanged):
            self._pressure_changes.append((time.time(), str(effect.old), str(effect.new), effect.ratio))

    def _evict_to(self, target_bytes: int, target_entries: int | None) -> None:
        """Evict, in the policy's order, until the shard is under the targets."""
        state, policy = self._state, self._policy
        while len(policy) and (state.bytes_used > target_bytes or
                               (target_entries is not None and len(state) > target_entries)):
            policy.popitem()  # its on_evict queues the key in self._victims
            self._evict_victims()

    def _evict_victims(self) -> None:
        """Delete what the policy evicted, as versioned deletes: they replicate like any write,
        and their publication drops the evicted entries from every client's cache."""
        while self._victims:
            key = self._victims.pop()
            if self._state.apply_local(key, delete=True) is not None:
                self._evictions += 1

    def find(self, tag: str | None = None, pattern: str | None = None) -> list[str]:
        """Live keys carrying ``tag`` or matching the glob ``pattern``."""
        with self._lock:
            if tag is not None:
                return self._state.keys_with_tag(tag)
            return self._state.keys_matching(pattern or "*")

    def progress(self) -> tuple[str, int, int, int]:
        """``(incarnation, applied seq, replicated seq, published seq)``: what ``flush`` waits on.

        Sequence numbers count in this incarnation's op-log; a restarted owner has
        a new incarnation, and clients resend what it never confirmed.
        """
        with self._lock:
            return self._incarnation, self._state.last_seq, self._replicated_seq, self._published_seq

    # -------------------------------------------------------------- replica
    def apply_write(self, answer: tuple) -> int:
        """Apply the owner's answer to a strong write (records passed through by the client)."""
        epoch, _seq, items = answer[0], answer[1], answer[2]
        self._check_epoch(epoch)
        with self._lock:
            for key, rec in items:
                if type(rec) is bytes:  # None: a delete of nothing; REFUSED: not written
                    self._state.apply_remote(key, rec)
        return len(items)

    def sync(self, epoch: int, incarnation: str, base_seq: int | None, last_seq: int, ops: list | None,
             snapshot: dict | None, transit_s: float, forget: list) -> tuple[str, int | None]:
        """Take a delta (ops after ``base_seq``) or a snapshot from the owner.

        Answers ``("ok", last_seq)``, or ``("need", seq-or-None)`` when the delta
        does not start where this copy is, so the owner resends from there (or a
        snapshot when None).
        """
        if time.monotonic() < self._held_until:
            raise UnavailableError("replication is held (fault injection)")
        self._check_epoch(epoch)
        with self._lock:
            if snapshot is not None:
                self._state.restore(snapshot)
            elif self._position != (incarnation, base_seq):
                pos = self._position
                return "need", pos[1] if pos and pos[0] == incarnation else None
            else:
                self._state.apply_delta(ops or ())
            if forget:
                self._state.forget_tombstones(forget)
            self._position = (incarnation, last_seq)
            self._freshness.caught_up(transit_s)
        return OK, last_seq

    def _check_epoch(self, epoch: int) -> None:
        if epoch < self._epoch:
            raise StaleEpochError(
                f"{self.domain}/{self.shard} slot {self.slot}: op from epoch {epoch}, current is {self._epoch}",
                epoch=epoch, current=self._epoch,
            )
        self._epoch = epoch

    # --------------------------------------------------------- replication
    def _replication_loop(self) -> None:
        heartbeat_s = self._settings.get("heartbeat_ms", 100) / 1000.0
        linger_s = self._settings.get("linger_ms", 2.0) / 1000.0
        lazy_s = self._settings.get("strong_publish_delay_ms", 20.0) / 1000.0
        tick = min(heartbeat_s, lazy_s)
        last_round = 0.0
        while not self._stopping.is_set():
            woke = self._wake.wait(timeout=tick)
            if woke and linger_s:
                # Woken by a write: linger a moment so the writes right behind it share
                # this round's calls (as Kafka's linger.ms), instead of one round each.
                time.sleep(linger_s)
            self._wake.clear()
            now = time.monotonic()
            lazy_due = self._strong_dirty and now - last_round >= lazy_s
            if not (woke or lazy_due or now - last_round >= heartbeat_s):
                continue
            self._strong_dirty = False
            last_round = now
            try:
                self._replicate_once()
                self._publish_once()
            except Exception:
                log.exception("%s/%s: replication round failed", self.domain, self.shard)
                time.sleep(0.05)

    def _payload_for(self, progress: ReplicaProgress) -> tuple:
        if progress.acked_seq is not None:
            ops = self._state.since(progress.acked_seq)
            if ops is not None:
                return progress.acked_seq, ops, None
        return None, None, self._state.snapshot()

    def _replicate_once(self) -> None:
        if not self._progress:
            with self._lock:
                self._replicated_seq = self._state.last_seq
            return
        with self._lock:
            last = self._state.last_seq
            forget, self._forget = self._forget, []
            payloads = {slot: self._payload_for(p) for slot, p in self._progress.items()}
        sent_at = time.monotonic()
        refs = {}
        for slot, (base, ops, snap) in payloads.items():
            transit = self._progress[slot].rtt_s / 2
            try:
                refs[slot] = self._peer(slot).sync.remote(
                    self._epoch, self._incarnation, base, last, ops, snap, transit, forget)
            except UnavailableError as exc:
                self._replica_failed(slot, exc)
        timeout = self._settings.get("sync_timeout_s", 5.0)
        for slot, ref in refs.items():
            try:
                status, pos = _ray.get(ref, timeout=timeout, what=f"replica slot {slot}")
            except Exception as exc:  # noqa: BLE001
                self._replica_failed(slot, exc)
                continue
            now = time.monotonic()
            with self._lock:
                progress = self._progress[slot]
                if status == OK:
                    progress.acked(pos, now, now - sent_at)
                    self._syncs["completed"] += 1
                    self._syncs["last_sync_time"] = time.time()
                else:  # the replica is elsewhere in our log (or in none): resend from there
                    progress.acked_seq = pos
                    self._wake.set()
        with self._lock:
            acked = [p.acked_seq or 0 for p in self._progress.values() if p.in_sync]
            self._replicated_seq = min([last, *acked])
            all_acked = min(p.acked_seq or 0 for p in self._progress.values())
            collected = self._state.gc_tombstones(min(all_acked, self._published_seq))
            self._forget.extend(collected)

    def _replica_failed(self, slot: int, exc: Exception) -> None:
        with self._lock:
            self._progress[slot].failed(time.monotonic(), self._settings.get("out_of_sync_after_s", 5.0))
            self._peers.pop(slot, None)  # look the handle up again: Ray may have restarted it
            self._syncs["failed"] += 1
        log.warning("%s/%s: replica slot %s: %s", self.domain, self.shard, slot, exc)

    def _publish_once(self) -> None:
        with self._lock:
            upto = self._replicated_seq
            if upto <= self._published_seq:
                return
            ops = self._state.since(self._published_seq)
        if ops is None:
            # The log no longer reaches back (the coordinator was away for a long
            # time); clients' leases have run out meanwhile, so skipping is safe.
            log.warning("%s/%s: invalidations before seq %s were trimmed", self.domain, self.shard, upto)
            self._published_seq = upto
            return
        relaxed = self._relaxed
        items = [(self.domain, key, rec, RELAXED if seq in relaxed else WRITE) for seq, key, rec in ops if seq <= upto]
        try:
            if self._coordinator is None:
                self._coordinator = _ray.get_actor(COORDINATOR, self.namespace)
            _ray.get(self._coordinator.publish.remote(items), timeout=self._settings.get("sync_timeout_s", 5.0),
                     what="coordinator publish")
        except Exception as exc:  # noqa: BLE001 - retried next round
            self._coordinator = None
            log.warning("%s/%s: publishing to the coordinator failed: %s", self.domain, self.shard, exc)
            return
        with self._lock:
            self._published_seq = max(self._published_seq, upto)
            self._relaxed = {seq for seq in self._relaxed if seq > upto}

    # ------------------------------------------------------------ inspection
    def snapshot(self) -> dict:
        with self._lock:
            return self._state.snapshot()

    def digest(self) -> str:
        with self._lock:
            return self._state.digest()

    def stats(self) -> dict:
        ctx = ray.get_runtime_context()
        with self._lock:
            out = self._state.stats()
            out.update(
                domain=self.domain, shard=self.shard, role="owner" if self.is_owner else "replica",
                epoch=self._epoch, node_id=ctx.get_node_id(), replicated_seq=self._replicated_seq,
                published_seq=self._published_seq, evictions=self._evictions, refused_writes=self._refused,
                pressure=self._pressure.snapshot().get(self._subject), pressure_changes=list(self._pressure_changes),
                policy=None if self._policy is None else type(self._policy).__name__,
                staleness_ms=0.0 if self.is_owner else self._freshness.staleness_ms(),
                syncs=dict(self._syncs),
                replicas={s: {"acked_seq": p.acked_seq, "in_sync": p.in_sync, "rtt_ms": p.rtt_s * 1000}
                          for s, p in self._progress.items()} if self.is_owner else {},
            )
            return out

    def memory(self) -> dict:
        """This copy's data and its process's memory, for ``get_cluster_memory``."""
        proc = psutil.Process()
        with self._lock:
            return {"domain": self.domain, "shard": self.shard, "slot": self.slot,
                    "node_id": ray.get_runtime_context().get_node_id(), "pid": proc.pid,
                    "rss": proc.memory_info().rss, "node_memory_total": psutil.virtual_memory().total,
                    "bytes": self._state.bytes_used, "entries": len(self._state),
                    "tombstones": self._state.tombstone_count}

    def force_gc(self) -> dict:
        """Purge expired entries and run a full garbage collection; what that freed."""
        rss = psutil.Process().memory_info().rss
        with self._lock:
            before = self._state.bytes_used
            purged = self._state.purge_expired()
            collected = gc.collect()
            freed = before - self._state.bytes_used
        self._wake.set()  # the expiry tombstones replicate
        return {"expired_purged": purged, "accounted_bytes_freed": freed, "objects_collected": collected,
                "rss_bytes_freed": rss - psutil.Process().memory_info().rss}

    def compact(self) -> dict:
        """Shrink this copy's structures (see ShardState.compact) and collect; what that freed."""
        rss = psutil.Process().memory_info().rss
        with self._lock:
            out = self._state.compact()
            gc.collect()
        out["rss_bytes_freed"] = rss - psutil.Process().memory_info().rss
        return out

    def ping(self) -> int:
        return self._epoch

    # ------------------------------------------------------- fault injection
    def hold_replication(self, seconds: float) -> None:
        """Test seam: this replica refuses syncs for ``seconds`` (its data and freshness stand still)."""
        self._held_until = time.monotonic() + seconds
