"""The coordinator actor (``erlmcp:coordinator``): a thin async shell over ``InvalidationLog``.

Shards ``publish`` what their replicas hold; clients long-poll "what changed since N" (as Ray
Serve's LongPollHost); actor handles that subscribed get a ``MemoryUpdate`` per write, pushed.

Async on purpose: hundreds of polls wait at once as coroutines on one event loop, so every
method runs on that one thread and the log needs no lock. Nothing here blocks that loop: no
``ray.get``, and deliveries to subscribers are fire-and-forget.

Undecorated; ``actors.options`` builds it with ``max_concurrency`` large enough for every poller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.experimental import internal_kv

from erlmcp_ray import _ray
from erlmcp_ray.actors._process import gc_stats, tune_gc
from erlmcp_ray.core.entry import CacheInvalidated, MemoryConflict, MemoryUpdate
from erlmcp_ray.core.invalidation import CONFLICT, KEEPS_CACHES, WRITE, InvalidationLog
from erlmcp_ray.core.layout import Layout, layout_key
from erlmcp_ray.core.wire import PollAnswer

log = logging.getLogger(__name__)

__all__ = ["MAX_POLL_TIMEOUT_S", "CoordinatorActor"]

#: A poll never waits longer than this, whatever it asks: a waiting poll holds a slot of the
#: actor's max_concurrency, and a client that vanished mid-poll must let go of it.
MAX_POLL_TIMEOUT_S = 60.0
_DEFAULT_LEASE_MS = 10_000


def _read_layout(key: bytes) -> Layout:
    raw = internal_kv._internal_kv_get(key) if internal_kv._internal_kv_initialized() else None
    return Layout.decode(raw)


def _incarnation_epoch(epoch: int | None) -> int:
    """A fresh epoch for this incarnation; Ray reruns the constructor with the same arguments
    on restart, so a fixed ``epoch`` argument must still not come back unchanged."""
    now = time.time_ns()
    if epoch is None:
        return now
    if ray.is_initialized() and _ray.was_restarted():
        return max(epoch + 1, now)
    return epoch


_NOT_STARTED = object()


class _Signal:
    """``await signal.wait(timeout)`` until the next ``fire()`` (which wakes exactly the coroutines
    waiting then) or the timeout. What ``asyncio.Event`` swapped per fire and ``asyncio.wait_for``
    did, without the task and the extra loop turns ``wait_for`` costs per wait: a poll woken by a
    publish resumes in one turn of the loop."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: dict[asyncio.Future, None] = {}  # in order of waiting

    def __len__(self) -> int:
        return len(self._waiters)

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiters = self._waiters
        waiters[waiter] = None
        timer = loop.call_later(max(0.0, timeout_s), _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            waiters.pop(waiter, None)  # timed out or cancelled: not kept until the next fire


def _settle(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class CoordinatorActor:
    def __init__(self, config: dict, namespace: str, epoch: int | None = None, *, rng: Any = None,
                 system_id: str = "") -> None:
        tune_gc()
        self._config = config
        self.namespace = namespace
        lease_ms = (config.get("cache_coordinator") or {}).get("lease_ms", _DEFAULT_LEASE_MS)
        self._log = InvalidationLog(epoch=_incarnation_epoch(epoch), lease_ms=lease_ms)
        self._lease_s = lease_ms / 1000.0
        self._next_prune = time.monotonic() + self._lease_s
        # Fired on every publish: wakes exactly the polls waiting then.
        self._published = _Signal()
        self._waiting = 0
        self._watched: dict[str, asyncio.Future] = {}  # sub_id -> the one delivery we check
        self._rng = rng if rng is not None else random.Random()
        # Fired whenever a poll acknowledges: synchronous invalidations wait on it.
        self._acked = _Signal()
        self._kinds: dict[str, str] = {}  # sub_id -> "update" | "invalidation"
        # Per start() of the system (Ray reruns a restarted actor's constructor with the same
        # arguments): a restarted coordinator finds its clients, a new system never does.
        self._kv_key = f"erlmcp:{namespace}:{system_id}:coordinator".encode()
        self._forgotten = False
        self._restore()
        # What the persistence selector chose (start() and the selector keep it in Ray's KV store);
        # its generation rides on every poll answer, so clients learn of a migration at once.
        self._layout_key = layout_key(namespace)
        self._layout = _read_layout(self._layout_key)
        self._direct: Any = _NOT_STARTED  # see endpoint()
        self._direct_starting: asyncio.Future | None = None

    # ------------------------------------------------------------------ writes
    async def publish(self, items: list) -> int:
        """Append ``(domain, key, record)`` items; returns the new last seq.

        No ``await`` in here: appends and deliveries of concurrent publishes must not interleave,
        or a subscriber could get two writes of one key out of order.
        """
        if not items:
            return self._log.last_seq
        first = self._log.last_seq + 1
        last_seq = self._log.publish(items)
        self._published.fire()
        self._deliver(items, first)
        return last_seq

    async def invalidate(self, items: list, wait: bool, timeout_s: float,
                         exclude: tuple = ()) -> tuple[int, list, list]:
        """Publish explicit invalidations; with ``wait``, answer once every live client that
        receives those domains acknowledged them (polled past them), or at ``timeout_s``.

        Returns ``(seq, acked client ids, missing client ids)``. A client that is missing has
        stopped trusting its cache by then (its trust window is shorter than the timeout). One that
        unregisters, or whose lease runs out, meanwhile is no longer waited for (nor listed).
        ``exclude``: clients not to wait for (the caller, which dropped its own copies already).
        """
        seq = await self.publish(items)
        if not wait:
            return seq, [], []
        domains = {item[0] for item in items}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(float(timeout_s), 0.0), MAX_POLL_TIMEOUT_S)
        while True:
            acked, missing = self._log.ack_status(seq, domains)
            if exclude:
                missing = [cid for cid in missing if cid not in exclude]
            remaining = deadline - loop.time()
            if not missing or remaining <= 0:
                return seq, acked, missing
            # woken by a poll that acknowledged, a client leaving, or the first lease among the
            # missing running out (that client is waited for no longer)
            await self._acked.wait(min(remaining, self._log.lease_left(missing)))

    def _acks_moved(self, before: int) -> None:
        """Wake the waiting invalidations if a poll moved an acknowledgement since ``before`` (the
        log's ``acks`` then): a poll that acknowledged nothing new wakes none of them."""
        if self._log.acks != before:
            self._acked.fire()

    def _deliver(self, items: list, first_seq: int) -> None:
        if not self._log.subscribed:  # the usual case: no actor subscribes; no per-item lookups
            return
        for seq, item in enumerate(items, first_seq):
            domain, key, record = item[0], item[1], item[2]
            reason = item[3] if len(item) > 3 else WRITE
            subscribers = self._log.subscriptions_for(domain)
            if not subscribers:
                continue
            update = None
            for sub_id, target in subscribers:
                if self._kinds.get(sub_id) == "invalidation":
                    if reason not in KEEPS_CACHES:
                        self._send(sub_id, target, "on_cache_invalidated",
                                   CacheInvalidated.of(domain, key, reason, record, seq))
                elif reason == CONFLICT:
                    # An actor without the method simply does not hear of conflicts.
                    if record is not None and hasattr(target, "on_memory_conflict"):
                        self._send(sub_id, target, "on_memory_conflict", MemoryConflict.from_record(domain, key, record))
                elif record is not None:
                    update = update or MemoryUpdate.from_record(domain, key, record)
                    self._send(sub_id, target, "on_memory_update", update)

    def _send(self, sub_id: str, target: Any, method: str, event: Any) -> None:
        try:
            ref = getattr(target, method).remote(event)
        except Exception as exc:  # noqa: BLE001 - not an actor with that method
            self._drop_subscription(sub_id, exc)
            return
        # Calls from this actor to one target run in submission order: per-key order for free.
        # Check one delivery per subscriber at a time: a dead actor fails every call, so one is
        # enough to notice, and every other ObjectRef is dropped at once.
        if sub_id not in self._watched:
            future = ref.as_future()
            self._watched[sub_id] = future
            future.add_done_callback(functools.partial(self._delivered, sub_id))

    def _delivered(self, sub_id: str, future: asyncio.Future) -> None:
        if self._watched.get(sub_id) is future:
            del self._watched[sub_id]
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        # Only death ends a subscription: a restarting actor is back soon, and an error raised by
        # the subscriber's own code (RayTaskError) is its bug, not a reason to stop delivering.
        if isinstance(exc, RayActorError) and not isinstance(exc, (ActorUnavailableError, RayTaskError)):
            self._drop_subscription(sub_id, exc)
        else:
            log.warning("subscription %s: on_memory_update failed: %s", sub_id, exc)

    def _drop_subscription(self, sub_id: str, exc: BaseException) -> None:
        if self._log.remove_subscription(sub_id):
            log.warning("subscription %s removed, its subscriber is gone: %s", sub_id, exc)
        self._watched.pop(sub_id, None)

    # ------------------------------------------------------------------ polls
    async def poll(
        self, client_id: str, since_seq: int, domains: list[str], value_domains: list[str], timeout_s: float,
        report: dict | None = None,
    ) -> tuple:
        """``(epoch, last_seq, gap, messages)`` for this client, waiting up to ``timeout_s`` for news.
        ``report``: the client's counters, kept for ``client_reports`` (telemetry).

        See ``PollResult`` for what the fields mean and how the client resumes.
        """
        self._forget_lapsed_clients()
        if report is not None:
            self._log.report(client_id, report)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s(timeout_s)
        generation, epoch = self._layout.generation, self._log.epoch
        self._waiting += 1
        try:
            while True:
                if domains is None and not self._log.knows(client_id):
                    # A client we forgot (its lease lapsed) or never met (we restarted): it may have
                    # missed messages, so it gets a gap, drops its caches and registers again. One
                    # unregistered while this waited (closed) is not registered again by the poll.
                    return self._gap_answer()
                acks = self._log.acks
                result = self._log.poll(client_id, since_seq, domains, value_domains)
                self._acks_moved(acks)
                remaining = deadline - loop.time()
                if (result.messages or result.gap or remaining <= 0 or generation != self._layout.generation
                        or epoch != self._log.epoch):
                    return result.to_tuple(self._layout.generation)
                # What was scanned held nothing for this client; don't rescan it on every wake.
                since_seq = result.last_seq
                # From here on use what the client registered: a subscribe() made while this
                # poll waits re-registers its value domains, and must apply to this answer.
                domains = value_domains = None
                await self._published.wait(remaining)  # then answer with whatever there is (maybe nothing)
        finally:
            self._waiting -= 1

    async def poll_many(self, entries: list, timeout_s: float) -> list:
        """``poll`` for the caching clients of one process at once (their ``PollHub``): one
        ``PollAnswer`` per ``[client_id, since_seq, report]`` entry, in order, answered as soon as
        any of them has news (or must resume after a gap), or at the timeout. Domains always come
        from what each client registered. A client unregistered while this waits gets a gap (it
        is closing: its hub drops the answer) and is not registered again."""
        self._forget_lapsed_clients()
        log = self._log
        answers: list = [None] * len(entries)
        sinces = []
        for i, (client_id, since_seq, report) in enumerate(entries):
            if report is not None:
                log.report(client_id, report)
            if not log.knows(client_id):
                answers[i] = self._gap_answer()
            sinces.append(since_seq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s(timeout_s)
        generation, epoch = self._layout.generation, log.epoch
        self._waiting += 1
        try:
            while True:
                news = False
                results: dict[int, Any] = {}
                acks = log.acks
                for i, entry in enumerate(entries):
                    if answers[i] is not None:
                        news = True
                        continue
                    if not log.knows(entry[0]):  # unregistered meanwhile
                        answers[i] = self._gap_answer()
                        news = True
                        continue
                    result = results[i] = log.poll(entry[0], sinces[i])
                    if result.messages or result.gap:
                        news = True
                self._acks_moved(acks)
                remaining = deadline - loop.time()
                if news or remaining <= 0 or generation != self._layout.generation or epoch != log.epoch:
                    layout = self._layout.generation
                    for i, result in results.items():
                        answers[i] = result.to_tuple(layout)
                    return answers
                for i, result in results.items():  # nothing for them: don't rescan what was scanned
                    sinces[i] = result.last_seq
                await self._published.wait(remaining)
        finally:
            self._waiting -= 1

    def _gap_answer(self) -> PollAnswer:
        """For a client we forgot or never met: it drops its caches and registers again."""
        return PollAnswer(self._log.epoch, self._log.last_seq, True, [], self._layout.generation)

    def _wait_s(self, timeout_s: float) -> float:
        # Jittered, as Serve's LongPollHost does: clients started together (a job's tasks, a
        # restart) would otherwise time out and re-poll in lockstep, in bursts. Only ever
        # shortened, so a wait never outlasts the caller's own call timeout.
        timeout_s = min(max(float(timeout_s), 0.0), MAX_POLL_TIMEOUT_S)
        return timeout_s * self._rng.uniform(0.9, 1.0)

    def _forget_lapsed_clients(self) -> None:
        # Tasks come and go with their own clients; without this the registry only grows.
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self._lease_s
            self._log.forget_expired()

    # ------------------------------------------------------------------ clients, subscriptions
    async def register_client(
        self, client_id: str, domains: list[str], value_domains: list[str], own_writes: bool = True
    ) -> tuple[int, int]:
        """Returns ``(epoch, last_seq)``, where a client with an empty cache starts polling.
        ``own_writes`` False: its polls leave out its own writes (``InvalidationLog.register``)."""
        answer = self._log.register(client_id, domains, value_domains, own_writes)
        self._persist()
        return answer

    async def unregister_client(self, client_id: str) -> bool:
        gone = self._log.unregister(client_id)
        self._persist()
        if gone:
            self._acked.fire()  # an invalidation waiting for it waits no longer
        return gone

    async def subscribe_actor(self, domain: str | None, target: Any, kind: str = "update") -> str:
        """Push events of ``domain`` (None: all) to an actor: ``kind="update"`` calls
        ``target.on_memory_update(MemoryUpdate)`` per write; ``kind="invalidation"`` calls
        ``target.on_cache_invalidated(CacheInvalidated)`` per invalidation. Kept across restarts.
        """
        if kind not in ("update", "invalidation"):
            raise ValueError(f"kind must be 'update' or 'invalidation', got {kind!r}")
        sub_id = uuid.uuid4().hex
        self._log.add_subscription(sub_id, domain, target)
        self._kinds[sub_id] = kind
        self._persist()
        return sub_id

    async def unsubscribe(self, sub_id: str) -> bool:
        self._watched.pop(sub_id, None)
        self._kinds.pop(sub_id, None)
        gone = self._log.remove_subscription(sub_id)
        self._persist()
        return gone

    # ------------------------------------------------------------------ surviving restarts
    # Ray reruns the constructor of a restarted actor with empty state. Clients and
    # subscriptions are kept in the GCS key-value store (it outlives actors), so a new
    # incarnation still delivers to subscribers and a synchronous invalidation still
    # waits for every client that may hold a stale entry. Messages are not kept: the new
    # epoch tells clients to drop their caches instead.
    def _persist(self) -> None:
        if self._forgotten:
            return  # shut down: a late unregister must not write the registry back
        state = {
            "clients": self._log.snapshot_clients(),
            "subs": [(sid, domain, target, self._kinds.get(sid, "update"))
                     for sid, domain, target in self._log.subscriptions()],
        }
        try:
            internal_kv._internal_kv_put(self._kv_key, cloudpickle.dumps(state), overwrite=True)
        except Exception as exc:  # noqa: BLE001 - not fatal: the next change tries again
            log.warning("could not persist coordinator state: %s", exc)

    def _restore(self) -> None:
        try:
            raw = internal_kv._internal_kv_get(self._kv_key) if internal_kv._internal_kv_initialized() else None
            state = cloudpickle.loads(raw) if raw else None
        except Exception as exc:  # noqa: BLE001 - start empty rather than not at all
            log.warning("could not restore coordinator state: %s", exc)
            return
        if not state:
            return
        self._log.restore_clients(state["clients"])
        for sid, domain, target, kind in state["subs"]:
            self._log.add_subscription(sid, domain, target)
            self._kinds[sid] = kind

    async def forget_state(self) -> None:
        """Delete what ``_persist`` kept, and the layout, for good (shutdown calls it)."""
        self._forgotten = True
        internal_kv._internal_kv_del(self._kv_key)
        internal_kv._internal_kv_del(self._layout_key)

    async def new_epoch(self) -> int:
        """Every client must drop its caches (a checkpoint was restored: they may hold values newer
        than it): a new epoch does that — each client's next poll sees it, drops its caches and
        registers again. Waiting polls are answered at once. Returns the new epoch."""
        self._log.epoch = max(self._log.epoch + 1, time.time_ns())
        self._published.fire()
        return self._log.epoch

    # ------------------------------------------------------------------ layout
    async def get_layout(self) -> bytes:
        """The running layout (``core.layout.Layout``, encoded)."""
        return self._layout.encode()

    async def layout_changed(self) -> int:
        """The selector wrote a new layout to the KV store: take it, and answer every waiting poll
        (each carries the new generation). Returns it."""
        self._layout = _read_layout(self._layout_key)
        self._published.fire()
        return self._layout.generation

    # ------------------------------------------------------------------ inspection
    async def get_config(self) -> dict:
        return self._config

    async def stats(self) -> dict:
        server = self._direct if self._direct is not _NOT_STARTED else None
        direct = None if server is None else server.describe()
        return {**self._log.stats(), "waiting_polls": self._waiting, "direct": direct, "gc": gc_stats()}

    async def client_info(self) -> dict:
        return self._log.client_info()

    async def client_reports(self) -> dict:
        """Each live client's counters (cache hits per tier, misses, evictions, backlog, its node)."""
        return self._log.client_reports()

    async def ping(self) -> int:
        return self._log.epoch

    # ------------------------------------------------------------ the direct data plane
    #: what the coordinator's direct endpoint serves: the coherence path (long polls, the
    #: invalidations that wait for their acknowledgements, and the owners' publications)
    DIRECT_METHODS = ("poll", "poll_many", "invalidate", "publish", "ping")

    async def endpoint(self) -> dict | None:
        """Where the coordinator's direct endpoint listens (``{"host", "port", "incarnation"}``),
        started on first asking, on this actor's event loop (a request runs there as a Ray call
        would, with no thread between); None with ``transport.kind = "ray"``, no secret, or when it
        cannot start."""
        if self._direct is _NOT_STARTED:
            if self._direct_starting is None:  # concurrent first askers share one start
                self._direct_starting = asyncio.ensure_future(self._start_direct())
            server = await self._direct_starting
            self._direct = server
        if self._direct is None:
            return None
        host, port = self._direct.address
        return {"host": host, "port": port, "incarnation": self._log.epoch}

    async def _start_direct(self) -> Any:
        from erlmcp_ray.actors._endpoint import start_async_endpoint
        from erlmcp_ray.config import MemoryConfig

        transport = MemoryConfig.load(self._config).transport
        if transport.kind.value != "direct":
            return None

        def serve(method: str, args: list) -> Any:
            if method not in self.DIRECT_METHODS:
                raise ValueError(f"{method!r} is not served by the coordinator's direct endpoint")
            return getattr(self, method)(*args)  # a coroutine: the loop runs it, the answer goes out when done

        return await start_async_endpoint(self.namespace, serve, max_frame=transport.max_frame, tls=transport.tls(),
                                          who="the coordinator")
