"""A client connection of the direct protocol: opened and authenticated at once, safe across
threads, several requests in flight (request ids), answers read by whichever caller waits (no
reader thread: see ``DirectConnection``)."""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from erlmcp_ray.direct._protocol import (
    MAX_FRAME,
    READ_SIZE,
    REQUEST,
    RESPONSE,
    ClientHandshake,
    ProtocolError,
    pack,
    unpacker,
)

__all__ = ["DirectConnection", "FrameTooLarge", "RemoteCallError", "Reply", "spinning"]


class RemoteCallError(Exception):
    """The server's handler raised: ``kind`` is its exception's type name, ``args`` and ``attrs`` its
    arguments and attributes (as msgpack carried them)."""

    def __init__(self, kind: str, message: str, args: list | None = None, attrs: dict | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message
        self.remote_args = list(args) if args is not None else [message]
        self.attrs = dict(attrs or {})


#: the largest answer a client reads (msgpack's Unpacker takes at most 2**31 - 1)
_ANSWER_LIMIT = 2**31 - 1
#: the longest a blocking read waits before the waiting caller looks at its deadline again; a wait
#: shorter than this polls (select), which costs two more system calls
_RECV_SLICE_S = 0.01
#: a connection whose answers missed the spin this many waits in a row stops spinning for
#: ``_SPIN_REST`` waits (long polls, slow calls: spinning would only burn CPU), then tries again
_SPIN_MISSES = 4
_SPIN_REST = 64
_threads = threading.local()  # .quiet: this thread's waits never spin (see ``spinning``)
_INCOMPLETE = object()  # what ``_fed`` returns when the bytes read complete no message yet


@contextlib.contextmanager
def spinning(allowed: bool) -> Iterator[None]:
    """Within it, this thread's waits spin (``DirectConnection``'s ``spin_s``) only if ``allowed``. A
    spinning thread keeps its process's GIL from the others most of the spin: a background thread
    (the write-behind's) or a caller speaking for others (a group commit of several callers' writes,
    whose callers must get the GIL to queue their next ones) waits without spinning."""
    before = getattr(_threads, "quiet", False)
    _threads.quiet = before or not allowed
    try:
        yield
    finally:
        _threads.quiet = before


class Reply:
    """The answer of one call, once it came: a lighter ``concurrent.futures.Future`` (no condition
    variable: the connection's own waits do the waiting) with ``done``, ``result``, ``set_result``,
    ``set_exception`` and ``add_done_callback`` (called once it is done, in the thread that sets it)."""

    __slots__ = ("_callbacks", "_done", "_ok", "_value")
    _lock = threading.Lock()  # callbacks only: added and taken under it

    def __init__(self) -> None:
        self._done = False
        self._ok = False
        self._value: Any = None
        self._callbacks: list | None = None

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        if not self._done:
            raise RuntimeError("the call has not answered yet")
        if self._ok:
            return self._value
        raise self._value

    def set_result(self, value: Any) -> None:
        self._ok, self._value = True, value
        self._finish()

    def set_exception(self, exc: BaseException) -> None:
        self._ok, self._value = False, exc
        self._finish()

    def _finish(self) -> None:
        with Reply._lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            fn(self)

    def add_done_callback(self, fn: Any) -> None:
        with Reply._lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


class FrameTooLarge(ValueError):
    """A request larger than the endpoint accepts (``max_frame``): not sent."""


class DirectConnection:
    """One authenticated connection. ``call`` sends a request and waits for its answer; ``call_async``
    sends and returns a future that ``result`` waits for. There is no reader thread: a waiting
    caller reads the socket itself (the *leader*), handing every other caller's answer to its future;
    the others sleep until their answer arrives or the leader leaves (leader/follower), each on a
    lock of its own, so an answer wakes only the caller it is for and a lone caller reads its own
    answer without a thread switch.

    ``spin_s``: how long the reader busy-polls the socket for an answer before it sleeps in a blocking
    read (as Linux's ``busy_poll`` does in the kernel). On a virtual machine a sleeping reader's
    wake-up costs both ends more than the round trip itself (measured on this project's 2-core VM:
    a bare ping's p50 77-96 us -> 25-43 us with a 100 us spin, the serving process's CPU halved; see
    benchmarks/results/direct.txt for the client's figures); answers that keep missing the spin
    turn it off for a while (``_SPIN_MISSES``, ``_SPIN_REST``). Not under TLS."""

    def __init__(self, address: tuple[str, int], secret: bytes, *, timeout: float = 10.0,
                 max_frame: int = MAX_FRAME, tls: ssl.SSLContext | None = None, spin_s: float = 0.0) -> None:
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Reply] = {}
        self._lock = threading.Lock()  # guards _pending, _leading and _followers
        #: callers waiting while another reads: each sleeps on its own lock (see ``wait``)
        self._followers: dict[Reply, Any] = {}
        self._leading = False
        self.broken: BaseException | None = None
        self._spin_s = 0.0 if tls is not None else max(0.0, spin_s)
        self._spin_misses = 0
        self._spin_rest = 0
        #: waits answered while spinning, and those that spun in vain (then slept)
        self.spins = {"hit": 0, "miss": 0}
        self._tls = tls is not None
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:  # the server's certificate must chain to the context's CA (hostnames are not checked)
                sock = tls.wrap_socket(sock, server_hostname=address[0])
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        self._sock = sock
        # Reads land in one buffer per connection (only the leader reads): ``recv(n)`` allocates n bytes
        # per call, and at n >= 128 KiB that is an mmap/munmap pair -- ~20 us a read on this kind of host.
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        # max_frame bounds what this connection sends (the server cuts a larger frame); answers come
        # from a peer that proved it knows the secret and may be as large as a stored value.
        self._unpacker = unpacker(_ANSWER_LIMIT)
        self.max_frame = max_frame
        handshake = ClientHandshake(secret, os.urandom(32))
        try:
            self._send(handshake.answer(self._next()))
            try:
                reply = self._next()
            except ConnectionError:
                raise ProtocolError("refused", "the server closed the connection at the handshake "
                                               "(it does not accept this secret)") from None
            handshake.check(reply)
            self._sock.settimeout(None)  # blocking from here on (see _next)
            if not self._tls:  # a blocking read returns after a slice without data (see _next)
                sec = int(_RECV_SLICE_S)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                      struct.pack("ll", sec, int((_RECV_SLICE_S - sec) * 1e6)))
        except (ProtocolError, OSError):
            self._sock.close()
            raise

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _next(self, wait_s: float | None = None) -> Any:
        """The next message; waits up to ``wait_s`` s for it (None: the socket's own timeout), else
        ``TimeoutError``. The socket's timeout is never changed after the handshake: a concurrent
        ``sendall`` must never be cut short (a half-sent frame would corrupt the stream)."""
        for message in self._unpacker:
            return message
        end = None if wait_s is None else time.monotonic() + wait_s
        n = self._spin(end) if self._spin_s else None  # first a short spin (see the class docstring)
        if n is not None:
            message = self._fed(n)
            if message is not _INCOMPLETE:
                return message
        while True:
            if self._tls:
                message = self._fed(self._recv_tls(end))
                if message is not _INCOMPLETE:
                    return message
                continue
            # A wait of a slice or more reads at once, blocking (SO_RCVTIMEO ends it after a slice with
            # nothing): a select() before every read cost ~20 us of CPU a call. A shorter one polls.
            blocking = end is None or end - time.monotonic() >= _RECV_SLICE_S
            try:
                n = self._sock.recv_into(self._rbuf, 0, 0 if blocking else socket.MSG_DONTWAIT)
            except BlockingIOError:
                if blocking:
                    continue  # a slice without data: look at the clock again
                if not select.select([self._sock], [], [], max(0.0, end - time.monotonic()))[0]:
                    raise TimeoutError("nothing arrived") from None
                continue
            message = self._fed(n)
            if message is not _INCOMPLETE:
                return message

    def _fed(self, n: int) -> Any:
        """Take the ``n`` bytes just read into the read buffer: the first message they complete, or
        ``_INCOMPLETE``; 0 bytes: the server closed the connection."""
        if not n:
            raise ConnectionError("the server closed the connection")
        self._unpacker.feed(self._rview[:n])  # the unpacker copies what it keeps
        for message in self._unpacker:
            return message
        return _INCOMPLETE

    def _spin(self, end: float | None) -> int | None:
        """Busy-poll the socket for up to ``spin_s`` (never past ``end``): the bytes read (0: closed),
        or None when nothing came. Not while other calls on this connection wait (their callers need
        the GIL when their answers come), nor in a thread that says so (``spinning``)."""
        if len(self._pending) > 1 or self._followers or getattr(_threads, "quiet", False):
            return None
        if self._spin_rest:
            self._spin_rest -= 1
            return None
        now = time.monotonic()
        stop = now + self._spin_s
        if end is not None:
            if end <= now:
                return None  # a look at what arrived, not a wait: the read below does it
            stop = min(stop, end)
        recv, buf, flag, clock = self._sock.recv_into, self._rbuf, socket.MSG_DONTWAIT, time.monotonic
        while True:
            try:
                n = recv(buf, 0, flag)
            except (BlockingIOError, InterruptedError):
                if clock() < stop:
                    continue
                self.spins["miss"] += 1
                self._spin_misses += 1
                if self._spin_misses >= _SPIN_MISSES:
                    self._spin_misses, self._spin_rest = 0, _SPIN_REST
                return None
            self.spins["hit"] += 1
            self._spin_misses = 0
            return n

    def _recv_tls(self, end: float | None) -> int:
        """TLS: an SSL object must not read and write at once from two threads, so a read holds the
        send lock -- taken only once select() says a record is arriving (or one is decrypted
        already), never while waiting."""
        sock = self._sock
        if (end is not None and not sock.pending()
                and not select.select([sock], [], [], max(0.0, end - time.monotonic()))[0]):
            raise TimeoutError("nothing arrived")
        with self._send_lock:
            return sock.recv_into(self._rbuf)

    def call_async(self, method: str, *args: Any) -> Reply:
        """Send the request; its answer's future (``result`` waits for it)."""
        future = Reply()
        rid = next(self._ids)  # itertools.count: one step is atomic
        frame = pack([REQUEST, rid, method, list(args)])  # TypeError for what msgpack cannot carry
        if len(frame) > self.max_frame:
            raise FrameTooLarge(f"a {method} request of {len(frame)} bytes; the endpoint takes {self.max_frame}")
        with self._lock:
            if self.broken is not None:
                raise ConnectionError(f"connection broken: {self.broken}")
            self._pending[rid] = future
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self._fail(exc)
        return future

    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        return self.result(self.call_async(method, *args), timeout)

    def result(self, future: Reply, timeout: float = 30.0) -> Any:
        """The answer of ``future`` (raises its error; ``TimeoutError`` after ``timeout`` s)."""
        if not self.wait(future, timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        return future.result()

    def wait(self, future: Reply, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``future`` (reading the socket while no one else does);
        whether it is done. A caller that finds another reading sleeps on a lock of its own, which
        the reader releases when its answer came, or to hand the reading over as it leaves: one
        thread woken per answer, never every waiting caller."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if future.done():
                    if not self._leading:
                        self._hand_over()  # we may have been woken to read: someone else must
                    return True
                if self._leading:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    wake = threading.Lock()
                    wake.acquire()
                    self._followers[future] = wake
                else:
                    self._leading = True
                    wake = None
            if wake is not None:
                wake.acquire(True, remaining)
                with self._lock:
                    self._followers.pop(future, None)
                continue
            try:
                answered = self._lead(future, deadline)
            finally:
                with self._lock:
                    self._leading = False
                    self._hand_over()
            return answered or future.done()

    def _hand_over(self) -> None:
        """Wake one sleeping caller to read in our place (caller holds ``_lock``)."""
        if self._followers:
            _future, wake = self._followers.popitem()
            wake.release()

    def _lead(self, future: Reply, deadline: float) -> bool:
        """Read answers until ``future``'s came (True) or the deadline passed (False)."""
        try:
            polled = False
            while not future.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if polled:
                        return False
                    remaining = 0.0  # no time left: still take what has arrived, without waiting
                polled = True
                try:
                    message = self._next(remaining)
                except TimeoutError:  # nothing arrived (a partial value stays buffered)
                    return False
                if not (isinstance(message, list) and len(message) == 4 and message[0] == RESPONSE):
                    raise ProtocolError("bad_response", str(message)[:80])
                _kind, rid, ok, value = message
                with self._lock:
                    waiting = self._pending.pop(rid, None)
                if waiting is not None:
                    if ok:
                        waiting.set_result(value)
                    else:
                        waiting.set_exception(RemoteCallError(*value))
                    if waiting is not future:
                        with self._lock:
                            wake = self._followers.pop(waiting, None)
                        if wake is not None:
                            wake.release()
        except BaseException as exc:  # noqa: BLE001 - every waiting call learns it
            self._fail(exc)
        return True

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = exc
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"connection broken: {exc}"))
        with self._lock:  # every sleeping caller: its call failed
            followers, self._followers = self._followers, {}
        for wake in followers.values():
            wake.release()
