"""MemoryClient's write-behind half: batches of eventual writes, their retries and confirmation.

A mixin of ``MemoryClient`` (split out by role; the state lives in the client's constructor):
a thread takes the coalescing ``WriteBuffer`` every ``write_behind_interval_ms`` (sooner when it
fills), sends one ``write`` per owner, retries a failed batch with the same request seq (the owner's
idempotency table answers a duplicate), and keeps every applied batch until the owner reports it
replicated and published; a batch an owner applied but never confirmed before its process died
(a new incarnation) is sent again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from erlmcp_ray import _ray
from erlmcp_ray.errors import ErlmcpRayError, OperationTimeoutError, UnavailableError

log = logging.getLogger("erlmcp_ray.client")


class WriteBehindMixin:
    _buffer: Any
    _wb_lock: Any

    # ---------------------------------------------------------- write-behind
    def _submit_batch(self, domain: str, shard: int, ops: list, seq: int | None = None, attempts: int = 0) -> None:
        """Send one batch to its owner (caller holds ``_wb_lock``, which keeps sends in order)."""
        d = self._domains[domain]
        seq = seq or self._next_seq()
        try:
            ref = self._handle(d, shard, 0).write.remote(self.client_id, seq, ops, False)
        except UnavailableError as exc:
            ref = exc
        self._inflight.append([domain, shard, seq, ops, ref, attempts, time.monotonic()])
        self.counters["batches_sent"] += 1

    def _flusher(self) -> None:
        # A bug here must not silently stop every later write: log it and carry on.
        while not (self._closed and not self._buffer and not self._inflight):
            try:
                self._flush_loop()
                return
            except Exception:
                log.exception("write-behind thread failed; restarting it")
                time.sleep(0.05)

    def _flush_loop(self) -> None:
        interval = self.config.client.write_behind_interval_ms / 1000.0
        max_batch = self.config.client.write_behind_max_batch
        while True:
            with self._wb_lock:
                if not self._buffer and not self._inflight and not self._flush_now:
                    if self._closed:
                        return
                    self._wb_wake.wait(timeout=0.05)
                elif not self._flush_now and len(self._buffer) < max_batch:
                    self._wb_wake.wait(timeout=interval)
                self._flush_now = False
                for domain, shard, ops in self._buffer.take(max_batch):
                    self._submit_batch(domain, shard, ops)
                inflight = list(self._inflight)
            if inflight:
                self._collect(inflight)
            if self._unconfirmed and time.monotonic() - self._last_confirm > 0.05:
                self._last_confirm = time.monotonic()
                self._confirm_all(raise_errors=False)

    def _collect(self, inflight: list) -> None:
        refs = [b[4] for b in inflight if not isinstance(b[4], Exception)]
        ready = set()
        if refs:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0.005)
            ready = set(done)
        for batch in inflight:
            domain, shard, seq, ops, ref, attempts, sent_at = batch
            if not isinstance(ref, Exception) and ref not in ready:
                if time.monotonic() - sent_at < self._timeout:
                    continue
                error: Exception = OperationTimeoutError(f"{domain} shard {shard}: write batch timed out")
            else:
                try:
                    if isinstance(ref, Exception):
                        raise ref
                    _epoch, owner_seq, hlcs, incarnation, refused = _ray.get(ref, timeout=self._timeout,
                                                                             what=f"{domain} owner")
                except ErlmcpRayError as exc:
                    error = exc
                else:
                    with self._wb_lock:
                        self._inflight.remove(batch)
                        self._unconfirmed.setdefault((domain, shard), []).append((incarnation, owner_seq, ops))
                        for i, message in refused:  # not written: flush() raises, the cached copy goes
                            self.counters["write_errors"] += 1
                            self._write_errors.append(self._pressure_error(self._domains[domain], message))
                            self._cache.drop(domain, ops[i][0])
                    for op, hlc in zip(ops, hlcs):
                        if hlc > 0:
                            self._cache.acknowledge(domain, op[0], op[1], hlc)
                    continue
            self._forget_handle(self._domains[domain], shard, 0)
            with self._wb_lock:
                self._inflight.remove(batch)
                if error.retryable and attempts < 40:
                    # same request seq: an owner that did apply it answers from its idempotency table;
                    # ~12 s of retries covers Ray restarting the owner's process
                    self.counters["batch_retries"] += 1
                    time.sleep(min(0.5, 0.02 * (attempts + 1)))
                    self._submit_batch(domain, shard, ops, seq, attempts + 1)
                else:
                    self.counters["write_errors"] += len(ops)
                    self._write_errors.append(error)
                    for k, *_ in ops:
                        self._cache.drop(domain, k)

    def _confirm_all(self, raise_errors: bool) -> None:
        """Ask owners how far they replicated; forget confirmed writes, resend those a restart lost."""
        with self._wb_lock:
            shards = list(self._unconfirmed)
        for domain, shard in shards:
            d = self._domains[domain]
            try:
                incarnation, _applied, _replicated, published = self._call(
                    d, shard, 0, "progress", retry=raise_errors)
            except UnavailableError:
                if raise_errors:
                    raise
                continue
            with self._wb_lock:
                pending = self._unconfirmed.pop((domain, shard), [])
                keep, lost = [], []
                for entry in pending:
                    if entry[0] != incarnation:
                        lost.extend(entry[2])  # applied by an owner that died before replicating it
                    elif entry[1] > published:
                        keep.append(entry)
                if keep:
                    self._unconfirmed[(domain, shard)] = keep
                if lost:
                    self.counters["resent_after_restart"] = self.counters.get("resent_after_restart", 0) + len(lost)
                    self._submit_batch(domain, shard, lost)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered write reached its owner, its replicas, and the coordinator
        (so one coherence round later every client sees it). Raises the first write error."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        with self._wb_lock:
            self._flush_now = True
            self._wb_wake.notify()
        while True:
            with self._wb_lock:
                idle = not self._buffer and not self._inflight
                done = idle and not self._unconfirmed
                errors, self._write_errors = self._write_errors, []
            if errors:
                raise errors[0]
            if done:
                return
            if time.monotonic() > deadline:
                raise OperationTimeoutError(f"flush: writes not yet replicated after {timeout} s")
            if idle:
                try:
                    self._confirm_all(raise_errors=True)
                except UnavailableError:
                    time.sleep(0.05)  # the owner is restarting; its writes will be resent
                    continue
                time.sleep(0.001)
            else:
                time.sleep(0.0005)

