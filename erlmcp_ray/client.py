"""MemoryClient: the handle agents use (``erlmcp_distributed_memory`` in the spec).

Reads go L0 -> L1 -> a replica -> the owner, as the consistency level allows;
eventual writes go into a coalescing write-behind buffer that a thread sends in
batches; strong writes are group-committed and applied by every in-sync copy
before ``put`` returns; a poller thread long-polls the coordinator and drops
cached entries that newer writes made stale. No Ray object ever reaches the
caller: values are decoded afresh for every ``get``, and Ray errors are
translated (see ``erlmcp_ray._ray``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import random
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from erlmcp_ray import _ray
from erlmcp_ray._cache import PENDING, LocalCache
from erlmcp_ray._client_coherence import CoherenceMixin
from erlmcp_ray._client_writes import WriteBehindMixin
from erlmcp_ray._policies import client_l1_policy
from erlmcp_ray._writes import GroupCommit, WriteBuffer
from erlmcp_ray.actors.options import COORDINATOR, shard_name
from erlmcp_ray.config import CoherenceLevel, Consistency, MemoryConfig
from erlmcp_ray.core import record as R
from erlmcp_ray.core.codec import MAX_KEY_BYTES, decode_value, encode_value, validate_key
from erlmcp_ray.core.entry import CacheInvalidated, Entry, MemoryUpdate, Subscription, Version
from erlmcp_ray.core.pressure import level_for
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.errors import (
    ErlmcpRayError,
    InvalidValueError,
    MemoryPressureError,
    OperationTimeoutError,
    ReplicationError,
    UnavailableError,
    UnknownDomainError,
)

__all__ = ["MemoryClient", "Subscription"]  # Subscription lives in core.entry; re-exported

log = logging.getLogger(__name__)

EVENTUAL, BOUNDED, STRONG = Consistency.EVENTUAL, Consistency.BOUNDED_STALE, Consistency.STRONG
STRONG_COH, RELAXED_COH = CoherenceLevel.STRONG, CoherenceLevel.RELAXED
_FAST_KEY_CHARS = MAX_KEY_BYTES // 4  # any str this short is within 1 KiB of UTF-8
#: A replica that has not heard from its owner for this long stops serving eventual reads.
REPLICA_FRESH_LIMIT_MS = 5000.0
#: For this long after writing a key, this client reads it from the owner on a cache miss.
OWN_WRITE_WINDOW_S = 5.0


@dataclass
class _Domain:
    name: str
    shards: int
    copies: int
    consistency: Consistency
    staleness_ms: float
    min_insync: int
    default_ttl_ms: int | None
    handles: list[list[Any]] = field(default_factory=list)


class _Flight:
    """One remote read that other threads missing the same key wait for."""

    __slots__ = ("_done", "error", "result")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: bytes | None = None
        self.error: BaseException | None = None

    def done(self, result: bytes | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._done.set()

    def wait(self, timeout: float) -> bytes | None:
        if not self._done.wait(timeout):
            raise OperationTimeoutError(f"a shared fetch did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class MemoryClient(WriteBehindMixin, CoherenceMixin):
    """Shared memory for agents; safe to share between threads; picklable into tasks and actors."""

    def __init__(self, namespace: str, config: MemoryConfig, *,
                 poll_hook: Callable[[list], list] | None = None) -> None:
        """Use ``erlmcp_ray.connect()`` or ``system.client()`` rather than this.

        ``poll_hook`` is a fault-injection seam for tests: it sees every batch of coordinator
        messages before the client applies it and returns what to apply (it may drop some,
        or block to freeze this client's coherence thread).
        """
        self.namespace = namespace
        self._poll_hook = poll_hook
        self.config = config
        self.client_id = uuid.uuid4().hex
        cc = config.client
        self._timeout = cc.call_timeout_s
        self._default: Consistency | None = None
        self._domains = {name: self._make_domain(name) for name in config.domains}
        cco = config.cache_coordinator
        self._lease_s = cco.lease_ms / 1000.0
        # Cached reads are served only while a poll answered within this window. It is shorter
        # than a synchronous invalidation's timeout, so a client that invalidate() reports as
        # missing has stopped serving its cache before invalidate() returns.
        self._trust_s = min(cco.lease_ms, cco.invalidation_timeout) / 1000.0 * 0.8
        self._coherence = cco.coherence_level
        self._cache = LocalCache(
            cc.l0_entries, cc.l1_max_bytes, max_age_s=self._lease_s,
            l1_factory=lambda domain, maxsize, getsizeof: client_l1_policy(config.domain(domain), maxsize, getsizeof))
        self._incarnations: dict[tuple[str, int], str] = {}  # owner incarnation last seen per shard
        self._flights: dict[tuple, _Flight] = {}  # remote reads in progress (stampede protection)
        self._flights_lock = threading.Lock()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._closed = False
        self._own_writes: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._coordinator = _ray.get_actor(COORDINATOR, namespace)
        self.counters = {"replica_reads": 0, "owner_reads": 0, "stale_replica_fallbacks": 0,
                         "buffered_puts": 0, "batches_sent": 0, "batch_retries": 0, "strong_writes": 0,
                         "sync_writes": 0, "events_delivered": 0, "gaps": 0, "write_errors": 0, "polls": 0,
                         "invalidations_received": 0, "shared_fetches": 0, "owner_restarts_seen": 0}
        self._latency: dict[str, deque] = {k: deque(maxlen=4096) for k in ("remote_get", "strong_put", "sync_put")}
        # write-behind
        self._buffer = WriteBuffer()
        self._wb_lock = threading.Lock()
        self._wb_wake = threading.Condition(self._wb_lock)
        self._inflight: list[list] = []  # [domain, shard, seq, ops, ref, attempts, sent_at]
        # Writes an owner applied but has not yet reported replicated and published:
        # (domain, shard) -> [(owner incarnation, owner seq, ops)]. If the owner
        # restarts (new incarnation) before confirming them, they are sent again.
        self._unconfirmed: dict[tuple[str, int], list[tuple[str, int, list]]] = {}
        self._last_confirm = 0.0
        self._write_errors: list[ErlmcpRayError] = []
        self._flush_now = False
        self._group = GroupCommit(self._send_strong)
        # coherence
        self._callbacks: dict[str, dict[str, Callable[[MemoryUpdate], Any]]] = {}
        self._inval_callbacks: dict[str, Callable[[CacheInvalidated], Any]] = {}
        self._last_poll_ok = time.monotonic()
        self._coord_epoch: int | None = None
        self._coord_epoch, self._since = self._register()
        self._threads = [
            threading.Thread(target=self._flusher, name="erlmcp-write-behind", daemon=True),
            threading.Thread(target=self._poller, name="erlmcp-coherence", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _make_domain(self, name: str) -> _Domain:
        d = self.config.domain(name)
        copies = self.config.replication_factor_for(name)
        return _Domain(
            name=name, shards=d.shards, copies=copies, consistency=self.config.consistency_for(name),
            staleness_ms=float(d.staleness_ms), min_insync=self.config.min_insync_for(name),
            default_ttl_ms=None if d.default_ttl is None else int(d.default_ttl * 1000),
            handles=[[None] * copies for _ in range(d.shards)],
        )

    # ------------------------------------------------------------- pickling
    def __reduce__(self) -> tuple:
        return _attach, (self.namespace,)

    # ------------------------------------------------------------- checking
    def _domain(self, domain: str) -> _Domain:
        d = self._domains.get(domain) if type(domain) is str else None
        if d is None:
            raise UnknownDomainError(domain, known=tuple(self._domains))
        return d

    def _level(self, d: _Domain, consistency: Any) -> Consistency:
        if consistency is None:
            return self._default or d.consistency
        return Consistency.parse(consistency)

    @staticmethod
    def _key(key: Any) -> str:
        if type(key) is str and 0 < len(key) <= _FAST_KEY_CHARS:
            return key
        return validate_key(key)

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError("this MemoryClient is closed")

    def _handle(self, d: _Domain, shard: int, slot: int) -> Any:
        h = d.handles[shard][slot]
        if h is None:
            h = d.handles[shard][slot] = _ray.get_actor(shard_name(d.name, shard, slot), self.namespace)
        return h

    def _forget_handle(self, d: _Domain, shard: int, slot: int) -> None:
        d.handles[shard][slot] = None

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    # ----------------------------------------------------------------- reads
    def get(self, domain: str, key: str, default: Any = None, *, consistency: Any = None,
            local_only: bool = False) -> Any:
        """The value of ``key`` in ``domain``, or ``default``."""
        # The cache-hit path is inlined and kept short: it is the L0 latency figure.
        d = self._domains.get(domain) if type(domain) is str else None
        if d is None:
            raise UnknownDomainError(domain, known=tuple(self._domains))
        if type(key) is not str or not 0 < len(key) <= _FAST_KEY_CHARS:
            key = validate_key(key)
        level = (self._default or d.consistency) if consistency is None else Consistency.parse(consistency)
        now = time.monotonic()  # one reading serves the trust check and the entry's age
        if level is not STRONG and now - self._last_poll_ok < self._trust_s:
            e = self._cache.lookup(domain, key, d.staleness_ms if level is BOUNDED else None, now)
            if e is not None:
                return decode_value(e[0])
        if local_only:
            return default
        rec = self._read(d, key, level)
        return default if rec is None else decode_value(R.record_value(rec))

    def get_entry(self, domain: str, key: str, *, consistency: Any = None) -> Entry | None:
        """The entry with its version, timestamp, tags and expiry (None when absent)."""
        d = self._domain(domain)
        key = self._key(key)
        level = self._level(d, consistency)
        if level is not STRONG and self._cache_usable():
            e = self._cache.lookup(domain, key, d.staleness_ms if level is BOUNDED else None)
            if e is not None and e[4] is not None:
                return Entry.from_record(key, e[4])
        self._send_key_now(d, key)
        rec = self._read(d, key, STRONG if self._written_recently(domain, key) else level)
        return None if rec is None else Entry.from_record(key, rec)

    def _read(self, d: _Domain, key: str, level: Consistency) -> bytes | None:
        self._check_open()
        shard = shard_for(key, d.shards)
        pending = self._buffer_peek(d, shard, key)
        if pending is not None and pending[1] is not None:
            return _pending_record(pending)
        # Stampede protection: concurrent misses of one key in this client make one fetch.
        flight_key = (d.name, key, level is STRONG)
        with self._flights_lock:
            flight = self._flights.get(flight_key)
            leader = flight is None
            if leader:
                flight = self._flights[flight_key] = _Flight()
        if not leader:
            self.counters["shared_fetches"] += 1
            return flight.wait(self._timeout)
        try:
            rec = self._fetch(d, shard, key, level)
            flight.done(rec, None)
            return rec
        except BaseException as exc:
            flight.done(None, exc)
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(flight_key, None)

    def _fetch(self, d: _Domain, shard: int, key: str, level: Consistency) -> bytes | None:
        token = self._cache.begin_fetch()
        t0 = time.perf_counter()
        to_owner = level is STRONG or d.copies == 1 or self._written_recently(d.name, key)
        rec, staleness = None, 0.0
        if not to_owner:
            slot = random.randrange(1, d.copies)
            limit = d.staleness_ms if level is BOUNDED else REPLICA_FRESH_LIMIT_MS
            try:
                status, rec, staleness, _inc = self._call(d, shard, slot, "read", key, limit, retry=False)
                self.counters["replica_reads"] += 1
                to_owner = status != "ok"
                if to_owner:
                    self.counters["stale_replica_fallbacks"] += 1
            except UnavailableError:
                to_owner = True
        if to_owner:
            _, rec, staleness, incarnation = self._call(d, shard, 0, "read", key, None)
            self.counters["owner_reads"] += 1
            if not self._same_owner(d.name, shard, incarnation):
                token = self._cache.begin_fetch()  # taken after the drop: this answer may be cached
        self._latency["remote_get"].append(time.perf_counter() - t0)
        if rec is not None:
            self._cache.store(d.name, key, R.record_value(rec), R.record_hlc(rec), staleness, rec, token)
        return rec

    def _same_owner(self, domain: str, shard: int, incarnation: str) -> bool:
        """Note the owner's incarnation; a new one (Ray restarted it, and it recovered from a
        replica that may lack the last writes) makes us drop what we cached of its domain."""
        seen = self._incarnations.get((domain, shard))
        self._incarnations[(domain, shard)] = incarnation
        if seen is None or seen == incarnation:
            return True
        self.counters["owner_restarts_seen"] += 1
        self._cache.drop_domains({domain})
        return False

    def _call(self, d: _Domain, shard: int, slot: int, method: str, *args: Any, retry: bool = True) -> Any:
        """Call a shard copy. Only idempotent calls come here (reads, and writes with a request
        seq), so while Ray restarts the copy's process they are retried, with backoff, until
        ``call_timeout_s`` runs out."""
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            try:
                handle = self._handle(d, shard, slot)
                return _ray.get(getattr(handle, method).remote(*args), timeout=self._timeout,
                                what=f"{d.name} shard {shard} slot {slot}")
            except UnavailableError:
                self._forget_handle(d, shard, slot)
                attempt += 1
                pause = min(0.5, 0.02 * 2**attempt) * (0.5 + random.random())  # jittered backoff
                if not retry or isinstance(sys.exc_info()[1], OperationTimeoutError) or (
                        time.monotonic() + pause > deadline):
                    raise
                time.sleep(pause)

    # ---------------------------------------------------------------- writes
    def put(self, domain: str, key: str, value: Any, *, consistency: Any = None, ttl: float | None = None,
            tags: tuple[str, ...] | list[str] = (), coherence: Any = None) -> Version | None:
        """Store ``value``. Returns the version the owner assigned; ``None`` for an eventual put,
        which returns as soon as the write is buffered (``flush()`` waits for it).

        ``coherence`` (default: the system's ``cache_coordinator.coherence_level``) says what
        happens to other clients' cached copies: "eventual" — dropped asynchronously; "strong" —
        dropped before ``put`` returns (an eventual put is then sent at once); "relaxed" — left
        alone (they age out after the lease), only subscribers hear of the write.
        """
        d = self._domain(domain)
        key = self._key(key)
        level = self._level(d, consistency)
        coh = self._coherence if coherence is None else CoherenceLevel.parse(coherence)
        data = encode_value(value)
        op = (key, data, self._ttl_ms(d, ttl), _tags(tags), coh is RELAXED_COH)
        self._check_open()
        shard = shard_for(key, d.shards)
        if coh is STRONG_COH:
            return self._write_now(d, shard, op, BOUNDED if level is EVENTUAL else level, coh)
        if level is EVENTUAL:
            with self._wb_lock:
                self._buffer.add(domain, shard, op)
                self._cache.store_pending(domain, key, data)
                self._note_write(domain, key)
                if len(self._buffer) >= self.config.client.write_behind_max_batch:
                    self._wb_wake.notify()
            self.counters["buffered_puts"] += 1
            return None
        return self._write_now(d, shard, op, level, coh)

    def delete(self, domain: str, key: str, *, consistency: Any = None, coherence: Any = None) -> bool:
        """Delete ``key``; True if a live entry was removed. Never write-behind: it reports existence.
        ``coherence`` as for ``put``."""
        d = self._domain(domain)
        key = self._key(key)
        level = self._level(d, consistency)
        coh = self._coherence if coherence is None else CoherenceLevel.parse(coherence)
        self._check_open()
        shard = shard_for(key, d.shards)
        version = self._write_now(d, shard, (key, None, None, (), coh is RELAXED_COH), level, coh)
        return version is not None

    def _write_now(self, d: _Domain, shard: int, op: tuple, level: Consistency,
                   coherence: CoherenceLevel = CoherenceLevel.EVENTUAL) -> Version | None:
        key = op[0]
        self._send_key_now(d, key)
        t0 = time.perf_counter()
        if level is STRONG:
            self.counters["strong_writes"] += 1
            rec = self._group.submit(d.name, shard, op)
            self._latency["strong_put"].append(time.perf_counter() - t0)
        else:
            self.counters["sync_writes"] += 1
            rec = self._sync_write(d, shard, op)
            self._latency["sync_put"].append(time.perf_counter() - t0)
        self._note_write(d.name, key)
        self._cache.drop(d.name, key)
        if rec is None:
            return None
        if op[1] is not None:
            self._cache.store(d.name, key, op[1], R.record_hlc(rec), 0.0, rec)
        if coherence is STRONG_COH:
            # Other clients drop copies older than this version before we return.
            self.coordinator._invalidate_sync([(d.name, key, None, "write", R.record_hlc(rec))])
        return Version.from_record(rec)

    def _sync_write(self, d: _Domain, shard: int, op: tuple) -> bytes | None:
        seq = self._next_seq()
        _epoch, owner_seq, items, incarnation, refused = self._call(
            d, shard, 0, "write", self.client_id, seq, [op], True)
        self._same_owner(d.name, shard, incarnation)
        if refused:
            raise self._pressure_error(d, refused[0][1])
        with self._wb_lock:
            self._unconfirmed.setdefault((d.name, shard), []).append((incarnation, owner_seq, [op]))
        return items[0][1]

    def _send_strong(self, domain: str, shard: int, ops: list) -> list[bytes | None]:
        """One group-commit round: owner applies, every replica applies the owner's answer."""
        d = self._domains[domain]
        seq = self._next_seq()
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:  # retried while Ray restarts the owner (same request seq)
            try:
                answer, replicas = self._start_strong(d, shard, seq, ops)
                _epoch, _s, items, _inc, refused = _ray.get(answer, timeout=self._timeout,
                                                            what=f"{domain} shard {shard} owner")
                break
            except UnavailableError as exc:
                self._forget_handle(d, shard, 0)
                attempt += 1
                pause = min(0.5, 0.02 * 2**attempt)
                if isinstance(exc, OperationTimeoutError) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
        acked, failures = 1, []
        for slot, ref in replicas:
            if ref is None:
                failures.append(f"slot {slot}: unreachable")
                continue
            try:
                _ray.get(ref, timeout=max(0.001, deadline - time.monotonic()), what=f"replica slot {slot}")
                acked += 1
            except ErlmcpRayError as exc:
                self._forget_handle(d, shard, slot)
                failures.append(f"slot {slot}: {exc}")
        if acked < d.min_insync:
            raise ReplicationError(
                f"{domain} shard {shard}: applied by {acked} of {d.copies} copies, {d.min_insync} required; "
                f"the write is not acknowledged ({'; '.join(failures)})")
        out: list = [rec for _key, rec in items]
        for i, message in refused:  # these ops were not written: their callers get the error
            out[i] = self._pressure_error(d, message)
        return out

    def _pressure_error(self, d: _Domain, message: str) -> MemoryPressureError:
        return MemoryPressureError(message, domain=d.name, limit=f"max_bytes={self.config.domain(d.name).max_bytes}")

    def _start_strong(self, d: _Domain, shard: int, seq: int, ops: list) -> tuple[Any, list]:
        """Submit the owner's write and, chained on its answer, every replica's apply."""
        answer = self._handle(d, shard, 0).write.remote(self.client_id, seq, ops, True, True)
        replicas = []
        for slot in range(1, d.copies):
            try:
                replicas.append((slot, self._handle(d, shard, slot).apply_write.remote(answer)))
            except UnavailableError:
                replicas.append((slot, None))
        return answer, replicas

    def _send_key_now(self, d: _Domain, key: str) -> None:
        """Send a buffered write of ``key`` before a direct call on it, so the two stay in order."""
        self._send_key_now_many(d, [key])

    def _send_key_now_many(self, d: _Domain, keys: list[str]) -> None:
        with self._wb_lock:
            for key in keys:
                shard = shard_for(key, d.shards)
                op = self._buffer.pop(d.name, shard, key)
                if op is not None:
                    self._submit_batch(d.name, shard, [op])

    def _buffer_peek(self, d: _Domain, shard: int, key: str) -> tuple | None:
        with self._wb_lock:
            return self._buffer.peek(d.name, shard, key)

    def _ttl_ms(self, d: _Domain, ttl: float | None) -> int | None:
        if ttl is None:
            return d.default_ttl_ms
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise InvalidValueError(f"ttl must be a positive number of seconds, got {ttl!r}", where="ttl")
        return max(1, int(ttl * 1000))

    def _note_write(self, domain: str, key: str) -> None:
        k = (domain, key)
        self._own_writes.pop(k, None)
        self._own_writes[k] = time.monotonic()
        if len(self._own_writes) > 100_000:
            self._own_writes.popitem(last=False)

    def _written_recently(self, domain: str, key: str) -> bool:
        t = self._own_writes.get((domain, key))
        return t is not None and time.monotonic() - t < OWN_WRITE_WINDOW_S

    # -------------------------------------------------------------- settings
    def set_consistency(self, level: Any) -> None:
        """This client's default level for calls without ``consistency=`` (None: each domain's)."""
        self._default = None if level is None else Consistency.parse(level)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        cache = self._cache.stats()
        lat = {name: _percentiles(samples) for name, samples in self._latency.items()}
        with self._wb_lock:
            buffered, inflight = len(self._buffer), len(self._inflight)
        return {
            "cache": {**cache, "l2_size": None},
            "tiers": dict(self.counters),
            "write_behind": {"buffered": buffered, "in_flight_batches": inflight,
                             "group_commit_batches": self._group.batches, "group_commit_ops": self._group.ops},
            "latency_ms": lat,
            "coherence": {"since": self._since, "epoch": self._coord_epoch,
                          "lease_ok": self._cache_usable()},
        }

    def sync_status(self) -> dict[str, Any]:
        """Per domain and shard: each copy's seq, staleness and sync counters."""
        out: dict[str, Any] = {}
        for d in self._domains.values():
            shards = []
            for shard in range(d.shards):
                refs = [self._handle(d, shard, slot).stats.remote() for slot in range(d.copies)]
                copies = _ray.get(refs, timeout=self._timeout, what=f"{d.name} shard {shard} stats")
                owner = copies[0]
                shards.append({
                    "shard": shard, "seq": owner["seq"], "replicated_seq": owner["replicated_seq"],
                    "published_seq": owner["published_seq"], "syncs": owner["syncs"],
                    "replicas": [{"slot": c["slot"], "seq_lag": owner["seq"] - (owner["replicas"].get(c["slot"], {})
                                  .get("acked_seq") or 0), "staleness_ms": c["staleness_ms"],
                                  "node_id": c["node_id"]} for c in copies[1:]],
                })
            out[d.name] = shards
        return out

    def get_domain_stats(self, domain: str) -> dict[str, Any]:
        """Entries, bytes, limit, shards and copies of ``domain`` (owner copies are counted once)."""
        d = self._domain(domain)
        refs = [self._handle(d, s, 0).stats.remote() for s in range(d.shards)]
        owners = _ray.get(refs, timeout=self._timeout, what=f"{domain} stats")
        return {
            "domain": domain, "entries": sum(o["entries"] for o in owners),
            "bytes": sum(o["bytes"] for o in owners), "limit": self.config.domain(domain).max_bytes,
            "tombstones": sum(o["tombstones"] for o in owners), "shards": d.shards, "replicas": d.copies - 1,
            "consistency": d.consistency.value, "conflicts_resolved": sum(o["conflicts_resolved"] for o in owners),
            "eviction": self.config.domain(domain).eviction.value, "evictions": sum(o["evictions"] for o in owners),
            "refused_writes": sum(o["refused_writes"] for o in owners),
            # the domain is as pressed as its most pressed shard
            "pressure": _worst([(o["pressure"] or {}).get("level", "low") for o in owners]),
        }

    def _all_copies(self, method: str) -> list[dict]:
        refs = [self._handle(d, shard, slot)
                for d in self._domains.values() for shard in range(d.shards) for slot in range(d.copies)]
        return _ray.get([getattr(h, method).remote() for h in refs], timeout=self._timeout, what=method)

    def get_cluster_memory(self) -> dict[str, Any]:
        """The spec's cluster memory: nodes, total bytes, and per node the copies it holds and the
        memory of our actors there (RSS), against the per-node limits and their pressure level."""
        limits = self.config.limits
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        per_node: dict[str, dict[str, Any]] = {
            n["NodeID"]: {"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"),
                          "memory_total": 0, "processes": 0, "actors": 0, "bytes": 0, "entries": 0,
                          "copies": []} for n in nodes}
        for m in self._all_copies("memory"):
            node = per_node.setdefault(m["node_id"], {"node_id": m["node_id"], "address": None, "memory_total": 0,
                                                      "processes": 0, "actors": 0, "bytes": 0, "entries": 0,
                                                      "copies": []})
            node["memory_total"] = m["node_memory_total"]
            node["processes"] += m["rss"]
            node["actors"] += 1
            node["bytes"] += m["bytes"]
            node["entries"] += m["entries"]
            node["copies"].append((m["domain"], m["shard"], m["slot"], m["bytes"]))
        for node in per_node.values():
            ratio = max(node["bytes"] / limits.max_bytes, node["entries"] / limits.max_entries)
            node.update(limit_bytes=limits.max_bytes, max_entries=limits.max_entries, used_ratio=ratio,
                        pressure=str(level_for(ratio)), warn=ratio >= limits.warn_percent)
        return {"nodes": len(per_node), "total_memory_bytes": len(per_node) * limits.max_bytes,
                "used_bytes": sum(n["bytes"] for n in per_node.values()),
                "node_data": sorted(per_node.values(), key=lambda n: n["node_id"])}

    def force_gc(self) -> dict[str, Any]:
        """Purge expired entries and collect garbage in every shard copy and in this client;
        returns what was freed."""
        results = self._all_copies("force_gc")
        return {"copies": len(results),
                "expired_purged": sum(r["expired_purged"] for r in results),
                "accounted_bytes_freed": sum(r["accounted_bytes_freed"] for r in results),
                "rss_bytes_freed": sum(r["rss_bytes_freed"] for r in results),
                "client_objects_collected": gc.collect()}

    def compact(self) -> dict[str, Any]:
        """Shrink every shard copy's structures (dicts, expiry heap, op-log); returns what was freed."""
        results = self._all_copies("compact")
        return {"copies": len(results),
                "expiry_items_dropped": sum(r["expiry_items_dropped"] for r in results),
                "log_ops_dropped": sum(r["log_ops_dropped"] for r in results),
                "rss_bytes_freed": sum(r["rss_bytes_freed"] for r in results)}

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Flush buffered writes and stop this client's threads. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            with self._wb_lock:
                self._wb_wake.notify_all()
            for t in self._threads:
                t.join(timeout=self.config.client.poll_timeout_s + 1)
            try:  # else synchronous invalidations wait for us until our lease runs out
                _ray.get(self._coordinator.unregister_client.remote(self.client_id), timeout=self._timeout,
                         what="coordinator unregister")
            except ErlmcpRayError as exc:
                log.debug("unregistering from the coordinator failed: %s", exc)

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ async twins
    async def get_async(self, domain: str, key: str, default: Any = None, **kw: Any) -> Any:
        if not kw.get("consistency") and self._cache_usable():
            d = self._domain(domain)
            level = self._level(d, None)
            if level is not STRONG:
                e = self._cache.lookup(domain, self._key(key), d.staleness_ms if level is BOUNDED else None)
                if e is not None:
                    return decode_value(e[0]) if e[0] else default
        return await _in_thread(self.get, domain, key, default, **kw)

    async def put_async(self, domain: str, key: str, value: Any, **kw: Any) -> Version | None:
        d = self._domain(domain)
        if self._level(d, kw.get("consistency")) is EVENTUAL:
            return self.put(domain, key, value, **kw)  # only buffers: never blocks the event loop
        return await _in_thread(self.put, domain, key, value, **kw)

    async def delete_async(self, domain: str, key: str, **kw: Any) -> bool:
        return await _in_thread(self.delete, domain, key, **kw)

    async def flush_async(self, timeout: float | None = None) -> None:
        await _in_thread(self.flush, timeout)


async def _in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    # Remote calls block; an async actor's event loop must not. The client is thread-safe.
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


def _tags(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, (tuple, list, set, frozenset)):
        raise InvalidValueError("tags must be a list or tuple of str", where="tags")
    out = tuple(tags)
    for t in out:
        if type(t) is not str or not t:
            raise InvalidValueError(f"each tag must be a non-empty str, got {t!r}", where="tags")
    return out


def _pending_record(op: tuple) -> bytes:
    """A record for a write still in our buffer (no version yet), so reads see our own writes."""
    data, tags = op[1], op[3]
    return R.pack({}, PENDING - 1, 0, data or b"", deleted=data is None, tags=tags)


def _worst(levels: list[str]) -> str:
    order = ["low", "medium", "high", "critical"]
    return max(levels, key=order.index) if levels else "low"


def _percentiles(samples: deque) -> dict[str, float]:
    if not samples:
        return {"count": 0, "p50": 0.0, "p99": 0.0}
    s = sorted(samples)
    return {"count": len(s), "p50": s[len(s) // 2] * 1000, "p99": s[min(len(s) - 1, int(len(s) * 0.99))] * 1000}


_shared: dict[str, MemoryClient] = {}
_shared_lock = threading.Lock()


def _attach(namespace: str) -> MemoryClient:
    """Unpickling a client: one shared client per process and namespace (its own caches)."""
    with _shared_lock:
        client = _shared.get(namespace)
        if client is None or client._closed:
            from erlmcp_ray.system import connect

            client = _shared[namespace] = connect(namespace)
        return client
