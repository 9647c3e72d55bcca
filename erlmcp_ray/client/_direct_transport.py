"""The direct transport: the data path (reads, writes, a strong write's replica applies, progress, find)
over each shard copy's socket endpoint (``erlmcp_ray.direct``), everything else over Ray.

``DirectTransport`` implements the client's ``Transport`` seam in front of another transport (Ray's,
in production; the ``FakeTransport`` in unit tests), which it calls for whatever is not on the data
path, to look a copy's endpoint up (the copy's ``endpoint`` method), and -- the fallback -- for a call
whose copy has no endpoint or cannot be reached.

Connections are the process's (``DirectPool``, one per system namespace): every client object in a
process shares one connection per copy, safe across threads, several requests in flight on it.

Failures look as they do on the Ray path, so the client's retry policy is unchanged:

    connection broken (the copy's process died or restarted)  -> UnavailableError; retried (same request seq)
    endpoint unreachable (connect refused, no route)           -> this call goes over Ray
    the endpoint lookup unanswered for 1 s (paused, restarting) -> this call goes over Ray (lookup again in 1 s)
    no answer in time                                           -> OperationTimeoutError (not retried)
    the copy raised one of erlmcp_ray's errors                  -> that error (its args and attributes)

A strong write passes the owner's pending answer to each replica's ``apply_write``: on this transport
the replica's request is sent the moment the owner's answer is read (a callback on its future), by
whichever thread reads it -- the client holds no thread for it.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray import errors
from erlmcp_ray.client._transport import COORDINATOR, _what
from erlmcp_ray.core.wire import PollAnswer, Progress, ReadAnswer, WriteAnswer
from erlmcp_ray.direct import DirectConnection, FrameTooLarge, ProtocolError, RemoteCallError
from erlmcp_ray.direct._client import Reply
from erlmcp_ray.errors import (
    ConfigError,
    ErlmcpRayError,
    OperationTimeoutError,
    RemoteError,
    UnavailableError,
)

__all__ = ["DIRECT_METHODS", "DirectPool", "DirectTransport", "close_shared_pool", "default_transport", "shared_pool"]

log = logging.getLogger(__name__)

#: the calls that go over the direct endpoint (the shard actor serves the same set)
DIRECT_METHODS = frozenset(("read", "write", "apply_write", "progress", "find", "ping", "sync"))
#: the coordinator's calls that go over its direct endpoint (the coherence path)
COORDINATOR_METHODS = frozenset(("poll", "poll_many", "invalidate", "publish"))
#: msgpack carries named tuples as arrays: the client's named types again
_DECODE: dict[str, Callable[[Any], Any]] = {"read": ReadAnswer._make, "write": WriteAnswer._make,
                                            "progress": Progress._make, "poll": PollAnswer._make,
                                            "poll_many": lambda answers: [PollAnswer._make(a) for a in answers]}
_NO_ENDPOINT_RECHECK_S = 5.0
#: a copy that did not answer its endpoint lookup in time: asked again after this long
_SILENT_RECHECK_S = 1.0
#: ready_any waits this long on one call before looking at the others
_ANY_SLICE_S = 0.002
_MISSING = object()


class DirectPool:
    """The process's connections to the copies of one system. ``secret`` reads the system's secret
    (Ray's key-value store); ``connection(target, lookup)`` is the live connection to ``target`` or
    None (no endpoint, or not reachable now: use the fallback). ``spin_s``: how long a connection to a
    shard copy busy-polls for an answer (``DirectConnection``; never the coordinator's)."""

    def __init__(self, secret: Callable[[], bytes | None], *, max_frame: int = 64 * 1024 * 1024,
                 connect_timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 tls: ssl.SSLContext | None = None, spin_s: float = 0.0) -> None:
        self._read_secret, self._max_frame, self._connect_timeout = secret, max_frame, connect_timeout_s
        self._tls, self._spin_s = tls, spin_s
        self._clock = clock
        self._secret: bytes | None = None
        self._conns: dict[Any, DirectConnection] = {}
        self._endpoints: dict[Any, Any] = {}  # target -> (host, port) | (None, recheck at)
        self._lock = threading.Lock()
        self._connecting: dict[Any, threading.Lock] = {}
        self.stats = {"connects": 0, "connect_failures": 0, "refused": 0, "broken": 0}

    def private(self) -> DirectPool:
        """A pool of the same system with connections of its own (``DirectTransport.dedicated``)."""
        return DirectPool(self._read_secret, max_frame=self._max_frame, connect_timeout_s=self._connect_timeout,
                          clock=self._clock, tls=self._tls, spin_s=self._spin_s)

    def connection(self, target: Any, lookup: Callable[[Any], dict | None]) -> DirectConnection | None:
        conn = self._conns.get(target)
        if conn is not None and conn.broken is None:
            return conn
        with self._lock:
            gate = self._connecting.setdefault(target, threading.Lock())
        with gate:  # one connect per copy at a time: a thousand callers after a restart make one
            conn = self._conns.get(target)
            if conn is not None and conn.broken is None:
                return conn
            if conn is not None:
                self.stats["broken"] += 1
                self._drop(target)
            return self._connect(target, lookup)

    def _connect(self, target: Any, lookup: Callable[[Any], dict | None]) -> DirectConnection | None:
        endpoint = self._endpoints.get(target, _MISSING)
        if endpoint is not _MISSING and endpoint[0] is None:
            if self._clock() < endpoint[1]:
                return None  # no endpoint there a moment ago
            endpoint = _MISSING
        if endpoint is _MISSING:
            try:
                found = lookup(target)  # UnavailableError when the copy is gone: the caller's retry handles it
            except OperationTimeoutError as exc:
                # The copy does not answer (paused, or a process Ray is restarting after its node
                # died): this call goes over Ray, whose wait the caller bounds -- and ends when a
                # failover moved the owner -- instead of every caller of the copy waiting here.
                self.stats["connect_failures"] += 1
                self._endpoints[target] = (None, self._clock() + _SILENT_RECHECK_S)
                log.info("the endpoint lookup of %s did not answer: %s", target, exc)
                return None
            if not found:
                self._endpoints[target] = (None, self._clock() + _NO_ENDPOINT_RECHECK_S)
                return None
            endpoint = self._endpoints[target] = (found["host"], int(found["port"]))
        secret = self._secret or self._read_secret()
        if not secret:
            self._endpoints[target] = (None, self._clock() + _NO_ENDPOINT_RECHECK_S)
            return None
        for attempt in (0, 1):
            try:
                # The coordinator's answers are long polls and invalidations that wait for other
                # clients: spinning for them would only burn CPU (and hold this process's GIL).
                conn = DirectConnection(endpoint, secret, timeout=self._connect_timeout, max_frame=self._max_frame,
                                        tls=self._tls, spin_s=0.0 if target == COORDINATOR else self._spin_s)
            except ssl.SSLError as exc:  # the peer's certificate is not the cluster's (or it wants none)
                self.stats["refused"] += 1
                log.warning("direct endpoint %s of %s failed the TLS handshake: %s", endpoint, target, exc)
                self._endpoints[target] = (None, self._clock() + _NO_ENDPOINT_RECHECK_S)
                return None
            except ProtocolError as exc:
                # A secret of another start() of the system (this process kept the old one): read it
                # again once; still refused: this copy is not ours to reach directly.
                self.stats["refused"] += 1
                if attempt == 0 and exc.reason == "refused":
                    secret = self._read_secret()
                    if secret:
                        continue
                log.warning("direct endpoint %s of %s refused the handshake: %s", endpoint, target, exc)
                self._endpoints[target] = (None, self._clock() + _NO_ENDPOINT_RECHECK_S)
                return None
            except OSError as exc:
                # Not reachable (the copy moved, or its process is gone): look it up again next time;
                # this call goes over Ray.
                self.stats["connect_failures"] += 1
                self._endpoints.pop(target, None)
                log.info("direct endpoint %s of %s unreachable: %s", endpoint, target, exc)
                return None
            self._secret = secret
            self.stats["connects"] += 1
            self._conns[target] = conn
            return conn
        return None

    def broken(self, target: Any, conn: DirectConnection) -> None:
        """``conn`` to ``target`` failed: the next call connects afresh (looking the endpoint up again:
        a restarted copy listens on another port)."""
        if conn.broken is None:
            return  # the call failed, not the connection (its dependency did, say)
        with self._lock:
            if self._conns.get(target) is conn:
                self.stats["broken"] += 1
                self._drop(target)

    def _drop(self, target: Any) -> None:
        conn = self._conns.pop(target, None)
        self._endpoints.pop(target, None)
        if conn is not None:
            conn.close()

    def forget(self, target: Any) -> None:
        """The client suspects ``target`` (it failed, or is not the owner): a connection that still
        works stays (it reaches the live process); the endpoint of a broken one is looked up again."""
        conn = self._conns.get(target)
        if conn is None or conn.broken is not None:
            with self._lock:
                self._drop(target)

    def reset(self) -> None:
        """Close the connections but keep the endpoints: the next call connects again, with no lookup."""
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()

    def connections(self) -> int:
        return sum(1 for c in list(self._conns.values()) if c.broken is None)

    def spins(self) -> dict[str, int]:
        """The open connections' waits answered while spinning, and those that spun in vain."""
        conns = list(self._conns.values())
        return {k: sum(c.spins[k] for c in conns) for k in ("hit", "miss")}

    def close(self) -> None:
        with self._lock:
            for target in list(self._conns):
                self._drop(target)
            self._endpoints.clear()


_pools: dict[tuple, DirectPool] = {}
_pools_lock = threading.Lock()


def shared_pool(namespace: str, max_frame: int, tls: dict | None = None, spin_s: float = 0.0) -> DirectPool:
    """This process's pool for the system in ``namespace`` (made on first use). ``tls``: the
    ``{"cert", "key", "ca"}`` paths when the system runs TLS (``ConfigError`` when they are unusable
    here); ``spin_s``: see ``DirectConnection``. A later system in the namespace with other transport
    settings gets a pool of its own."""
    key = (namespace, max_frame, tuple(sorted(tls.items())) if tls else None, spin_s)
    pool = _pools.get(key)
    if pool is None:
        from erlmcp_ray import _ray
        from erlmcp_ray.direct import client_context, secret_key

        try:
            context = client_context(tls) if tls else None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"transport TLS files unusable on this node: {exc}", path="transport.tls_cert") from exc
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = DirectPool(lambda: _ray.kv_get(secret_key(namespace)), max_frame=max_frame,
                                                tls=context, spin_s=spin_s)
    return pool


def close_shared_pool(namespace: str) -> None:
    """Close this process's connections to the system in ``namespace`` (it is shutting down)."""
    with _pools_lock:
        pools = [_pools.pop(key) for key in [k for k in _pools if k[0] == namespace]]
    for pool in pools:
        pool.close()


def default_transport(namespace: str, config: Any, base: Any = None) -> Any:
    """How a client of ``config``'s system reaches it: direct (in front of Ray's transport) unless
    ``transport.kind`` is ``ray``."""
    from erlmcp_ray.client._transport import RayTransport

    base = base or RayTransport(namespace)
    if config.transport.kind.value != "direct":
        return base
    t = config.transport
    return DirectTransport(base, shared_pool(namespace, t.max_frame, t.tls(), t.spin_us / 1e6))


class _Pending:
    """A call in flight on a connection."""

    __slots__ = ("conn", "future", "method", "target")

    def __init__(self, conn: DirectConnection, future: Reply, target: Any, method: str) -> None:
        self.conn, self.future, self.target, self.method = conn, future, target, method

    def wait(self, timeout: float) -> bool:
        return self.future.done() or self.conn.wait(self.future, timeout)


class _Chained(_Pending):
    """A call sent once the call it depends on answered (its answer is one of the arguments)."""

    __slots__ = ("_sending", "args", "dep")

    def __init__(self, conn: DirectConnection, target: Any, method: str, dep: _Pending, args: tuple) -> None:
        super().__init__(conn, Reply(), target, method)
        self.dep, self.args = dep, args
        self._sending = threading.Lock()  # held until the call was sent (or failed): a lighter Event
        self._sending.acquire()

    def sent(self) -> None:
        self._sending.release()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.dep.wait(timeout):
            return False
        # the dependency's callback runs just after its future is done (usually in this very thread,
        # which read the answer): wait for it to have sent
        if not self._sending.acquire(True, max(0.0, deadline - time.monotonic())):
            return False
        self._sending.release()
        return self.future.done() or self.conn.wait(self.future, max(0.0, deadline - time.monotonic()))


class DirectTransport:
    """See the module docstring. ``fallback``: the transport for everything else; ``pool``: the
    process's connections; ``lookup(target)``: a copy's endpoint (default: ask the copy over
    ``fallback``)."""

    #: a call given another's pending answer is sent once that answer is here (see client._direct)
    chains_safely = True

    def __init__(self, fallback: Any, pool: DirectPool, *,
                 lookup: Callable[[Any], dict | None] | None = None, lookup_timeout_s: float = 1.0) -> None:
        self._fallback, self._pool = fallback, pool
        self._lookup = lookup or (lambda target: fallback.call(target, "endpoint", timeout=lookup_timeout_s))
        self.stats = {"direct": 0, "fallback": 0, "broken": 0}
        self._closed = False
        # the fault seam's check (a partition cuts direct calls too); none on a fallback without it
        self._check_partition = getattr(fallback, "check_partition", None)

    @property
    def pool(self) -> DirectPool:
        """The connections it uses (the process's shared pool, or a ``dedicated`` one's own)."""
        return self._pool

    @property
    def fallback(self) -> Any:
        return self._fallback

    # The fault seam names this client (a partition cuts its direct calls too).
    @property
    def place(self) -> str:
        return getattr(self._fallback, "place", "client")

    @place.setter
    def place(self, value: str) -> None:
        if hasattr(self._fallback, "place"):
            self._fallback.place = value

    def transport_stats(self) -> dict:
        return {"kind": "direct", **self.stats, "connections": self._pool.connections(), **self._pool.stats,
                "spins": self._pool.spins()}

    # ------------------------------------------------------------------ calls
    def dedicated(self, fallback: Any = None) -> DirectTransport:
        """The same transport with connections of its own, not the process's shared ones: for a
        client's long poll (its answers do not queue behind data calls on a shared connection, nor
        theirs behind it), as Redis's client-side caching takes a connection of its own for its
        invalidation messages. ``close()`` ends its connections, and a call waiting on one at once.
        ``fallback``: another transport behind it (one that names no client to the fault seam)."""
        if fallback is None:
            return DirectTransport(self._fallback, self._pool.private(), lookup=self._lookup)
        return DirectTransport(fallback, self._pool.private())

    def check_partition(self, target: Any) -> None:
        """``UnavailableError`` when the fault seam cuts this client off from ``target``."""
        if self._check_partition is not None:
            self._check_partition(target)

    def close(self) -> None:
        """Close this transport's connections (only a ``dedicated`` one's are its own); later calls
        raise ``UnavailableError``."""
        self._closed = True
        self._pool.close()

    def interrupt(self) -> None:
        """End this transport's connections, and with them the calls waiting on them (they raise
        ``UnavailableError``); the next call connects again. For a ``dedicated`` one: a long poll
        asked with what has changed since."""
        self._pool.reset()

    def submit(self, target: Any, method: str, *args: Any) -> Any:
        if self._closed:
            raise UnavailableError(f"{_what(target)}: this transport was closed")
        if type(target) is str:
            if target != COORDINATOR or method not in COORDINATOR_METHODS:
                return self._fallback.submit(target, method, *args)
        elif method not in DIRECT_METHODS:
            return self._fallback.submit(target, method, *args)
        if self._check_partition is not None:
            self._check_partition(target)
        dep = None
        for a in args:
            if isinstance(a, _Pending):
                dep = a
                break
        conn = self._pool.connection(target, self._lookup)
        if conn is None:
            self.stats["fallback"] += 1
            if dep is not None:  # the fallback cannot wait on our call: resolve it first
                value = self.result(dep, 30.0, f"{dep.method} before {method}")
                args = tuple(value if a is dep else a for a in args)
            return self._fallback.submit(target, method, *args)
        if dep is not None:
            return self._chain(conn, target, method, args, dep)
        try:
            future = conn.call_async(method, *args)
        except ConnectionError as exc:
            self._broken(target, conn)
            raise UnavailableError(f"{_what(target)}: {exc}") from exc
        except (TypeError, FrameTooLarge):
            # An argument msgpack cannot carry (another transport's pending call), or a request larger
            # than the endpoint takes (transport.max_frame): this call goes over Ray.
            self.stats["fallback"] += 1
            return self._fallback.submit(target, method, *args)
        self.stats["direct"] += 1
        return _Pending(conn, future, target, method)

    def _chain(self, conn: DirectConnection, target: Any, method: str, args: tuple, dep: _Pending) -> _Chained:
        chained = _Chained(conn, target, method, dep, args)

        def send(done: Reply) -> None:
            try:
                value = done.result()
                chained.future = conn.call_async(method, *(value if a is dep else a for a in args))
            except BaseException as exc:  # noqa: BLE001 - the dependency failed (or the send): this call fails
                chained.future.set_exception(exc)
            finally:
                chained.sent()

        self.stats["direct"] += 1
        dep.future.add_done_callback(send)
        return chained

    def call(self, target: Any, method: str, *args: Any, timeout: float) -> Any:
        return self.result(self.submit(target, method, *args), timeout, f"{_what(target)} {method}")

    def ready(self, pending: list, timeout: float) -> list:
        if len(pending) == 1 and isinstance(pending[0], _Pending):  # one owner call: the common case
            return pending if pending[0].wait(timeout) else []
        direct = [p for p in pending if isinstance(p, _Pending)]
        if not direct:
            return self._fallback.ready(pending, timeout)
        others = [p for p in pending if not isinstance(p, _Pending)]
        deadline = time.monotonic() + timeout
        # What has answered already first (a stuck copy listed first must not hide the others' answers),
        # then wait for the rest in turn, then take once more what arrived meanwhile.
        done = {id(p) for p in direct if p.wait(0.0)}
        for p in direct:
            if id(p) not in done and p.wait(max(0.0, deadline - time.monotonic())):
                done.add(id(p))
        done |= {id(p) for p in direct if id(p) not in done and p.wait(0.0)}
        out = [p for p in direct if id(p) in done]
        if others:
            out += self._fallback.ready(others, max(0.0, deadline - time.monotonic()))
        return out

    def ready_any(self, pending: list, timeout: float) -> list:
        """The pending answers that are done once at least one is (or ``timeout`` s passed)."""
        direct = [p for p in pending if isinstance(p, _Pending)]
        others = [p for p in pending if not isinstance(p, _Pending)]
        if not direct:
            return self._fallback.ready_any(others, timeout)
        if len(direct) == 1 and not others:  # one replica: wait on it alone (slices would poll)
            return direct if direct[0].wait(timeout) else []
        deadline = time.monotonic() + timeout
        while True:
            done = [p for p in direct if p.wait(0.0)]
            if others:
                done += self._fallback.ready(others, 0.0)
            left = deadline - time.monotonic()
            if done or left <= 0:
                return done
            for p in direct:  # a slice on each in turn: one that answers is seen within a slice
                if p.wait(min(_ANY_SLICE_S, left)):
                    break

    def result(self, pending: Any, timeout: float, what: str) -> Any:
        if not isinstance(pending, _Pending):
            return self._fallback.result(pending, timeout, what)
        if not pending.wait(timeout):
            raise OperationTimeoutError(f"{what} did not answer within {timeout} s; it may or may not have happened")
        try:
            value = pending.future.result()
        except FrameTooLarge:  # a chained call too large for the endpoint: over Ray, now
            dep = pending.dep  # type: ignore[attr-defined]
            decoded = self.result(dep, timeout, what)
            args = [decoded if a is dep else a for a in pending.args]  # type: ignore[attr-defined]
            return self._fallback.call(pending.target, pending.method, *args, timeout=timeout)
        except RemoteCallError as exc:
            raise _remote_error(exc, what) from None
        except (ConnectionError, ProtocolError, OSError) as exc:
            self._broken(pending.target, pending.conn)
            raise UnavailableError(f"{what}: the connection to {_what(pending.target)} broke ({exc}); "
                                   f"it may or may not have happened") from exc
        except ErlmcpRayError:
            raise
        decode = _DECODE.get(pending.method)
        return value if decode is None else decode(value)

    def _broken(self, target: Any, conn: DirectConnection) -> None:
        self.stats["broken"] += 1
        self._pool.broken(target, conn)

    def forget(self, target: Any) -> None:
        self._fallback.forget(target)
        self._pool.forget(target)

    # ---------------------------------------------------------- everything else
    def is_actor(self, obj: Any) -> bool:
        return self._fallback.is_actor(obj)

    def alive_nodes(self) -> list[dict]:
        return self._fallback.alive_nodes()

    def node_id(self) -> str:
        return self._fallback.node_id()

    def stored_layout(self) -> bytes | None:
        return self._fallback.stored_layout()


def _remote_error(exc: RemoteCallError, what: str) -> ErlmcpRayError:
    """The copy's error as the caller would have got it over Ray: one of erlmcp_ray's, by name."""
    cls = getattr(errors, exc.kind, None)
    if isinstance(cls, type) and issubclass(cls, ErlmcpRayError):
        err = cls.__new__(cls)
        err.args = tuple(exc.remote_args)
        try:
            err.__dict__.update(exc.attrs)
        except (TypeError, AttributeError):
            pass
        return err
    return RemoteError(f"{what} failed remotely: {exc.kind}: {exc.message}")
