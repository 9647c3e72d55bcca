"""MemoryClient: the handle agents use (``erlmcp_distributed_memory`` in the spec).

A facade over parts that each own their state and lock (see ``erlmcp_ray.client``): it checks
every argument before anything is sent, serves cache hits inline, and hands the rest to the
read path, the write-behind, the group commit and the coherence thread. No Ray object ever
reaches the caller: values are decoded afresh for every ``get``, and Ray errors are translated.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from erlmcp_ray._policies import client_l1_policy
from erlmcp_ray.client import _validate
from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.client._coherence import Coherence
from erlmcp_ray.client._coordinator import CacheCoordinator
from erlmcp_ray.client._direct import DirectWrites
from erlmcp_ray.client._direct_transport import DirectTransport, default_transport
from erlmcp_ray.client._group_commit import GroupCommit
from erlmcp_ray.client._inspect import Inspector
from erlmcp_ray.client._poll_hub import hub_for
from erlmcp_ray.client._reads import OwnWrites, ReadPath
from erlmcp_ray.client._recovery import Recovery
from erlmcp_ray.client._selector import Selector
from erlmcp_ray.client._settings import ClientSettings, DomainRoute, domain_routes
from erlmcp_ray.client._stats import Counters, Latencies
from erlmcp_ray.client._topology import Topology
from erlmcp_ray.client._transport import COORDINATOR, SUPERVISOR, RayTransport, Retry, Transport
from erlmcp_ray.client._write_behind import WriteBehind
from erlmcp_ray.config import CoherenceLevel, Consistency, MemoryConfig
from erlmcp_ray.core import record as R
from erlmcp_ray.core.alerts import AlertEvent
from erlmcp_ray.core.codec import decode_value, encode_value
from erlmcp_ray.core.entry import Entry, Subscription, Version
from erlmcp_ray.core.layout import Layout
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import write_op
from erlmcp_ray.errors import (
    ErlmcpRayError,
    InvalidValueError,
    UnavailableError,
    UnknownDomainError,
)

__all__ = ["MemoryClient"]

log = logging.getLogger("erlmcp_ray.client")

EVENTUAL, BOUNDED, STRONG = Consistency.EVENTUAL, Consistency.BOUNDED_STALE, Consistency.STRONG
STRONG_COH, RELAXED_COH = CoherenceLevel.STRONG, CoherenceLevel.RELAXED
_LEVELS = _validate._LEVELS
_FAST_KEY_CHARS = _validate._FAST_KEY_CHARS


class MemoryClient:
    """Shared memory for agents; safe to share between threads; picklable into tasks and actors."""

    def __init__(self, namespace: str, config: MemoryConfig, *, transport: Transport | None = None,
                 poll_hook: Callable[[list], list] | None = None, settings: ClientSettings | None = None,
                 layout: Layout | None = None) -> None:
        """Use ``erlmcp_ray.connect()`` or ``system.client()`` rather than this.

        ``transport``: how to reach the system's actors (default: Ray's; tests pass
        ``erlmcp_ray.testing.FakeTransport``). ``poll_hook`` is a fault-injection seam for tests:
        it sees every batch of coordinator messages before the client applies it and returns what
        to apply (it may drop some, or block to freeze this client's coherence thread).
        """
        self.namespace = namespace
        self.config = config
        self.client_id = uuid.uuid4().hex
        self._reported_at = float("-inf")
        self._l2: tuple[float, int | None] = (float("-inf"), None)
        s = self.settings = settings or ClientSettings.from_config(config)
        self._transport = transport or default_transport(namespace, config)
        if isinstance(self._transport, (RayTransport, DirectTransport)):
            self._transport.place = f"client:{self.client_id}"  # this client, to the fault seam
        self._node_id = self._transport.node_id()
        self._retry = Retry(s.call_timeout_s)
        self._timeout = s.call_timeout_s
        self._layout = layout or Layout()
        # Routed by the running layout (what the persistence selector chose); a new one replaces
        # entries of this dict in place, and every part looks routes up in it per call.
        self._routes: dict[str, DomainRoute] = domain_routes(self._layout.config(config), self._layout)
        self._default: Consistency | None = None
        self._closed = False
        self._seqs = itertools.count(1)  # request seqs: next() is atomic
        self._counters = Counters()
        self._latencies = Latencies()
        self._cache = LocalCache(
            s.l0_entries, s.l1_max_bytes, max_age_s=s.lease_s,
            l1_factory=lambda domain, maxsize, getsizeof: client_l1_policy(config.domain(domain), maxsize, getsizeof))
        self._own_writes = OwnWrites(s.own_write_window_s)
        self._topology = Topology(self._routes, self._transport, self._refresh_topology)
        self._wb = WriteBehind(transport=self._transport, retry=self._retry, settings=s, cache=self._cache,
                               counters=self._counters, client_id=self.client_id, next_seq=self._next_seq,
                               refusal=self._pressure_error, topology=self._topology)
        self._reads = ReadPath(transport=self._transport, retry=self._retry, settings=s, cache=self._cache,
                               write_behind=self._wb, own_writes=self._own_writes, counters=self._counters,
                               latencies=self._latencies, topology=self._topology)
        self._direct = DirectWrites(transport=self._transport, retry=self._retry, routes=self._routes,
                                    reads=self._reads, write_behind=self._wb, client_id=self.client_id,
                                    next_seq=self._next_seq, timeout_s=s.call_timeout_s, topology=self._topology,
                                    alone=lambda: self._group.callers <= 1)
        self._group = GroupCommit(self._direct.strong_round, timeout_s=s.call_timeout_s)
        # Over the direct transport the process's clients share one long poll (client._poll_hub);
        # one with a poll_hook (a test freezing or filtering its coherence) polls alone, on a
        # connection of its own (see DirectTransport.dedicated).
        self._hub = hub_for(self._transport) if isinstance(self._transport, DirectTransport) and poll_hook is None else None
        self._poll_transport = (self._transport.dedicated()
                                if isinstance(self._transport, DirectTransport) and self._hub is None else self._transport)
        self._coherence = Coherence(transport=self._transport, settings=s, cache=self._cache,
                                    counters=self._counters, client_id=self.client_id, domains=list(self._routes),
                                    poll_hook=poll_hook, layout=self._layout.generation,
                                    on_layout=self._refresh_layout, report=self._report,
                                    poll_transport=self._poll_transport, hub=self._hub)
        self.coordinator = CacheCoordinator(
            domain=self._domain, routes=self._routes, cache=self._cache, transport=self._transport,
            retry=self._retry, write_behind=self._wb, coherence=self._coherence, settings=s,
            client_id=self.client_id, next_seq=self._next_seq, check_open=self._check_open,
            topology=self._topology)
        """The cache coordination protocols (spec ``erlmcp_cache_coordinator``)."""
        self.selector = Selector(transport=self._transport, domains=lambda: list(self._routes),
                                 timeout_s=s.call_timeout_s, check_open=self._check_open)
        """The persistence selector of the running system (spec ``auto_select``)."""
        self.recovery = Recovery(transport=self._transport, timeout_s=s.call_timeout_s, check_open=self._check_open,
                                 drop_caches=self._cache.drop_domains)
        """Checkpoints (spec ``erlmcp_memory_recovery``)."""
        self._inspector = Inspector(transport=self._transport, routes=self._routes, config=config,
                                    domain=self._domain, check_open=self._check_open, timeout_s=s.call_timeout_s)
        self._wb.start()
        self._coherence.start()

    def _refresh_layout(self, generation: int) -> None:
        """The persistence selector moved a domain, or the supervisor promoted a replica: route by
        the layout as it is now."""
        self._refresh_topology()

    def _refresh_topology(self) -> None:
        """Take the newest layout of two sources: the coordinator's, and Ray's key-value store, which
        the supervisor writes first (a promotion whose announcement to the coordinator failed or is
        late is still seen; so is one made while the coordinator is down or slow to answer)."""
        try:
            found = [self._transport.call(COORDINATOR, "get_layout", timeout=min(self._timeout, _LAYOUT_CALL_S))]
        except UnavailableError:  # down, restarting, or slow (a timeout is one too)
            found = []
        stored = self._transport.stored_layout()
        if stored is not None:
            found.append(stored)
        if not found:
            raise UnavailableError("the layout: the coordinator did not answer and Ray's key-value store has none")
        layout = max((Layout.decode(raw) for raw in found), key=lambda lay: lay.generation)
        if layout.generation <= self._layout.generation:
            return
        self._layout = layout
        self._routes.update(domain_routes(layout.config(self.config), layout))
        self._counters.add("layout_changes")

    # ------------------------------------------------------------- pickling
    def __reduce__(self) -> tuple:
        from erlmcp_ray.client import _attach

        return _attach, (self.namespace,)

    @property
    def counters(self) -> dict[str, int]:
        """How often each path was taken (a snapshot)."""
        return {**self._counters.snapshot(), "buffered_puts": self._wb.buffered_puts}

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------- checking
    def _domain(self, domain: Any) -> DomainRoute:
        d = self._routes.get(domain) if type(domain) is str else None
        if d is None:
            raise UnknownDomainError(domain, known=tuple(self._routes))
        return d

    def _level(self, d: DomainRoute, consistency: Any) -> Consistency:
        if consistency is None:
            return self._default or d.consistency
        return _validate.consistency(consistency)

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError("this MemoryClient is closed")

    def _next_seq(self) -> int:
        return next(self._seqs)

    # ----------------------------------------------------------------- reads
    def get(self, domain: str, key: str, default: Any = None, *, consistency: Any = None,
            local_only: bool = False) -> Any:
        """The value of ``key`` in ``domain``, or ``default``."""
        # The cache-hit path is inlined and kept short: it is the L0 latency figure.
        d = self._routes.get(domain) if type(domain) is str else None
        if d is None:
            raise UnknownDomainError(domain, known=tuple(self._routes))
        if type(key) is not str or not 0 < len(key) <= _FAST_KEY_CHARS or not key.isascii():
            key = _validate.key(key)
        if consistency is None:
            level = self._default or d.consistency
        else:
            level = _LEVELS.get(consistency) if type(consistency) is str else None
            if level is None:
                level = _validate.consistency(consistency)
        coherence = self._coherence
        now = time.monotonic()  # one reading serves the trust check and the entry's age
        if level is not STRONG and now - coherence.last_ok < coherence.trust_s:
            e = self._cache.lookup(domain, key, d.staleness_ms if level is BOUNDED else None, now)
            if e is not None:
                return decode_value(e[0])
        if local_only:
            return default
        self._check_open()
        rec = self._reads.read(d, key, level)
        return default if rec is None else decode_value(R.record_value(rec))

    def get_entry(self, domain: str, key: str, *, consistency: Any = None) -> Entry | None:
        """The entry with its version, timestamp, tags and expiry (None when absent)."""
        d = self._domain(domain)
        key = _validate.key(key)
        level = self._level(d, consistency)
        self._check_open()
        if level is not STRONG and self._coherence.usable():
            e = self._cache.lookup(domain, key, d.staleness_ms if level is BOUNDED else None)
            if e is not None and e[4] is not None:
                return Entry.from_record(key, e[4])
        self._wb.send_now(d.name, d.shards, [key])
        rec = self._reads.read(d, key, STRONG if self._own_writes.recent(domain, key) else level)
        return None if rec is None else Entry.from_record(key, rec)

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
        # The checks are get()'s inlined ones (an eventual put is the write-throughput figure).
        d = self._routes.get(domain) if type(domain) is str else None
        if d is None:
            raise UnknownDomainError(domain, known=tuple(self._routes))
        if type(key) is not str or not 0 < len(key) <= _FAST_KEY_CHARS or not key.isascii():
            key = _validate.key(key)
        level = self._level(d, consistency) if consistency is not None else self._default or d.consistency
        coh = self.settings.coherence if coherence is None else _validate.coherence(coherence)
        # WriteOp's fields as a plain tuple (see core.wire: the put path makes 100k of these)
        op = (key, encode_value(value), _validate.ttl_ms(ttl, d.default_ttl_ms),
              _validate.tags(tags) if tags else (), coh is RELAXED_COH, 0)
        self._check_open()
        shard = shard_for(key, d.shards)
        if coh is STRONG_COH:
            return self._write_now(d, shard, op, BOUNDED if level is EVENTUAL else level, coh)
        if level is EVENTUAL:
            self._own_writes.note(domain, key, self._wb.add(domain, shard, op))
            return None
        return self._write_now(d, shard, op, level, coh)

    def delete(self, domain: str, key: str, *, consistency: Any = None, coherence: Any = None) -> bool:
        """Delete ``key``; True if a live entry was removed. Never write-behind: it reports existence.
        ``coherence`` as for ``put``."""
        d = self._domain(domain)
        key = _validate.key(key)
        level = self._level(d, consistency)
        coh = self.settings.coherence if coherence is None else _validate.coherence(coherence)
        self._check_open()
        shard = shard_for(key, d.shards)
        return self._write_now(d, shard, write_op(key, None, relaxed=coh is RELAXED_COH), level, coh) is not None

    def _write_now(self, d: DomainRoute, shard: int, op: tuple, level: Consistency,
                   coherence: CoherenceLevel) -> Version | None:
        key, data = op[0], op[1]
        self._wb.send_now(d.name, d.shards, [key])
        stamp = self._wb.claim(d.name, key)
        t0 = time.perf_counter()
        done = False
        try:
            if level is STRONG:
                self._counters.add("strong_writes")
                rec = self._group.submit(d.name, shard, op)
                self._latencies.add("strong_put", time.perf_counter() - t0)
            else:
                self._counters.add("sync_writes")
                rec = self._direct.bounded(d, shard, op, stamp)
                self._latencies.add("sync_put", time.perf_counter() - t0)
            done = True
        finally:
            if level is STRONG or not done:  # every in-sync copy holds it, or it failed
                self._wb.release(d.name, key, stamp)
            self._own_writes.note(d.name, key)
            if not done:
                self._cache.drop(d.name, key)
        if rec is None:
            self._cache.drop(d.name, key)
            return None
        hlc = R.record_hlc(rec)
        # Older cached copies, and a late acknowledgement of an older write of ours, are stale now.
        self._cache.invalidate(d.name, key, hlc)
        if data is not None:
            self._cache.store(d.name, key, data, hlc, 0.0, rec)
        if coherence is STRONG_COH:
            # Other clients drop copies older than this version before we return.
            self.coordinator.invalidate_sync([(d.name, key, None, "write", hlc)])
        return Version.from_record(rec)

    def _pressure_error(self, domain: str, message: str) -> Exception:
        return self._direct.pressure_error(domain, message)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered write reached its owner, its replicas and the coordinator (so one
        coherence round later every client sees it). Raises the first write error."""
        self._wb.flush(_validate.timeout(timeout))

    # -------------------------------------------------------------- settings
    def set_consistency(self, level: Any) -> None:
        """This client's default level for calls without ``consistency=`` (None: each domain's)."""
        self._default = None if level is None else _validate.consistency(level)

    def subscribe(self, domain: str, target: Any) -> Subscription:
        """Deliver a ``MemoryUpdate`` for every write to ``domain``, in per-key order, to ``target``:
        a callable (called on a delivery thread of this client's: one that blocks delays only this
        client's later events, not its coherence) or a Ray actor handle (its
        ``on_memory_update(event)`` is called by the coordinator). When a partition heals, each
        version that lost a conflict comes as a ``MemoryConflict`` (to an actor: its
        ``on_memory_conflict(event)``, when it has one)."""
        d = self._domain(domain)
        self._check_open()
        return self._coherence.subscribe(d.name, target)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """This client's numbers: ``cache`` (the spec's cache stats: hits, misses, hit_rate, evictions,
        l1_size, l2_size -- the entries the shards hold, read at most every 5 s and waited for at
        most 2 s, None when they did not all answer), ``tiers`` (counters), ``write_behind``, ``latency_ms``, ``coherence``, ``transport``."""
        buffered, inflight = self._wb.sizes()
        return {
            "cache": {**self._cache.stats(), "l2_size": self._l2_size()},
            "tiers": self.counters,
            "write_behind": {"buffered": buffered, "in_flight_batches": inflight,
                             "group_commit_batches": self._group.batches, "group_commit_ops": self._group.ops},
            "latency_ms": self._latencies.summary(),
            "coherence": {"since": self._coherence.since, "epoch": self._coherence.epoch,
                          "lease_ok": self._coherence.usable()},
            "transport": self._transport_stats(),
        }

    def _transport_stats(self) -> dict[str, Any]:
        """How this client reaches the copies: ``kind`` (direct / ray) and, direct, its calls that went
        direct and that fell back to Ray, and the process's connections; ``polls``: the same for the
        long polls, on a connection of their own: the process's ``PollHub``'s (``shared_by`` its
        clients), or this client's alone."""
        stats = getattr(self._transport, "transport_stats", None)
        if stats is None:
            return {"kind": "ray"}
        out = stats()
        if self._hub is not None:
            out["polls"] = {**{k: v for k, v in self._hub.transport_stats().items() if k != "kind"},
                            "shared_by": self._hub.members()}
        elif self._poll_transport is not self._transport:  # the long polls' own connection
            out["polls"] = {k: v for k, v in self._poll_transport.transport_stats().items() if k != "kind"}
        return out

    def _l2_size(self) -> int | None:
        now = time.monotonic()
        at, size = self._l2
        if now - at >= _L2_REFRESH_S:
            try:
                # bounded: stats() must not hang on a paused or restarting owner
                size = self._inspector.l2_entries(timeout=_L2_TIMEOUT_S)
            except ErlmcpRayError as exc:
                log.debug("l2_size: the shards did not answer: %s", exc)
                size = None
            self._l2 = (now, size)
        return size

    def _report(self) -> dict[str, Any] | None:
        """This client's counters for the coordinator, at most every ``_REPORT_S`` (``telemetry``)."""
        now = time.monotonic()
        if now - self._reported_at < _REPORT_S:
            return None
        self._reported_at = now
        return self._report_now()

    def _report_now(self) -> dict[str, Any]:
        cache = self._cache.stats()
        buffered, inflight = self._wb.sizes()
        return {"node": self._node_id, "l0_hits": cache["l0_hits"], "l1_hits": cache["l1_hits"],
                "misses": cache["misses"], "evictions": cache["evictions"], "l0_size": cache["l0_size"],
                "l1_size": cache["l1_size"], "l1_bytes": cache["l1_bytes"], "buffered": buffered,
                "in_flight_batches": inflight, "write_errors": self._counters["write_errors"],
                "writes_stashed": self._counters["writes_stashed"]}

    def sync(self, domains: str | list[str] = "all", timeout: float | None = None) -> dict[str, Any]:
        """Anti-entropy now (spec ``sync(all)``): this client's buffered writes are flushed, then every
        owner of ``domains`` replicates and flushes at once; returns when its replicas and the
        coordinator hold what it held when asked."""
        if domains == "all":
            names = None
        elif type(domains) is list and all(type(d) is str for d in domains):
            names = domains
            for name in names:
                self._domain(name)
        else:
            raise InvalidValueError(f"domains must be 'all' or a list of domain names, got {domains!r}",
                                    where="domains")
        timeout = _validate.timeout(timeout)
        timeout = self._timeout if timeout is None else timeout
        self.flush(timeout)
        # Idempotent: retried while the supervisor is unavailable (Ray restarting it).
        return Retry(timeout).run(lambda: self._transport.call(SUPERVISOR, "sync", names, timeout, timeout=timeout + 5.0),
                                  on_unavailable=lambda: self._transport.forget(SUPERVISOR))

    def alerts(self, since: int = 0) -> dict[str, Any]:
        """The supervisor's alert rules at work: ``events`` after ``since`` (each a dict of
        ``AlertEvent``'s fields; ``last`` is where to resume, within ``incarnation``: a restarted
        supervisor numbers from 1 again and evaluates its windows afresh), ``active`` (what fires
        now), counts, and ``nodes`` (the node limits as the last memory check saw them)."""
        if type(since) is not int or since < 0:
            raise InvalidValueError(f"alerts: since must be an int >= 0 (an event number), got {since!r}",
                                    where="since")
        return self._retry.run(lambda: self._transport.call(SUPERVISOR, "alerts", since, timeout=self._timeout),
                               on_unavailable=lambda: self._transport.forget(SUPERVISOR))

    def subscribe_alerts(self, target: Callable[[AlertEvent], Any], *, interval_s: float = 1.0) -> Subscription:
        """Call ``target(event)`` with every ``AlertEvent`` (firing or resolved) from now on, on a
        thread of this client that asks the supervisor every ``interval_s``."""
        if not callable(target):
            raise InvalidValueError(f"subscribe_alerts: target must be callable, got {type(target).__name__}",
                                    where="target")
        interval_s = _validate.timeout(interval_s, "interval_s", allow_none=False)
        if interval_s == 0:
            raise InvalidValueError("subscribe_alerts: interval_s must be > 0 seconds, got 0", where="interval_s")
        self._check_open()
        stop = threading.Event()
        first = self.alerts()
        since, incarnation = first.get("last", 0), first.get("incarnation")

        def run() -> None:
            nonlocal since, incarnation
            while not stop.wait(interval_s) and not self._closed:
                try:
                    answer = self.alerts(since)
                    if answer.get("incarnation") != incarnation:  # a restarted supervisor numbers from 1
                        answer = self.alerts(0)
                except ErlmcpRayError as exc:
                    log.debug("alerts unavailable: %s", exc)
                    continue
                since, incarnation = answer["last"], answer.get("incarnation")
                for event in answer["events"]:
                    try:
                        target(AlertEvent(**event))
                    except Exception:
                        log.exception("alert subscriber failed on %s", event)

        threading.Thread(target=run, name="erlmcp-alerts", daemon=True).start()
        return Subscription(stop.set, f"alerts-{uuid.uuid4().hex[:8]}")

    def sync_status(self) -> dict[str, Any]:
        """Per domain and shard: each copy's seq, staleness and sync counters."""
        return self._inspector.sync_status()

    def get_domain_stats(self, domain: str) -> dict[str, Any]:
        """Entries, bytes, limit, shards and copies of ``domain`` (owner copies are counted once)."""
        return self._inspector.get_domain_stats(domain)

    def keys(self, domain: str, pattern: str = "*", *, tag: str | None = None) -> list[str]:
        """The keys of ``domain`` matching the glob ``pattern`` (``*``, ``?``, ``[...]``), or carrying
        ``tag``, sorted: what the shard owners hold once this client's buffered writes reached them
        (it flushes first). One call per shard; for an operator or a notebook, not a hot path."""
        if not isinstance(pattern, str) or not pattern:
            raise InvalidValueError(f"keys: pattern must be a non-empty glob str, got {pattern!r}", where="pattern")
        if tag is not None and (not isinstance(tag, str) or not tag):
            raise InvalidValueError(f"keys: tag must be a non-empty str, got {tag!r}", where="tag")
        self.flush()
        return self._inspector.keys(domain, pattern, tag)

    def get_cluster_memory(self) -> dict[str, Any]:
        """The spec's cluster memory: nodes, total bytes, and per node the copies it holds and the
        memory of our actors there (RSS), against the per-node limits and their pressure level."""
        return self._inspector.get_cluster_memory()

    def force_gc(self) -> dict[str, Any]:
        """Purge expired entries and collect garbage in every shard copy and in this client;
        returns what was freed."""
        return self._inspector.force_gc()

    def compact(self) -> dict[str, Any]:
        """Shrink every shard copy's structures (dicts, expiry heap, op-log); returns what was freed."""
        return self._inspector.compact()

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Flush buffered writes and stop this client's threads. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Stop without flushing (the system is going away)."""
        if self._closed:
            return
        self._closed = True
        join_s = self.settings.poll_timeout_s + 1
        self._wb.close(join_s)
        self._coherence.close(join_s)

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ async twins
    async def get_async(self, domain: str, key: str, default: Any = None, **kw: Any) -> Any:
        if kw.get("consistency") is None and self._coherence.usable():
            d = self._domain(domain)
            if self._level(d, None) is not STRONG:
                value = self.get(domain, key, _MISS, local_only=True)
                if value is not _MISS:
                    return value
        return await _in_thread(self.get, domain, key, default, **kw)

    async def put_async(self, domain: str, key: str, value: Any, **kw: Any) -> Version | None:
        d = self._domain(domain)
        coherence = kw.get("coherence")
        strong_coherence = (self.settings.coherence if coherence is None else _validate.coherence(coherence)) is STRONG_COH
        if self._level(d, kw.get("consistency")) is EVENTUAL and not strong_coherence:
            return self.put(domain, key, value, **kw)  # only buffers: never blocks the event loop
        return await _in_thread(self.put, domain, key, value, **kw)

    async def delete_async(self, domain: str, key: str, **kw: Any) -> bool:
        return await _in_thread(self.delete, domain, key, **kw)

    async def flush_async(self, timeout: float | None = None) -> None:
        await _in_thread(self.flush, timeout)


_MISS = object()
#: a client's counters go to the coordinator with a poll at most this often
_REPORT_S = 1.0
#: stats()["cache"]["l2_size"] is read from the shards at most this often
_L2_REFRESH_S = 5.0
_L2_TIMEOUT_S = 2.0


async def _in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    # Remote calls block; an async actor's event loop must not. The client is thread-safe.
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


#: how long a topology refresh waits for the coordinator before it reads Ray's key-value store alone
_LAYOUT_CALL_S = 2.0
