"""Write-behind: eventual writes buffered, coalesced, sent in batches, confirmed, resent after a restart.

``put(..., consistency="eventual")`` returns once ``add`` buffered the write. A thread sends
the buffer every ``write_behind_interval`` (sooner when it fills), one ``write`` per owner;
retries a failed batch with the same request seq (the owner's idempotency table answers a
duplicate); and keeps every applied batch until its owner reports it replicated and
published. A batch an owner applied but never confirmed before its process died (a new
incarnation) is sent again.

Per-key order is the promise: every write of a key gets a stamp, and ``_latest`` holds the
stamp of the newest unconfirmed write of each key. A retried or resent op whose stamp is no
longer the newest is dropped: a newer write of the key (buffered, in flight, applied by the
new owner, or already confirmed) must never be overwritten by an older one. A resent op also
carries the version its first owner gave it (``WriteOp.resend_of``), so the new owner skips
it when it holds that version or a newer one (a write from another client, say).

Ops are ``core.wire.WriteOp``'s fields as plain tuples (see ``core.wire`` for why).

Locks: ``_lock`` guards the buffer and the bookkeeping, and is held only for dict and list
operations (the caller's ``put`` takes it). ``_send_lock`` orders submissions to owners (the
thread's batches, a caller's ``send_now`` before a direct write, resends): it is held while
submitting, never while waiting or sleeping, and never taken under ``_lock``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.client._settings import ClientSettings
from erlmcp_ray.client._stats import Counters
from erlmcp_ray.client._topology import Topology
from erlmcp_ray.client._transport import Retry, Transport
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import WriteOp
from erlmcp_ray.direct import spinning
from erlmcp_ray.errors import ErlmcpRayError, OperationTimeoutError, RemoteError, UnavailableError

__all__ = ["WriteBehind", "WriteBuffer"]

log = logging.getLogger("erlmcp_ray.client")

#: failed sends of a batch to its owner before it may go to another copy of the shard (~0.3 s)
_STASH_AFTER = 3


class WriteBuffer:
    """Coalescing buffer of eventual writes, keyed by (domain, shard) then key: the last write
    to a key wins, as in a write-back cache."""

    def __init__(self) -> None:
        self._ops: dict[tuple[str, int], dict[str, WriteOp]] = {}
        self._n = 0

    def add(self, domain: str, shard: int, op: WriteOp) -> int:
        """Buffer ``op`` (replacing a buffered write of its key); how many writes are buffered now."""
        group = self._ops.get((domain, shard))
        if group is None:
            group = self._ops[(domain, shard)] = {}
        if op[0] not in group:
            self._n += 1
        group[op[0]] = op
        return self._n

    def peek(self, domain: str, shard: int, key: str) -> WriteOp | None:
        group = self._ops.get((domain, shard))
        return None if group is None else group.get(key)

    def pop(self, domain: str, shard: int, key: str) -> WriteOp | None:
        group = self._ops.get((domain, shard))
        if group is None or key not in group:
            return None
        self._n -= 1
        return group.pop(key)

    def take_groups(self) -> dict[tuple[str, int], dict[str, WriteOp]]:
        """Everything buffered, as ``{(domain, shard): {key: op}}``; the buffer is left empty."""
        out, self._ops, self._n = self._ops, {}, 0
        return out

    def take(self, max_batch: int) -> list[tuple[str, int, list[WriteOp]]]:
        """Everything buffered, as ``(domain, shard, ops)`` batches of at most ``max_batch``."""
        out = []
        for (domain, shard), group in self.take_groups().items():
            ops = list(group.values())
            for i in range(0, len(ops), max_batch):
                out.append((domain, shard, ops[i : i + max_batch]))
        return out

    def __len__(self) -> int:
        return self._n


@dataclass
class _Batch:
    domain: str
    shard: int
    seq: int
    ops: list[WriteOp]
    stamps: list[int]
    pending: Any = None  # the transport's pending answer
    error: Exception | None = None  # submission failed
    attempts: int = 0
    sent_at: float = 0.0
    slot: int = 0  # the owner it was sent to


@dataclass
class _Applied:
    """Ops an owner applied, kept until it reports them replicated and published."""

    incarnation: str
    owner_seq: int
    ops: list[WriteOp]
    stamps: list[int]
    hlcs: list[int] = field(default_factory=list)  # the version each op got (0: none)


class WriteBehind:
    def __init__(self, *, transport: Transport, retry: Retry, settings: ClientSettings, cache: LocalCache,
                 counters: Counters, client_id: str, next_seq: Callable[[], int],
                 refusal: Callable[[str, str], Exception], topology: Topology,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._transport, self._retry, self._settings = transport, retry, settings
        self._topology = topology
        self._cache, self._counters = cache, counters
        self._client_id, self._next_seq, self._refusal = client_id, next_seq, refusal
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._buffer = WriteBuffer()
        # groups taken from the buffer, being submitted: (domain, shard) -> {key: (op, stamp)}
        self._sending: dict[tuple[str, int], dict] = {}
        self.buffered_puts = 0  # counted under _lock
        self._inflight: list[_Batch] = []
        self._retrying = 0  # batches taken out of _inflight to be sent again (flush must wait for them)
        self._unconfirmed: dict[tuple[str, int], list[_Applied]] = {}
        self._latest: dict[tuple[str, str], int] = {}  # (domain, key) -> stamp of its newest unconfirmed write
        self._stamps = itertools.count(1)
        self._errors: list[ErlmcpRayError] = []
        self._flush_now = False
        self._closed = False
        self._last_confirm = 0.0
        self._thread = threading.Thread(target=self._run, name="erlmcp-write-behind", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------ caller side
    def add(self, domain: str, shard: int, op: WriteOp) -> tuple[str, str]:
        """Buffer an eventual write (and show it to this client's reads at once); returns its
        ``(domain, key)``, one tuple shared by every table that notes the write (fewer objects for
        the garbage collector to track on the put path)."""
        k = (domain, op[0])
        with self._lock:
            # A buffered op is always its key's newest write (a direct write takes it out of the
            # buffer first), so its stamp is read back from _latest when the batch is made.
            self._latest[k] = next(self._stamps)
            n = self._buffer.add(domain, shard, op)
            self.buffered_puts += 1
            self._cache.store_pending(domain, op[0], op[1], k)
            if n == 1 or n == self._settings.write_behind_max_batch:
                # the first write wakes an idle thread (which then waits one interval for the writes
                # right behind it); a full buffer, once, makes it send at once
                self._wake.notify()

    def peek(self, domain: str, shard: int, key: str) -> WriteOp | None:
        """Our write of ``key`` not yet handed to its owner, if any."""
        with self._lock:
            op = self._buffer.peek(domain, shard, key)
            if op is None and self._sending:
                op = self._sending.get((domain, shard), {}).get(key)
            return op

    def claim(self, domain: str, key: str) -> int:
        """A direct (strong or bounded) write of ``key`` is about to be sent: from now on it is the
        newest, and no older write of the key may be resent over it. Returns its stamp."""
        with self._lock:
            stamp = next(self._stamps)
            self._latest[(domain, key)] = stamp
            return stamp

    def release(self, domain: str, key: str, stamp: int) -> None:
        """A direct write finished (its copies hold it, or it failed): forget its stamp."""
        with self._lock:
            if self._latest.get((domain, key)) == stamp:
                del self._latest[(domain, key)]

    def send_now(self, domain: str, shards: int, keys: list[str]) -> None:
        """Send buffered writes of ``keys`` before a direct call on them, so the two stay in order."""
        with self._send_lock:
            taken = []
            with self._lock:
                for key in keys:
                    shard = shard_for(key, shards)
                    op = self._buffer.pop(domain, shard, key)
                    if op is not None:
                        taken.append((shard, op, self._latest.get((domain, key), 0)))
            for shard, op, stamp in taken:
                self._submit(_Batch(domain, shard, self._next_seq(), [op], [stamp]))

    def track(self, domain: str, shard: int, incarnation: str, owner_seq: int, op: WriteOp, stamp: int,
              hlc: int) -> None:
        """A bounded write applied by its owner: keep it until the owner confirms it replicated."""
        with self._lock:
            self._latest[(domain, op[0])] = stamp
            self._unconfirmed.setdefault((domain, shard), []).append(
                _Applied(incarnation, owner_seq, [op], [stamp], [hlc]))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered write reached its owner, its replicas and the coordinator (so one
        coherence round later every client sees it). Raises the first write error."""
        deadline = self._clock() + (self._settings.call_timeout_s if timeout is None else timeout)
        with self._lock:
            self._flush_now = True
            self._wake.notify()
        while True:
            with self._lock:
                idle = not self._buffer and not self._sending and not self._inflight and not self._retrying
                done = idle and not self._unconfirmed
                errors, self._errors = self._errors, []
            if errors:
                raise errors[0]
            if done:
                return
            if self._clock() > deadline:
                raise OperationTimeoutError(f"flush: writes not yet replicated after {timeout} s")
            if idle:
                try:
                    self._confirm(raise_errors=True)
                except UnavailableError:
                    self._sleep(0.05)  # the owner is restarting; its writes will be resent
                    continue
                self._sleep(0.001)
            else:
                self._sleep(0.0005)

    def close(self, join_s: float) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=join_s)

    def sizes(self) -> tuple[int, int]:
        with self._lock:
            return len(self._buffer), len(self._inflight)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        # A bug here must not silently stop every later write: log it and carry on. Its waits never
        # spin: the callers putting meanwhile need the GIL (``erlmcp_ray.direct.spinning``).
        while True:
            try:
                with spinning(False):
                    self._loop()
                return
            except Exception:
                log.exception("write-behind thread failed; restarting it")
                self._sleep(0.05)

    def _loop(self) -> None:
        interval = self._settings.write_behind_interval_s
        max_batch = self._settings.write_behind_max_batch
        while True:
            with self._lock:
                if not self._buffer and not self._inflight and not self._flush_now:
                    if self._closed:
                        return
                    self._wake.wait(timeout=0.05)  # idle: the first write wakes us
                if ((self._buffer or self._inflight) and not self._flush_now and len(self._buffer) < max_batch
                        and not self._closed):
                    self._wake.wait(timeout=interval)
                self._flush_now = False
            self._send_buffered(max_batch)
            self._collect()
            if self._unconfirmed and self._clock() - self._last_confirm > self._settings.confirm_interval_s:
                self._last_confirm = self._clock()
                self._confirm(raise_errors=False)

    def _send_buffered(self, max_batch: int) -> None:
        with self._send_lock:
            with self._lock:
                # Still visible to peek() until submitted: a read must not miss our own write.
                self._sending = self._buffer.take_groups()
                latest = self._latest
                batches = [(domain, shard, list(group.values()), [latest.get((domain, key), 0) for key in group])
                           for (domain, shard), group in self._sending.items()]
            if not batches:
                return
            for domain, shard, ops, stamps in batches:
                for i in range(0, len(ops), max_batch):
                    self._submit(_Batch(domain, shard, self._next_seq(), ops[i : i + max_batch],
                                        stamps[i : i + max_batch]))
            with self._lock:
                self._sending = {}

    def _submit(self, batch: _Batch) -> None:
        """Hand a batch to its owner (caller holds ``_send_lock``, which keeps submissions in order).
        A batch whose owner failed ``_STASH_AFTER`` times goes to the shard's copies in turn (the
        owner included): a copy cut off from its owner stashes it (``WriteAnswer.stashed``), and the
        supervisor's heal merges it into the owner -- eventual writes stay available in a partition."""
        try:
            if batch.attempts >= _STASH_AFTER:
                target = self._topology.any_copy(batch.domain, batch.shard, batch.attempts - _STASH_AFTER)
            else:
                target = self._topology.owner(batch.domain, batch.shard)
            batch.slot = target.slot
            batch.pending = self._transport.submit(target, "write",
                                                   self._client_id, batch.seq, batch.ops, False, False, True)
            batch.error = None
        except UnavailableError as exc:
            batch.error = exc
        batch.sent_at = self._clock()
        with self._lock:
            self._inflight.append(batch)
        self._counters.add("batches_sent")

    def _collect(self) -> None:
        with self._lock:
            inflight = list(self._inflight)
        if not inflight:
            return
        pending = [b.pending for b in inflight if b.error is None]
        ready = set(self._transport.ready(pending, 0.005)) if pending else set()
        failed: list[tuple[_Batch, ErlmcpRayError]] = []
        for batch in inflight:
            if batch.error is None and batch.pending not in ready:
                waited = self._clock() - batch.sent_at
                if waited >= self._topology.check_s and batch.attempts < _STASH_AFTER:  # still the owner?
                    self._topology.refresh()
                    if self._topology.owner(batch.domain, batch.shard).slot != batch.slot:
                        failed.append((batch, UnavailableError(
                            f"{batch.domain} shard {batch.shard}: slot {batch.slot} is no longer the owner")))
                        continue
                if waited < self._settings.call_timeout_s:
                    continue
                failed.append((batch, OperationTimeoutError(
                    f"{batch.domain} shard {batch.shard}: write batch timed out")))
                continue
            try:
                if batch.error is not None:
                    raise batch.error
                answer = self._transport.result(batch.pending, self._settings.call_timeout_s,
                                                f"{batch.domain} shard {batch.shard} owner")
            except ErlmcpRayError as exc:
                failed.append((batch, exc))
                continue
            self._applied(batch, answer)
        if failed:
            self._retry_or_fail(failed)

    def _applied(self, batch: _Batch, answer: Any) -> None:
        hlcs = answer.items
        if answer.stashed:
            # A copy cut off from the owner holds them (its stash, merged into the owner by the heal):
            # nothing for this client to confirm or resend.
            with self._lock:
                self._inflight.remove(batch)
                for op, stamp in zip(batch.ops, batch.stamps):
                    self._drop_stamp(batch.domain, op[0], stamp)
            self._counters.add("writes_stashed", len(batch.ops))
            self._cache.acknowledge_many(batch.domain, batch.ops, hlcs)
            return
        bad = {i: self._refusal(batch.domain, message) for i, message in answer.refused}
        bad.update({i: RemoteError(f"{batch.domain}: write of {batch.ops[i][0]!r} rejected by its owner: {message}")
                    for i, message in answer.rejected})
        with self._lock:
            self._inflight.remove(batch)
            self._unconfirmed.setdefault((batch.domain, batch.shard), []).append(
                _Applied(answer.incarnation, answer.seq, batch.ops, batch.stamps, hlcs))
            for i, error in bad.items():  # not written: flush() raises, the cached copy goes
                self._errors.append(error)
                self._drop_stamp(batch.domain, batch.ops[i][0], batch.stamps[i])
        if bad:
            self._counters.add("write_errors", len(bad))
            for i in bad:
                self._cache.forget_pending(batch.domain, batch.ops[i][0], batch.ops[i][1])
        self._cache.acknowledge_many(batch.domain, batch.ops, hlcs)

    def _retry_or_fail(self, failed: list[tuple[_Batch, ErlmcpRayError]]) -> None:
        for batch, _ in failed:
            self._topology.owner_failed(batch.domain, batch.shard)
        retry, dropped = [], []
        with self._lock:
            for batch, error in failed:
                self._inflight.remove(batch)
                if error.retryable and batch.attempts + 1 < self._settings.max_batch_attempts:
                    retry.append(batch)
                    self._retrying += 1
                else:
                    self._errors.append(error)
                    dropped.append(batch)
                    for op, stamp in zip(batch.ops, batch.stamps):
                        self._drop_stamp(batch.domain, op[0], stamp)
        for batch in dropped:
            self._counters.add("write_errors", len(batch.ops))
            for op in batch.ops:
                self._cache.forget_pending(batch.domain, op[0], op[1])
        if not retry:
            return
        # Sleep with no lock held: callers keep buffering, and reads keep peeking the buffer.
        try:
            self._sleep(self._retry.pause(max(b.attempts for b in retry) + 1))
            with self._send_lock:
                self._resend(retry)
        finally:
            with self._lock:
                self._retrying -= len(retry)

    def _resend(self, retry: list[_Batch]) -> None:
        for batch in retry:
            kept = self._newest_only(batch.domain, batch.ops, batch.stamps)
            if len(kept) < len(batch.ops):  # superseded: never acknowledged, so not pending either
                survivors = {id(op) for op, _ in kept}
                for op in batch.ops:
                    if id(op) not in survivors:
                        self._cache.forget_pending(batch.domain, op[0], op[1])
            if not kept:
                continue
            ops, stamps = [o for o, _ in kept], [s for _, s in kept]
            # The same request seq while the batch is unchanged: an owner that applied it
            # answers from its idempotency table. A changed batch is a new request.
            seq = batch.seq if len(ops) == len(batch.ops) else self._next_seq()
            self._counters.add("batch_retries")
            self._submit(_Batch(batch.domain, batch.shard, seq, ops, stamps, attempts=batch.attempts + 1))

    def _newest_only(self, domain: str, ops: list[WriteOp], stamps: list[int]) -> list[tuple[WriteOp, int]]:
        """The ops that are still the newest write of their key (the others were superseded)."""
        with self._lock:
            latest = self._latest
            return [(op, s) for op, s in zip(ops, stamps) if latest.get((domain, op[0])) == s]

    def _drop_stamp(self, domain: str, key: str, stamp: int) -> None:
        # caller holds _lock
        if self._latest.get((domain, key)) == stamp:
            del self._latest[(domain, key)]

    def _confirm(self, raise_errors: bool) -> None:
        """Ask owners how far they replicated; forget confirmed writes, resend those a restart lost."""
        with self._lock:
            shards = list(self._unconfirmed)
        topo = self._topology
        for domain, shard in shards:
            try:
                progress = self._retry.run(
                    lambda domain=domain, shard=shard: topo.call_owner(
                        domain, shard, "progress", timeout=self._settings.call_timeout_s),
                    on_unavailable=lambda domain=domain, shard=shard: topo.owner_failed(domain, shard),
                    retry=raise_errors)
            except UnavailableError:
                if raise_errors:
                    raise
                continue
            lost: list[tuple[WriteOp, int]] = []
            with self._lock:
                keep = []
                for applied in self._unconfirmed.pop((domain, shard), []):
                    if applied.incarnation != progress.incarnation:
                        lost.extend(self._resendable(domain, applied))  # its owner died before replicating it
                    elif applied.owner_seq > progress.published:
                        keep.append(applied)
                    else:  # replicated and published: its stamps are done with
                        latest = self._latest
                        for op, stamp in zip(applied.ops, applied.stamps):
                            k = (domain, op[0])
                            if latest.get(k) == stamp:
                                del latest[k]
                if keep:
                    self._unconfirmed[(domain, shard)] = keep
            if lost:
                self._counters.add("resent_after_restart", len(lost))
                with self._send_lock:
                    self._submit(_Batch(domain, shard, self._next_seq(), [o for o, _ in lost], [s for _, s in lost]))

    def _resendable(self, domain: str, applied: _Applied) -> list[tuple[WriteOp, int]]:
        """Of a batch a dead owner applied, the ops to send again (caller holds ``_lock``): those
        still the newest write of their key, marked with the version they were first given."""
        out = []
        for op, stamp, hlc in zip(applied.ops, applied.stamps, applied.hlcs or [0] * len(applied.ops)):
            if hlc < 0 or self._latest.get((domain, op[0])) != stamp:
                continue  # not written the first time, or superseded by a newer write of the key
            out.append(((*op[:5], hlc) if hlc > 0 else op, stamp))  # WriteOp.resend_of
        return out
