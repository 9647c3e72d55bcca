"""``FakeTransport``: a whole memory system in this process, behind the client's ``Transport`` seam.

Every shard copy is a real ``core.shard_copy.ShardCopy`` (the same owner and replica rules the
shard actors run) and the coordinator is a real ``core.invalidation.InvalidationLog``, so a
``MemoryClient`` built on this runs its read path, write-behind, resend and coherence logic
against the real rules, without Ray::

    fake = FakeTransport({"domains": {"shared": {"shards": 1}}})
    client = fake.client()
    client.put("shared", "k", 1, consistency="strong")

Calls execute at once, in the caller's thread, one at a time (like actors with
``max_concurrency=1``). Replication runs after every owner write unless the shard is held
(``hold``/``release``, or ``auto_replicate=False`` and ``replicate()`` by hand). Faults:
``down(copy)`` makes a copy unavailable, ``restart(copy)`` gives it a new incarnation that
recovered from a live peer (losing what was not replicated, as a Ray restart does).
``before_call`` / ``after_call`` hooks run in the caller's thread around each call and may
block, which makes interleavings deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._transport import COORDINATOR, SUPERVISOR, Copy
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.invalidation import InvalidationLog
from erlmcp_ray.core.layout import Layout
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.wire import PollAnswer
from erlmcp_ray.errors import ErlmcpRayError, RemoteError, UnavailableError

__all__ = ["FakePending", "FakeTransport"]

Hook = Callable[[Any, str, tuple], None]


class FakePending:
    """A finished call's answer (or error)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class FakeTransport:
    def __init__(self, config: Any = None, *, auto_replicate: bool = True, before_call: Hook | None = None,
                 after_call: Hook | None = None) -> None:
        self.config = MemoryConfig.load(config)
        self.auto_replicate = auto_replicate
        self.before_call, self.after_call = before_call, after_call
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a publish, or a poll's acknowledgement
        self.copies: dict[Copy, ShardCopy] = {}
        for domain in self.config.domains:
            n = self.config.replication_factor_for(domain)
            for shard in range(self.config.domain(domain).shards):
                for slot in range(n):
                    self.copies[Copy(domain, shard, slot)] = self._new_copy(domain, shard, slot)
        self.log = InvalidationLog(epoch=1, lease_ms=self.config.cache_coordinator.lease_ms)
        self._down: set[Any] = set()
        self._held: set[tuple[str, int]] = set()
        self.calls: dict[str, int] = {}

    def _new_copy(self, domain: str, shard: int, slot: int) -> ShardCopy:
        d = self.config.domain(domain)
        settings = ShardSettings(domain_config=d.model_dump(mode="json"), max_bytes=d.max_bytes // d.shards,
                                 max_entries=None if d.max_entries is None else max(1, d.max_entries // d.shards),
                                 staleness_ms=d.staleness_ms)
        return ShardCopy(domain, shard, slot, self.config.replication_factor_for(domain), 1, settings)

    def client(self, **kwargs: Any) -> Any:
        """A ``MemoryClient`` on this transport."""
        from erlmcp_ray.client import MemoryClient

        return MemoryClient("fake", self.config, transport=self, **kwargs)

    # ------------------------------------------------------------ Transport
    #: a pending answer passed to a call is resolved at once (it is already here)
    chains_safely = True

    def submit(self, target: Any, method: str, *args: Any) -> FakePending:
        try:
            return FakePending(self._run(target, method, args))
        except ErlmcpRayError as exc:
            return FakePending(error=exc)

    def call(self, target: Any, method: str, *args: Any, timeout: float) -> Any:
        return self.result(self.submit(target, method, *args), timeout, method)

    def ready(self, pending: list, timeout: float) -> list:
        return list(pending)

    def result(self, pending: FakePending, timeout: float, what: str) -> Any:
        if pending.error is not None:
            raise pending.error
        return pending.value

    def forget(self, target: Any) -> None:
        pass

    def is_actor(self, obj: Any) -> bool:
        return False

    def alive_nodes(self) -> list[dict]:
        return [{"NodeID": "fake-node", "NodeManagerAddress": "127.0.0.1", "Alive": True}]

    def node_id(self) -> str:
        return "fake-node"

    def stored_layout(self) -> bytes | None:
        return None  # no KV store in-process: the coordinator's answer is the only source

    # ------------------------------------------------------------- faults
    def down(self, target: Any) -> None:
        """Calls to ``target`` fail with UnavailableError until ``restart`` or ``up``."""
        with self._lock:
            self._down.add(target)

    def up(self, target: Any) -> None:
        with self._lock:
            self._down.discard(target)

    def restart(self, target: Copy) -> ShardCopy:
        """A new incarnation of ``target``, recovered from a live peer (what Ray's restart does)."""
        with self._lock:
            new = self._new_copy(*target)
            for slot in range(new.copies):
                peer = Copy(target.domain, target.shard, slot)
                if slot != target.slot and peer not in self._down:
                    new.recover(self.copies[peer].state.snapshot())
                    break
            self.copies[target] = new
            self._down.discard(target)
            return new

    def hold(self, domain: str, shard: int) -> None:
        """Stop replicating (and publishing) ``domain``/``shard`` until ``release``."""
        with self._lock:
            self._held.add((domain, shard))

    def release(self, domain: str, shard: int) -> None:
        with self._lock:
            self._held.discard((domain, shard))
        self.replicate(domain, shard)

    def calls_snapshot(self) -> dict[str, int]:
        """How many calls of each method were served."""
        with self._lock:
            return dict(self.calls)

    def owner(self, domain: str, shard: int = 0) -> ShardCopy:
        return self.copies[Copy(domain, shard, 0)]

    def replicate(self, domain: str, shard: int) -> None:
        """One replication round of the shard, then publication of what the replicas hold."""
        with self._lock:
            owner = self.copies[Copy(domain, shard, 0)]
            for _ in range(3):  # a replica elsewhere in the log asks for a resend: at most twice
                last, forget, payloads = owner.replication_payloads()
                resend = False
                for slot, (base, ops, snap) in payloads.items():
                    replica = Copy(domain, shard, slot)
                    if replica in self._down:
                        owner.replica_failed(slot)
                        continue
                    status, pos = self.copies[replica].sync(owner.epoch, owner.incarnation, base, last, ops, snap,
                                                            0.0, forget)
                    resend |= owner.sync_answered(slot, status, pos, 0.0)
                owner.finish_round(last)
                if not resend:
                    break
            batch = owner.publish_batch()
            if batch is not None and COORDINATOR not in self._down:
                upto, items = batch
                if items:
                    self.log.publish(items)
                    self._changed.notify_all()
                owner.published(upto)

    # ------------------------------------------------------------ dispatch
    def _run(self, target: Any, method: str, args: tuple) -> Any:
        args = tuple(self.result(a, 0, method) if isinstance(a, FakePending) else a for a in args)
        if self.before_call is not None:
            self.before_call(target, method, args)
        if target == COORDINATOR:
            value = self._coordinator(method, args)
        elif target == SUPERVISOR:
            value = self._supervisor(method)
        else:
            value = self._shard(target, method, args)
        if self.after_call is not None:
            self.after_call(target, method, args)
        return value

    def _shard(self, target: Copy, method: str, args: tuple) -> Any:
        with self._lock:
            if target in self._down:
                raise UnavailableError(f"{target} is down (fake)")
            self.calls[method] = self.calls.get(method, 0) + 1
            copy = self.copies[target]
            if method == "write":
                client_id, seq, ops, full, *rest = args
                value = copy.write(client_id, seq, ops, full, len(rest) > 1 and rest[1], strong=bool(rest and rest[0]))
                if self.auto_replicate and (target.domain, target.shard) not in self._held:
                    self.replicate(target.domain, target.shard)
                return value
            if method == "stats":
                return {**copy.stats(), "node_id": "fake-node"}
            if method == "memory":
                st = copy.state
                return {"domain": copy.domain, "shard": copy.shard, "slot": copy.slot, "node_id": "fake-node",
                        "pid": 0, "rss": 0, "node_memory_total": 0, "bytes": st.bytes_used, "entries": len(st),
                        "tombstones": st.tombstone_count}
            if method in ("snapshot", "digest"):
                return getattr(copy.state, method)()
            if (method == "read" and args[1] is None and copy.unconfirmed(args[0]) is not None
                    and (target.domain, target.shard) not in self._held):
                self.replicate(target.domain, target.shard)  # the shard actor's wait: a round now
            if method in ("read", "progress", "apply_write", "find"):
                return getattr(copy, method)(*args)
            raise RemoteError(f"the fake transport has no shard method {method!r}")

    def _supervisor(self, method: str) -> Any:
        """In-process shards never migrate: the report says what the config says; nor fail over."""
        if method == "failover_status":
            return {"owners": {}, "history": [], "stash_lost": 0, "stashed": {}, "silent": {}}
        if method == "alerts":  # no supervisor thread here: no rule is evaluated
            return {"events": [], "last": 0, "incarnation": "fake", "active": [], "fired": 0, "resolved": 0,
                    "evaluations": 0, "interval_s": None, "rules": [], "nodes": {}, "node_evictions": 0}
        if method != "strategies":
            raise RemoteError(f"the fake transport runs no persistence selector (asked {method!r})")
        cfg = self.config
        return {"auto_select": False, "generation": 0, "domains": {
            name: {"backend": cfg.backend_for(name).value, "copies": cfg.replication_factor_for(name),
                   "selected_by": "config" if d.backend is not None else "persistence_selector",
                   "durable": cfg.durable_mode_for(name).value, "migrations": []}
            for name, d in cfg.domains.items()}}

    def _coordinator(self, method: str, args: tuple) -> Any:
        with self._lock:
            if COORDINATOR in self._down:
                raise UnavailableError("the coordinator is down (fake)")
            self.calls[method] = self.calls.get(method, 0) + 1
            log = self.log
            if method == "get_config":
                return self.config.to_dict()
            if method == "get_layout":
                return Layout().encode()  # in-process shards never migrate
            if method == "register_client":
                return log.register(*args)
            if method == "unregister_client":
                gone = log.unregister(*args)
                self._changed.notify_all()
                return gone
            if method == "poll":
                client_id, since, domains, value_domains, timeout_s, *report = args
                if report and report[0] is not None:
                    log.report(client_id, report[0])
                if domains is None and not log.knows(client_id):
                    return PollAnswer(log.epoch, log.last_seq, True, [])
                deadline = time.monotonic() + min(timeout_s, 0.2)
                while True:
                    if domains is None and not log.knows(client_id):  # unregistered while it waited
                        return PollAnswer(log.epoch, log.last_seq, True, [])
                    result = log.poll(client_id, since, domains, value_domains)
                    self._changed.notify_all()  # an acknowledgement
                    remaining = deadline - time.monotonic()
                    if result.messages or result.gap or remaining <= 0:
                        return result.to_tuple()
                    since = result.last_seq
                    self._changed.wait(remaining)
            if method == "publish":
                seq = log.publish(args[0])
                self._changed.notify_all()
                return seq
            if method == "invalidate":
                items, wait, timeout_s, *rest = args
                seq = log.publish(items)
                self._changed.notify_all()
                if not wait:
                    return seq, [], []
                exclude = rest[0] if rest else ()
                deadline = time.monotonic() + timeout_s
                domains = {item[0] for item in items}
                while True:
                    acked, missing = log.ack_status(seq, domains)
                    missing = [c for c in missing if c not in exclude]
                    remaining = deadline - time.monotonic()
                    if not missing or remaining <= 0:
                        return seq, acked, missing
                    self._changed.wait(min(remaining, log.lease_left(missing)))  # as the actor does
            if method == "unsubscribe":
                return log.remove_subscription(args[0])
            if method == "client_reports":
                return log.client_reports()
            raise RemoteError(f"the fake transport has no coordinator method {method!r}")
