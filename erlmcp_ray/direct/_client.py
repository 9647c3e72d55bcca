"""A client connection of the direct protocol: opened and authenticated at once, safe across
threads, several requests in flight (request ids), answers read by whichever caller waits (no
reader thread: see ``DirectConnection``)."""

from __future__ import annotations

import itertools
import os
import select
import socket
import ssl
import struct
import threading
import time
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

__all__ = ["DirectConnection", "FrameTooLarge", "RemoteCallError", "Reply"]


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
#: the longest a blocking read waits before the waiting caller looks at its deadline again
_RECV_SLICE_S = 0.05


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
    answer without a thread switch."""

    def __init__(self, address: tuple[str, int], secret: bytes, *, timeout: float = 10.0,
                 max_frame: int = MAX_FRAME, tls: ssl.SSLContext | None = None) -> None:
        self._send_lock = threading.Lock()
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
        self._ids = itertools.count(1)
        self._pending: dict[int, Reply] = {}
        self._lock = threading.Lock()  # guards _pending, _leading and _followers
        #: callers waiting while another reads: each sleeps on its own lock (see ``wait``)
        self._followers: dict[Reply, Any] = {}
        self._leading = False
        self.broken: BaseException | None = None

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _next(self, wait_s: float | None = None) -> Any:
        """The next message; waits up to ``wait_s`` s for it (None: the socket's own timeout), else
        ``TimeoutError``. The socket's timeout is never changed after the handshake: a concurrent
        ``sendall`` must never be cut short (a half-sent frame would corrupt the stream)."""
        for message in self._unpacker:
            return message
        end = None if wait_s is None else time.monotonic() + wait_s
        while True:
            if self._tls:
                n = self._recv_tls(end)
                if not n:
                    raise ConnectionError("the server closed the connection")
                self._unpacker.feed(self._rview[:n])
                for message in self._unpacker:
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
            if not n:
                raise ConnectionError("the server closed the connection")
            self._unpacker.feed(self._rview[:n])  # the unpacker copies what it keeps
            for message in self._unpacker:
                return message

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
