"""The shard actor: one copy (slot) of one shard of one domain.

A thin shell over ``core.shard_copy.ShardCopy`` (the data and every owner/replica
rule): it holds the lock, talks to peers and to the coordinator, and runs the
owner's replication thread. Slot 0 starts as the owner: it assigns versions
(``write``), and the replication thread pushes op-log deltas to the replicas
(batched: one call per replica carries every op since its last ack, and an empty
call every heartbeat keeps a replica's staleness bound fresh), then publishes the
replicated ops to the coordinator, which is what other clients' caches invalidate
on. Publishing only what the replicas already hold means a client that drops a
cached entry and reads a replica sees the new value.

Durable domains: the owner opens the durable store, starts from what it holds (then merges
what a live peer has), and hands it every change — at once for write_through (the write is
acknowledged only after the store holds it; if the store fails, the caller gets the error and a
retry applies the write again), every ``flush_s`` for write_behind.

Strong writes do not wait on this thread: the client passes the owner's answer
to each replica's ``apply_write`` itself (no extra hop through the owner's Python),
and returns once all have applied it.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil
import ray

from erlmcp_ray import _faults, _ray
from erlmcp_ray.actors._endpoint import start_endpoint
from erlmcp_ray.actors._process import gc_stats, tune_gc
from erlmcp_ray.actors.options import CONTROL, shard_name
from erlmcp_ray.client._transport import COORDINATOR, Copy
from erlmcp_ray.config import DurableConfig, DurableKind
from erlmcp_ray.core.checkpoint import (
    PREFIX,
    Checkpoint,
    checkpoint_ids,
    manifest_name,
    pack_shard,
    shard_blob_name,
    unpack_shard,
)
from erlmcp_ray.core.failover import CheckTokens
from erlmcp_ray.core.invalidation import CONFLICT
from erlmcp_ray.core.layout import Layout, layout_key
from erlmcp_ray.core.pressure import AllowGrowth, CollectGarbage, RefuseGrowth, Warn
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.wire import OK, Progress, ReadAnswer, WriteAnswer, WriteOp
from erlmcp_ray.errors import CorruptDataError, InvalidValueError, StaleEpochError, UnavailableError
from erlmcp_ray.storage import open_store

log = logging.getLogger(__name__)

#: records per store write when the replication thread flushes a backlog
_FLUSH_CHUNK = 5000

#: how long a replication round waits for answers; a replica slower than that straggles (see
#: ``ShardActor._replicate_round``)
ROUND_WAIT_S = 0.1

#: how long an owner read waits for the replicas to confirm the key's last strong write (a round
#: takes a replica round trip, ~0.1-1 ms) before it answers UnavailableError and the client retries
CONFIRM_WAIT_S = 0.25


def _exclusive(fn: Any) -> Any:
    """The call holds ``ShardActor._serial``: no direct-endpoint request runs beside it (see ``_serve``)."""

    @functools.wraps(fn)
    def run(self: ShardActor, *args: Any, **kwargs: Any) -> Any:
        with self._serial:
            return fn(self, *args, **kwargs)

    return run


class ShardActor:
    def __init__(self, domain: str, shard: int, slot: int, copies: int, namespace: str, epoch: int,
                 settings: ShardSettings, joining: bool = False) -> None:
        tune_gc()
        # Ray reruns this constructor with the arguments of the first start: if the persistence
        # selector has moved the domain since, its copies and durable mode are the layout's.
        layout = Layout.decode(_ray.kv_get(layout_key(namespace)))
        shape = layout.shape.get(domain)
        if shape is not None:
            copies, settings = shape[0], replace(settings, durable_mode=shape[1])
        self.domain, self.shard, self.slot, self.copies = domain, shard, slot, copies
        self.namespace = namespace
        self._settings = settings
        self._lock = threading.RLock()
        self._serial = threading.RLock()  # see _serve
        # The topology says which slot owns the shard (not slot 0 after a failover), and from which epoch.
        self._copy = ShardCopy(domain, shard, slot, copies, max(epoch, layout.epoch(domain, shard)), settings)
        self._checks = CheckTokens()  # the supervisor's health checks renew the lease from their sending
        self._copy.owner_slot = layout.owner(domain, shard)
        self._peers: dict[int, Any] = {}
        self._place = shard_name(domain, shard, slot)
        self._seam = _faults.seam(namespace)  # a (test) partition cuts some peers off
        self._wake = threading.Event()
        self._round_lock = threading.Lock()  # one replication round at a time (the loop's, or a read's)
        self._straggling: dict[int, tuple[Any, float, int]] = {}  # slot -> (its sync, sent at, round gen)
        self._stopping = threading.Event()
        self._held_until = 0.0
        self._strong_dirty = False
        self._store = None
        self._flush_lock = threading.Lock()  # store writes in the order their changes were taken
        self._open_lock = threading.Lock()
        self._store_failing = False  # the last flush failed: write_behind backlog is bounded
        self._flushing = False  # a batch is on its way to the store
        self._catching_up = False  # set_layout turned the store on: its old rows are being read
        self._stale_failed = False
        self._ckpt_store = None  # memory domains: the store, opened for checkpoints only
        self._staged: dict | None = None  # a checkpoint image read and checked, not yet applied
        self._restored: dict | None = None  # a one-copy memory shard restarted from a checkpoint
        # An owner of a durable domain serves nothing before it loaded its shard from the store.
        self._durable_ready = settings.durable_mode == "off"
        if _ray.was_restarted():
            # A restarted owner acts as one only once a replica or the supervisor confirmed it (a
            # replica was perhaps promoted meanwhile): no lease from the start.
            self._copy.lease_until = float("-inf")
            self._recover_from_peers()
            if copies == 1 and settings.durable_mode == "off":
                self._restore_latest_checkpoint()
        # A restarted or replacement replica takes strong writes once its owner's first sync arrived.
        self._copy.joining = (joining or _ray.was_restarted()) and not self._copy.is_owner
        if not self._durable_ready:
            try:
                self._open_durable()
            except (UnavailableError, CorruptDataError) as exc:
                # Never fail the constructor over it: Ray would not restart this actor again. Every
                # call tries again and, until it works, answers the error (UnavailableError, which
                # clients retry, or CorruptDataError naming what is corrupt) -- never an empty shard.
                log.warning("%s/%s: durable store not loaded, serving nothing until it is: %s", domain,
                            shard, exc)
        self._direct = self._start_direct()
        self._to_peers = self._replica_transport()
        # Every copy runs the loop: it works while the copy is the owner (a replica may be promoted).
        self._thread = threading.Thread(target=self._replication_loop, name="erlmcp-replication", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the direct data plane
    #: what the direct endpoint serves: the data path (everything else stays a Ray call)
    DIRECT_METHODS = ("read", "write", "apply_write", "progress", "find", "ping", "sync")

    def _start_direct(self) -> Any:
        """The socket endpoint beside this actor (``erlmcp_ray.direct``), on this node's address; None
        when the system runs with ``transport.kind = "ray"``, or has no secret, or the port fails
        (clients then use Ray calls)."""
        if not self._settings.direct:
            return None
        return start_endpoint(self.namespace, self._serve, max_frame=self._settings.max_frame,
                              tls=self._settings.tls, who=self._place)

    def _replica_transport(self) -> Any:
        """How this copy, as owner, sends replication rounds to its replicas: over their direct
        endpoints when the system runs the direct plane (Ray calls for a replica without one), else
        Ray calls. The fault seam names this copy either way."""
        from erlmcp_ray.client._transport import RayTransport

        ray_transport = RayTransport(self.namespace, place=self._place)
        if self._direct is None:
            return ray_transport
        from erlmcp_ray.client._direct_transport import DirectTransport, shared_pool

        return DirectTransport(ray_transport, shared_pool(self.namespace, self._settings.max_frame, self._settings.tls))

    def _serve(self, method: str, args: list) -> Any:
        """One request from the direct endpoint's thread. The Ray actor runs one data call at a time;
        this thread runs beside it, so the calls that change the copy's role or shape as a whole
        (promote, set_layout, recover, absorb, apply_staged) hold ``_serial``, which this takes too."""
        if method not in self.DIRECT_METHODS:
            raise InvalidValueError(f"{method!r} is not served by the direct endpoint")
        with self._serial:
            return getattr(self, method)(*args)

    @ray.method(concurrency_group=CONTROL)
    def endpoint(self) -> dict | None:
        """Where this copy's direct endpoint listens (``{"host", "port", "incarnation"}``), or None."""
        if self._direct is None:
            return None
        host, port = self._direct.address
        return {"host": host, "port": port, "incarnation": self._copy.incarnation}

    def _open_durable(self) -> None:
        with self._open_lock:
            if self._durable_ready:
                return
            store = open_store(DurableConfig(**self._settings.store), self.namespace)
            if self._copy.is_owner:
                image = store.load_shard(self.domain, self.shard)
                with self._lock:
                    # Our epoch may be behind the store's (a failover or recovery before a full restart):
                    # writes under it would be refused.
                    self._copy.epoch = max(self._copy.epoch, image.epoch)
                    self._copy.load_durable(image.records)
                log.info("%s/%s: %d records loaded from %s", self.domain, self.shard, len(image.records),
                         store.location)
            self._store = store
            self._durable_ready = True

    def _ready(self) -> None:
        if not self._durable_ready:
            self._open_durable()

    def _peer(self, slot: int) -> Any:
        self._seam.check(self._place, shard_name(self.domain, self.shard, slot))
        if slot not in self._peers:
            self._peers[slot] = _ray.get_actor(shard_name(self.domain, self.shard, slot), self.namespace)
        return self._peers[slot]

    def _restore_latest_checkpoint(self) -> None:
        """A restarted one-copy memory shard has no peer and no stored rows: it starts from the latest
        checkpoint that holds it (when there is a durable tier to keep checkpoints in). What was written
        after that checkpoint is lost; the log line and ``stats()["restored_from_checkpoint"]`` say
        which checkpoint, and how old it was."""
        if DurableConfig(**self._settings.store).kind is DurableKind.NONE:
            return
        try:
            store = self._checkpoint_store()
            for checkpoint_id in checkpoint_ids(store.list_blobs(PREFIX)):
                raw = store.get_blob(manifest_name(checkpoint_id))
                if raw is None:
                    continue
                cp = Checkpoint.decode(raw, manifest_name(checkpoint_id))
                entry = next((s for s in cp.shards if (s.domain, s.shard) == (self.domain, self.shard)), None)
                if entry is None:
                    continue
                image = self._image(entry.blob, entry.sha256)
                self._copy.recover(image)
                age = time.time() - cp.created_at
                self._restored = {"checkpoint": cp.id, "created_at": cp.created_at, "age_s": round(age, 3),
                                  "entries": len(image["records"])}
                log.warning("%s/%s: one copy, restarted: %d entries restored from checkpoint %s taken %.1f s ago; "
                            "writes after it are lost", self.domain, self.shard, len(image["records"]), cp.id, age)
                return
            log.warning("%s/%s: one copy, restarted, and no checkpoint holds it: it starts empty", self.domain,
                        self.shard)
        except Exception:  # never fail the constructor (Ray would not restart it again)
            log.exception("%s/%s: restoring the latest checkpoint failed; the shard starts empty", self.domain,
                          self.shard)

    def _recover_from_peers(self) -> None:
        """A restarted copy starts empty; take a peer's state (and its view of the shard's owner and
        epoch, which may be newer than the topology this constructor read) before serving."""
        for slot in range(self.copies):
            if slot == self.slot:
                continue
            try:
                peer = self._peer(slot)
                health, snap = _ray.get([peer.health.remote(), peer.snapshot.remote()], timeout=30,
                                        what=f"slot {slot} snapshot")
                if health["epoch"] > self._copy.epoch and health["owner_slot"] >= 0:
                    self._copy.adopt(health["owner_slot"], health["epoch"])
            except Exception as exc:  # noqa: BLE001 - try the next peer
                log.warning("%s/%s slot %s: recovery from slot %s failed: %s", self.domain, self.shard, self.slot,
                            slot, exc)
                continue
            self._copy.recover(snap)
            log.info("%s/%s slot %s recovered %d entries from slot %s", self.domain, self.shard, self.slot,
                     len(self._copy.state), slot)
            return

    # ---------------------------------------------------------------- owner
    def write(self, client_id: str, request_seq: int, ops: list[WriteOp], full: bool = True,
              chained: bool = False, stash_ok: bool = False) -> WriteAnswer:
        """Apply a batch of writes (see ``ShardCopy.write``). ``chained``: the client passes this
        answer to every replica itself (a strong write), so replication can wait for a lazy round.
        ``stash_ok`` (eventual batches): a copy that cannot act as owner now (cut off from it) keeps
        them in its stash, which the supervisor's heal merges into the owner."""
        self._ready()
        self._check_backlog()
        with self._lock:
            answer = self._copy.write(client_id, request_seq, ops, full, stash_ok, strong=chained)
            effects, self._copy.effects = self._copy.effects, []
        if answer.stashed:
            return answer
        for effect in effects:
            self._act(effect)
        if self._store is not None and self._settings.durable_mode == "write_through":
            # This call's keys only: a backlog of other changes (a migration's first copy of the
            # shard, expiries) goes from the replication thread and must not hold this write up.
            # When the store refuses, the write stays applied (readers may see it: it is
            # indeterminate until acknowledged) and its keys stay dirty; the caller's retry (same
            # request seq) gets the first answer again -- the write is not applied twice -- and
            # is acknowledged once this flush succeeds.
            self.flush_durable(keys=[op[0] for op in ops])
        if chained:
            self._strong_dirty = True
        else:
            self._wake.set()
        return answer

    @_exclusive
    def set_layout(self, copies: int, durable_mode: str) -> dict:
        """The persistence selector migrates this domain (owner only): replicate to ``copies - 1``
        replicas from now on, and use the durable tier as ``durable_mode`` says. Turning it on makes
        every record of the shard pending for the store (and every key an earlier stint on it left
        there, to be deleted): the replication thread writes them in chunks, so calls are served
        meanwhile, and ``stats()["durable_pending"]`` reaches 0 when the store holds the shard.
        Turning it off flushes what was pending first. Returns the records made pending."""
        self._ready()
        with self._lock:
            self._copy.set_copies(copies)
            self.copies = copies
            for slot in [s for s in self._peers if s >= copies]:
                self._peers.pop(slot)
        pending = 0
        mode = self._settings.durable_mode
        if durable_mode != mode:
            if durable_mode == "off":
                pending = self.flush_durable()
                self._settings = replace(self._settings, durable_mode="off")
                with self._lock:
                    self._copy.state.dirty = None  # no longer tracked
                store, self._store = self._store, None
                if store is not None:
                    store.close()
            else:
                store = self._store or open_store(DurableConfig(**self._settings.store), self.namespace)
                with self._lock:  # tracked from here on: every write after this is pending too
                    self._copy.state.dirty = set(self._copy.state.stored_keys())
                    pending = len(self._copy.state.dirty)
                self._catching_up = True
                self._store = store
                self._settings = replace(self._settings, durable_mode=durable_mode)
                threading.Thread(target=self._forget_stale_rows, name="erlmcp-adopt-store", daemon=True).start()
        self._wake.set()
        return {"copies": copies, "durable_mode": durable_mode, "pending": pending}

    def _forget_stale_rows(self) -> None:
        """Keys an earlier stint on the durable tier left in the store that this shard no longer
        holds: pending too, so the flush deletes them (a reload must not resurrect them)."""
        try:
            stale = list(self._store.load_shard(self.domain, self.shard).records)
            with self._lock:
                self._copy.state.mark_dirty(stale)
        except Exception:
            log.exception("%s/%s: reading the store's old rows failed; they may come back on a reload",
                          self.domain, self.shard)
            self._stale_failed = True
        finally:
            self._catching_up = False
            self._wake.set()

    def _check_backlog(self) -> None:
        """write_behind with the store failing: past ``max_backlog`` held changes, refuse writes (the
        client retries them) rather than hold an ever larger window of loss."""
        if not self._store_failing or self._settings.durable_mode != "write_behind":
            return
        backlog = len(self._copy.state.dirty or ())
        if backlog < self._settings.max_backlog:
            return
        try:  # the store may be back: then the backlog goes now, and this write is taken
            self.flush_durable()
            return
        except Exception:  # noqa: BLE001 - still unreachable: refuse, below
            backlog = len(self._copy.state.dirty or ())
        if backlog >= self._settings.max_backlog:
            raise UnavailableError(
                f"{self.domain}/{self.shard}: the durable store {self._store.location} is unreachable and "
                f"{backlog} changes wait for it (durable.max_backlog = {self._settings.max_backlog}); "
                f"writes are refused until it is back, reads are served")

    def flush_durable(self, limit: int | None = None, keys: list[str] | None = None) -> int:
        """Hand the changes since the last flush to the durable store (``limit``: at most that many;
        ``keys``: only those); how many records."""
        self._ready()
        if self._store is None:
            return 0
        with self._flush_lock:
            with self._lock:
                records, deletes = self._copy.state.take_dirty(limit, keys)
                epoch = self._copy.epoch
                self._flushing = bool(records or deletes)  # stats() never sees them in neither place
            if not self._flushing:
                return 0
            try:
                self._store.write_batch(self.domain, self.shard, epoch, records, deletes)
            except Exception:
                self._store_failing = True
                with self._lock:  # offered again next time
                    self._copy.state.mark_dirty([k for k, _ in records] + list(deletes))
                raise
            finally:
                self._flushing = False
            self._store_failing = False
            return len(records) + len(deletes)

    def _act(self, effect: Any) -> None:
        if isinstance(effect, Warn):
            log.warning("%s", effect.message)
        elif isinstance(effect, CollectGarbage):
            gc.collect(0)  # young generation only here: the write path must stay fast
        elif isinstance(effect, (RefuseGrowth, AllowGrowth)):
            log.warning("%s: %s", effect.subject, "refusing writes that grow it" if isinstance(effect, RefuseGrowth)
                        else "accepting writes again")

    def read(self, key: str, max_staleness_ms: float | None = None, acked: Any = None) -> ReadAnswer:
        """An owner read of a key whose last strong write the replicas have not confirmed yet runs a
        replication round now and answers once they did (or ``UnavailableError`` after
        ``CONFIRM_WAIT_S``: the client retries) -- never the unconfirmed value (see
        ``ShardCopy.unconfirmed``). ``acked``: the reader saw that write acknowledged (it wrote it):
        no round is needed (``ShardCopy.take_acked``)."""
        self._ready()
        with self._lock:
            if acked is not None and max_staleness_ms is None:
                self._copy.take_acked(key, acked)
            if max_staleness_ms is not None or self._copy.unconfirmed(key) is None:
                return self._copy.read(key, max_staleness_ms)
        self._confirm(key)
        with self._lock:
            return self._copy.read(key, max_staleness_ms)

    def _confirm(self, key: str) -> None:
        """Run replication rounds from this thread (no hand-off to the replication thread: two thread
        wake-ups cost more than the round) until the replicas confirmed ``key``'s last strong write:
        two rounds at most (a replica elsewhere in the log needs a second), within ``CONFIRM_WAIT_S``.
        A round already running finishes first: it may have started before the write, and rounds
        never overlap."""
        deadline = time.monotonic() + CONFIRM_WAIT_S
        for _ in range(2):
            left = deadline - time.monotonic()
            if left <= 0 or not self._round_lock.acquire(timeout=left):
                return
            try:
                with self._lock:
                    if not self._copy.is_owner or self._copy.unconfirmed(key) is None:
                        return
                self._replicate_round(lambda: self._copy.unconfirmed(key) is None,
                                      max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - the read answers UnavailableError; the loop goes on
                log.warning("%s/%s: a confirming replication round failed: %s", self.domain, self.shard, exc)
                return
            finally:
                self._round_lock.release()

    def find(self, tag: str | None = None, pattern: str | None = None) -> list[str]:
        """Live keys carrying ``tag`` or matching the glob ``pattern``."""
        self._ready()
        with self._lock:
            return self._copy.find(tag, pattern)

    def progress(self) -> Progress:
        """How far this owner applied, replicated and published: what ``flush`` waits on.

        Sequence numbers count in this incarnation's op-log; a restarted owner has
        a new incarnation, and clients resend what it never confirmed.
        """
        self._ready()
        with self._lock:
            return self._copy.progress()

    # -------------------------------------------------------------- replica
    def apply_write(self, answer: WriteAnswer) -> int:
        with self._lock:
            return self._copy.apply_write(answer)

    def sync(self, epoch: int, incarnation: str, base_seq: int | None, last_seq: int, ops: list | None,
             snapshot: dict | None, transit_s: float, forget: list) -> tuple[str, int | None]:
        if time.monotonic() < self._held_until:
            raise UnavailableError("replication is held (fault injection)")
        with self._lock:
            return self._copy.sync(epoch, incarnation, base_seq, last_seq, ops, snapshot, transit_s, forget)

    # --------------------------------------------------------- replication
    def _replication_loop(self) -> None:
        heartbeat_s = self._settings.heartbeat_ms / 1000.0
        linger_s = self._settings.linger_ms / 1000.0
        lazy_s = self._settings.strong_publish_delay_ms / 1000.0
        last_round = 0.0
        last_flush = time.monotonic()  # the first write_behind flush one flush_s after the start, as every later one
        flush_pause = self._settings.flush_s
        while not self._stopping.is_set():
            # The store can come and go (set_layout): the tick follows it.
            tick = min(heartbeat_s, lazy_s, self._settings.flush_s if self._store is not None else heartbeat_s)
            woke = self._wake.wait(timeout=tick)
            if not self._copy.is_owner:  # a replica (or a deposed owner): nothing to replicate or flush
                self._wake.clear()
                continue
            if woke and linger_s:
                # Woken by a write: linger a moment so the writes right behind it share
                # this round's calls (as Kafka's linger.ms), instead of one round each.
                time.sleep(linger_s)
            self._wake.clear()
            now = time.monotonic()
            if self._store is not None and now - last_flush >= flush_pause:
                # write_behind: this is its flush; write_through: expiries, evictions, collected
                # tombstones (changes no write call flushed)
                last_flush = now
                try:
                    # In chunks: a call waiting for the flush lock (a write-through write) gets it
                    # between two, instead of after a migration's whole first copy of the shard.
                    while self.flush_durable(limit=_FLUSH_CHUNK) >= _FLUSH_CHUNK:
                        pass
                    flush_pause = self._settings.flush_s
                except Exception as exc:  # noqa: BLE001 - kept dirty, retried with backoff
                    flush_pause = min(5.0, flush_pause * 2)
                    log.warning("%s/%s: durable flush to %s failed (next try in %.1f s): %s", self.domain,
                                self.shard, self._store.location, flush_pause, exc)
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

    def _replicate_once(self) -> None:
        with self._round_lock:
            self._replicate_round()

    def _replicate_round(self, enough: Callable[[], bool] | None = None, wait_s: float | None = None) -> None:
        """One round: each replica's delta (or snapshot), answers taken as they come, for at most
        ``ROUND_WAIT_S`` (a read's round: ``wait_s``, or until ``enough()`` holds). A replica that has
        not answered by then *straggles*: later rounds send it nothing until its answer is in (taken
        then, as if on time) or its ``sync_timeout_s`` ran out (then it failed) -- so a paused
        replica holds up neither the other replicas' rounds nor what waits on them (lease renewals,
        confirmations of strong writes)."""
        copy = self._copy
        self._collect_stragglers(copy)
        with self._lock:
            last, forget, payloads = copy.replication_payloads(skip=self._straggling)
            gen = copy.round_gen
        if not payloads:
            return
        sent_at = time.monotonic()
        refs = {}
        for slot, (base, ops, snap) in payloads.items():
            transit = copy.progress_of[slot].rtt_s / 2
            try:
                refs[slot] = self._to_peers.submit(Copy(self.domain, self.shard, slot), "sync", copy.epoch,
                                                   copy.incarnation, base, last, ops, snap, transit, forget)
            except UnavailableError as exc:
                self._replica_failed(slot, exc)
        deadline = sent_at + min(self._settings.sync_timeout_s, ROUND_WAIT_S if wait_s is None else wait_s)
        waiting = dict(refs)
        while waiting and not (enough is not None and enough()):
            ready = self._to_peers.ready_any(list(waiting.values()), max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for slot in [s for s, r in waiting.items() if any(r is x for x in ready)]:
                self._sync_answer(copy, slot, waiting.pop(slot), sent_at)
        for slot, ref in waiting.items():
            self._straggling[slot] = (ref, sent_at, gen)
        with self._lock:
            copy.finish_round(last)

    def _collect_stragglers(self, copy: ShardCopy) -> None:
        """Take the answers of earlier rounds' syncs that came since, and fail the replicas past their
        sync timeout. A sync sent before a reset of the replicas' progress (a promotion, a restore)
        means nothing now: dropped, answered or not."""
        if not self._straggling:
            return
        now = time.monotonic()
        for slot, (ref, sent_at, gen) in list(self._straggling.items()):
            if gen != copy.round_gen:
                del self._straggling[slot]
            elif self._to_peers.ready_any([ref], 0.0):
                del self._straggling[slot]
                self._sync_answer(copy, slot, ref, sent_at)
            elif now - sent_at > self._settings.sync_timeout_s:
                del self._straggling[slot]
                self._replica_failed(slot, UnavailableError(
                    f"replica slot {slot} did not answer a sync within {self._settings.sync_timeout_s} s"))

    def _sync_answer(self, copy: ShardCopy, slot: int, ref: Any, sent_at: float) -> None:
        try:
            status, pos = self._to_peers.result(ref, 1.0, f"replica slot {slot}")
        except Exception as exc:  # noqa: BLE001
            self._replica_failed(slot, exc)
            return
        with self._lock:
            if status == OK:
                copy.renew_lease(sent_at)  # the replica took this round at our epoch: still the owner
            if copy.sync_answered(slot, status, pos, time.monotonic() - sent_at):
                self._wake.set()  # the replica is elsewhere in our log (or in none): resend from there

    def _replica_failed(self, slot: int, exc: Exception) -> None:
        with self._lock:
            if isinstance(exc, StaleEpochError) and self._copy.is_owner:
                # The replica is at a later epoch: another copy was promoted while we were away.
                log.warning("%s/%s slot %s: deposed (%s); a replica from now on", self.domain, self.shard,
                            self.slot, exc)
                self._copy.step_down()
            self._copy.replica_failed(slot)
            self._peers.pop(slot, None)  # look the handle up again: Ray may have restarted it
        self._to_peers.forget(Copy(self.domain, self.shard, slot))
        log.warning("%s/%s: replica slot %s: %s", self.domain, self.shard, slot, exc)

    def _publish_once(self) -> None:
        with self._lock:
            batch = self._copy.publish_batch()
        if batch is None:
            return
        upto, items = batch
        if items is None:
            # The log no longer reaches back (the coordinator was away for a long
            # time); clients' leases have run out meanwhile, so skipping is safe.
            log.warning("%s/%s: invalidations before seq %s were trimmed", self.domain, self.shard, upto)
        else:
            try:
                self._publish(items)
            except Exception as exc:  # noqa: BLE001 - retried next round
                self._to_peers.forget(COORDINATOR)  # restarted, say: found again next round
                log.warning("%s/%s: publishing to the coordinator failed: %s", self.domain, self.shard, exc)
                return
        with self._lock:
            self._copy.published(upto)

    def _publish(self, items: list) -> None:
        # Over the coordinator's direct endpoint when the system runs the direct plane (a Ray call
        # cost this thread ~1 ms and the owner's endpoint the GIL meanwhile, once per round); else,
        # or for a batch larger than max_frame, a Ray call. The fault seam is checked either way.
        self._to_peers.call(COORDINATOR, "publish", items, timeout=self._settings.sync_timeout_s)

    def sync_now(self) -> int:
        """Anti-entropy now (``client.sync``): a replication round and a durable flush right away;
        the op-log position they must reach (``progress()`` shows when they did)."""
        self._ready()
        if self._store is not None:
            self.flush_durable()
        with self._lock:
            target = self._copy.state.last_seq
        self._wake.set()
        return target

    # ------------------------------------------------------------ checkpoints
    def _checkpoint_store(self) -> Any:
        if self._store is not None:
            return self._store
        if self._ckpt_store is None:  # a memory domain: opened for checkpoints only
            self._ckpt_store = open_store(DurableConfig(**self._settings.store), self.namespace)
        return self._ckpt_store

    @ray.method(num_returns=2)
    def checkpoint_shard_hot(self, checkpoint_id: str) -> tuple[dict, bytes]:
        """``checkpoint_shard``, and the blob itself as a second return value: an object in Ray's object
        store owned by the caller (the supervisor), kept as the checkpoint's hot copy for fast
        restores. The durable blob is written first, so the object store is never the only copy."""
        return self._checkpoint_shard(checkpoint_id)

    def checkpoint_shard(self, checkpoint_id: str) -> dict:
        """Write this shard, as it is now (one cut, under the lock), to the durable store as one blob
        of checkpoint ``checkpoint_id``; its manifest entry (``core.checkpoint.ShardEntry`` fields)."""
        return self._checkpoint_shard(checkpoint_id)[0]

    def _checkpoint_shard(self, checkpoint_id: str) -> tuple[dict, bytes]:
        self._ready()
        with self._lock:
            snap, epoch, incarnation = self._copy.state.snapshot(), self._copy.epoch, self._copy.incarnation
            entries = len(self._copy.state)
        data, sha = pack_shard(self.domain, self.shard, epoch, snap, incarnation)
        name = shard_blob_name(checkpoint_id, self.domain, self.shard)
        self._checkpoint_store().put_blob(name, data)
        return {"domain": self.domain, "shard": self.shard, "blob": name, "sha256": sha, "entries": entries,
                "bytes": len(data), "incarnation": incarnation, "seq": snap["seq"]}, data

    def stage_checkpoint(self, blob: str, sha256: str, data: bytes | None = None) -> int:
        """Read this shard's image of a checkpoint and check it (nothing changes yet); its entries.
        ``data``: the blob's hot copy from the object store (Ray resolves the reference), checked
        against the same SHA-256; None: read from the durable store."""
        self._ready()
        if data is not None:
            self._staged = unpack_shard(data, sha256, f"{blob} (object store)")
            return len(self._staged["records"])
        data = self._checkpoint_store().get_blob(blob)
        if data is None:
            raise CorruptDataError(f"checkpoint shard {blob} is missing from {self._checkpoint_store().location}",
                                   where=blob)
        self._staged = unpack_shard(data, sha256, blob)
        return len(self._staged["records"])

    def discard_staged(self) -> None:
        self._staged = None

    @_exclusive
    def apply_staged(self) -> dict:
        """Become the staged checkpoint image (see ``ShardCopy.restore_image``); a durable owner then
        writes the restored shard to the store, deleting rows the checkpoint does not have."""
        if self._staged is None:
            raise CorruptDataError(f"{self.domain}/{self.shard}: no checkpoint staged (stage_checkpoint first)")
        with self._lock:
            image = dict(self._staged["records"])
            raw = self._copy.state.raw_record
            dropped = sum(1 for k in self._copy.state.stored_keys() if image.get(k) != raw(k))
            self._copy.restore_image(self._staged)
            if self._store is not None:
                self._copy.state.dirty = set(self._copy.state.stored_keys())
                self._catching_up = True
            entries, epoch = len(self._copy.state), self._copy.epoch
        self._staged = None
        if self._store is not None:
            threading.Thread(target=self._forget_stale_rows, name="erlmcp-restore-rows", daemon=True).start()
        self._wake.set()
        return {"entries": entries, "epoch": epoch, "dropped": dropped}

    # ------------------------------------------------------------ recovery (see core.recovery)
    def _image(self, blob: str, sha256: str) -> dict:
        data = self._checkpoint_store().get_blob(blob)
        if data is None:
            raise CorruptDataError(f"checkpoint shard {blob} is missing", where=blob)
        return unpack_shard(data, sha256, blob)

    @_exclusive
    def recover(self, mode: str, blob: str | None = None, sha256: str | None = None) -> dict:
        """Recover this shard (owner only) in ``mode`` (full | delta | peer; snapshot goes through
        stage_checkpoint/apply_staged); every mode ends in a new epoch, so the replicas replace
        their state with the owner's."""
        self._ready()
        out: dict[str, Any] = {"mode": mode}
        if mode == "full":
            sources = []
            for slot in [s for s in range(self.copies) if s != self.slot]:  # the owner need not be slot 0
                try:
                    snap = _ray.get(self._peer(slot).snapshot.remote(), timeout=self._settings.sync_timeout_s,
                                    what=f"replica slot {slot}")
                    sources.append((f"replica slot {slot}", snap["records"]))
                except Exception as exc:  # noqa: BLE001 - a dead replica is not a source
                    out.setdefault("skipped", []).append(f"replica slot {slot}: {exc}")
            if self._store is not None:
                sources.append(("durable store", list(self._store.load_shard(self.domain, self.shard).records.items())))
            if blob is not None:
                sources.append(("checkpoint", self._image(blob, sha256)["records"]))
            merged = conflicts = 0
            with self._lock:
                for _name, records in sources:
                    result = self._copy.join(records)
                    merged += result.changed
                    conflicts += result.conflicts
                out.update(sources=[n for n, _ in sources], merged=merged, conflicts=conflicts)
        elif mode == "delta":
            image = self._image(blob, sha256)
            with self._lock:
                try:
                    out["replayed"] = self._copy.replay_from(image)
                except ValueError as exc:
                    raise InvalidValueError(str(exc), where="mode") from None
        elif mode != "peer":
            raise InvalidValueError(f"recover: mode {mode!r} is not one a shard runs itself", where="mode")
        with self._lock:
            out["epoch"] = self._copy.bump_epoch()
            out["entries"] = len(self._copy.state)
        self._wake.set()
        return out

    # ------------------------------------------------------------ inspection
    def snapshot(self) -> dict:
        self._ready()
        with self._lock:
            return self._copy.state.snapshot()

    def digest(self) -> str:
        with self._lock:
            return self._copy.state.digest()

    def stats(self) -> dict:
        node_id = ray.get_runtime_context().get_node_id()
        with self._lock:
            return {**self._copy.stats(), "node_id": node_id, "durable": self._settings.durable_mode,
                    "durable_location": None if self._store is None else self._store.location,
                    "durable_pending": len(self._copy.state.dirty or ()) + self._flushing + self._catching_up,
                    "durable_stale_rows_failed": self._stale_failed, "durable_failing": self._store_failing,
                    "restored_from_checkpoint": self._restored,
                    "direct": None if self._direct is None else self._direct.describe(),
                    # how this copy, as owner, reached its replicas and the coordinator (syncs, publications)
                    "to_peers": getattr(self._to_peers, "transport_stats", lambda: None)(),
                    "gc": gc_stats()}

    def memory(self) -> dict:
        """This copy's data and its process's memory, for ``get_cluster_memory``."""
        proc = psutil.Process()
        state = self._copy.state
        vm = psutil.virtual_memory()
        with self._lock:
            return {"domain": self.domain, "shard": self.shard, "slot": self.slot,
                    "node_id": ray.get_runtime_context().get_node_id(), "pid": proc.pid,
                    "rss": proc.memory_info().rss, "node_memory_total": vm.total,
                    "node_memory_used": vm.total - vm.available, "record_bytes": state.record_bytes,
                    "bytes": state.bytes_used, "entries": len(state), "tombstones": state.tombstone_count}

    def force_gc(self) -> dict:
        """Purge expired entries and run a full garbage collection; what that freed."""
        rss = psutil.Process().memory_info().rss
        state = self._copy.state
        with self._lock:
            before = state.bytes_used
            purged = state.purge_expired()
            collected = gc.collect()
            freed = before - state.bytes_used
        self._wake.set()  # the expiry tombstones replicate
        return {"expired_purged": purged, "accounted_bytes_freed": freed, "objects_collected": collected,
                "rss_bytes_freed": rss - psutil.Process().memory_info().rss}

    def evict(self, ratio: float) -> dict:
        """Owner: evict in the domain's policy order until this shard uses at most ``ratio`` of its
        limit (the ``trigger_eviction`` alert action); the evictions replicate as deletes."""
        self._ready()
        with self._lock:
            self._copy.check_owner()
            evicted = self._copy.evict_to_ratio(ratio)
            out = {"evicted": evicted, "evictable": self._copy.policy is not None,
                   "bytes": self._copy.state.bytes_used}
        self._wake.set()
        return out

    def evict_amount(self, nbytes: int, entries: int = 0) -> dict:
        """Owner: evict at least ``nbytes`` bytes and ``entries`` entries in the domain's policy order
        (a node over its limits asks for this shard's share, see ``core.node_limits``)."""
        self._ready()
        with self._lock:
            self._copy.check_owner()
            evicted = self._copy.evict_amount(nbytes, entries)
            out = {"evicted": evicted, "bytes": self._copy.state.bytes_used}
        self._wake.set()
        return out

    def set_node_refusal(self, reason: str | None) -> bool:
        """Refuse growing writes because a node holding a copy of this shard is over its limits
        (``reason``), or accept them again (None). Whether that changed anything."""
        self._ready()
        with self._lock:
            changed = self._copy.set_node_refusal(reason)
        if changed:
            log.warning("%s/%s/%s: %s", self.domain, self.shard, self.slot,
                        reason or "node limits: growing writes accepted again")
        return changed

    def compact(self) -> dict:
        """Shrink this copy's structures (see ShardState.compact) and collect; what that freed."""
        rss = psutil.Process().memory_info().rss
        with self._lock:
            out = self._copy.state.compact()
            gc.collect()
        out["rss_bytes_freed"] = rss - psutil.Process().memory_info().rss
        return out

    def ping(self) -> int:
        return self._copy.epoch

    # ------------------------------------------------------------ failover (the supervisor's calls)
    @ray.method(concurrency_group=CONTROL)
    def health(self, owner_slot: int | None = None, epoch: int = 0, since: tuple | None = None) -> dict:
        """The supervisor's health check, carrying its topology for this shard (``owner_slot`` from
        ``epoch`` on; 0: the epoch the copies hold) and ``since``, the token of this copy's answer to
        its previous check with the seconds it held that answer (``core.failover.CheckTokens``). The
        owner it names has its lease renewed from when the check was sent (a check that waited while
        this process was paused renews nothing); a copy that is behind the topology adopts it (a
        deposed owner becomes a replica). This copy's facts, with a token for the next check."""
        copy = self._copy
        sent = self._checks.sent_after(since)
        if owner_slot is not None and epoch > copy.epoch:
            with self._lock:  # rare (a failover): a change of role
                copy.adopt(owner_slot, epoch)
        elif sent is not None and owner_slot == copy.slot and copy.is_owner and epoch in (0, copy.epoch):
            # Not under the lock: a long call holding it (a large shard's snapshot or restore) must not
            # make this copy look dead. A lease is one float that only grows.
            copy.renew_lease(sent)
        facts = self._facts()
        facts["check_token"] = self._checks.issue()
        return facts

    def _facts(self) -> dict:
        copy = self._copy
        pos = copy._position
        return {"slot": self.slot, "epoch": copy.epoch, "owner_slot": copy.owner_slot, "is_owner": copy.is_owner,
                "incarnation": copy.incarnation, "position": None if pos is None else list(pos),
                "sync_age_s": copy.sync_age_s(), "last_seq": copy.state.last_seq, "stash": len(copy.stash),
                "node_id": ray.get_runtime_context().get_node_id()}

    @ray.method(concurrency_group=CONTROL)
    def adopt(self, owner_slot: int, epoch: int) -> dict:
        """Fenced by a failover: ``owner_slot`` owns the shard from ``epoch`` on (an older epoch's
        syncs and strong writes are refused from now on). This copy's facts."""
        with self._lock:
            self._copy.adopt(owner_slot, epoch)
            return self._facts()

    @_exclusive
    def promote(self, epoch: int, copies: int, wait_s: float, sources: list[int] | None = None) -> dict:
        """Become the shard's owner under ``epoch`` (raised past the durable store's, which is fenced
        there: the old owner's flushes are refused). First joins what the other live copies and the
        store hold (an eventual write that reached only one of them is kept); serves writes after
        ``wait_s`` (until then the deposed owner may still hold its lease). ``sources``: the slots
        to join from (default: every other slot)."""
        self._ready()
        slots = [s for s in (range(copies) if sources is None else sources) if s != self.slot]
        sources = []
        for slot in slots:
            try:
                snap = _ray.get(self._peer(slot).snapshot.remote(), timeout=min(2.0, self._settings.sync_timeout_s),
                                what=f"replica slot {slot}")
                sources.append(snap["records"])
            except Exception as exc:  # noqa: BLE001 - the dead owner, or a copy being restarted
                self._peers.pop(slot, None)
                log.info("%s/%s: promotion without slot %s: %s", self.domain, self.shard, slot, exc)
        image = None
        if self._store is not None and self._settings.durable_mode != "off":
            epoch = max(epoch, self._store.epoch(self.domain, self.shard) + 1)
            self._store.fence(self.domain, self.shard, epoch)
            image = self._store.load_shard(self.domain, self.shard)
        with self._lock:
            copy = self._copy
            for records in sources:
                copy.join(records)
            if image is not None:
                copy.load_durable(image.records)
            copy.promote(epoch, copies, not_before=time.monotonic() + wait_s)
            self.copies = copies
            out = {**self._facts(), "entries": len(copy.state), "sources": len(sources) + (image is not None)}
        self._wake.set()
        log.warning("%s/%s: slot %s promoted to owner under epoch %s", self.domain, self.shard, self.slot, epoch)
        return out

    # ------------------------------------------------------------ partition healing
    @ray.method(concurrency_group=CONTROL)
    def stashed(self) -> list:
        """The writes this copy took while cut off from its owner (``(key, record)`` pairs)."""
        with self._lock:
            return list(self._copy.stash.items())

    @ray.method(concurrency_group=CONTROL)
    def clear_stash(self, handed: list) -> int:
        """The owner absorbed ``handed``: forget them (a key written again since stays)."""
        with self._lock:
            return self._copy.clear_stash(handed)

    @_exclusive
    def absorb(self, records: list) -> dict:
        """Owner: join the stashes of copies that were cut off (the heal). Changed keys replicate and
        are published like writes; each version that lost a conflict is published as a conflict
        event (subscribers get a ``MemoryConflict``; caches keep the winner)."""
        self._ready()
        with self._lock:
            result, losers = self._copy.absorb(records)
        if losers:
            try:
                self._publish([(self.domain, key, rec, CONFLICT) for key, rec in losers])
            except Exception as exc:  # noqa: BLE001 - the merge stands; only the events are missed
                log.warning("%s/%s: %d conflict events not delivered: %s", self.domain, self.shard, len(losers), exc)
        self._wake.set()
        return {"merged": result.changed, "conflicts": result.conflicts, "lost_versions": len(losers)}

    # ------------------------------------------------------- fault injection
    def hold_replication(self, seconds: float) -> None:
        """Test seam: this replica refuses syncs for ``seconds`` (its data and freshness stand still)."""
        self._held_until = time.monotonic() + seconds
