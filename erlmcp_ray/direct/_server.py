"""A socket endpoint serving the direct protocol from one thread (``selectors``): what each shard copy
runs beside its Ray actor. Each connection is a ``ServerConnection``; one that breaks the protocol is
closed and counted, the others go on. With ``tls`` (an ``ssl.SSLContext`` for the server side) every
connection is TLS first: a peer that fails the TLS handshake is closed and counted as ``tls``."""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from erlmcp_ray.direct._protocol import MAX_FRAME, READ_SIZE, ServerConnection, deferred_response

__all__ = ["DirectServer"]

_WAKE = object()  # the selector key of the wake-up socket


class _Peer:
    """A connection's protocol state, and whether its TLS handshake is done."""

    __slots__ = ("handshaken", "state")

    def __init__(self, state: ServerConnection, handshaken: bool) -> None:
        self.state, self.handshaken = state, handshaken


class DirectServer:
    """``DirectServer(secret, handler)``: listens on ``host:port`` (0: a free port) from a daemon
    thread; ``address`` is where; ``closed`` counts connections closed for a protocol breach, by reason."""

    def __init__(self, secret: bytes, handler: Callable[[str, list], Any], *, host: str = "127.0.0.1",
                 port: int = 0, max_frame: int = MAX_FRAME, tls: ssl.SSLContext | None = None) -> None:
        self._secret, self._max_frame, self._tls = secret, max_frame, tls
        self.requests = 0  # requests handed to the handler

        def counted(method: str, args: list) -> Any:
            self.requests += 1  # this server's one thread only
            return handler(method, args)

        self._handler = counted
        self._sock = socket.create_server((host, port))
        self._sock.setblocking(False)
        self.address = self._sock.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        # Answers that came later (a handler returned a Future, e.g. an asyncio long poll): queued by
        # whichever thread finished them, sent by this server's thread (one writer per socket),
        # which the wake-up socket rouses.
        self._later: list[tuple[Any, bytes]] = []
        self._later_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._view = memoryview(bytearray(READ_SIZE))
        self._stop = threading.Event()
        self.closed: dict[str, int] = {}
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="erlmcp-direct-server", daemon=True)
        self._thread.start()

    def describe(self) -> dict:
        """Where it listens, requests served, connections accepted, and those closed for a breach
        of the protocol, by reason."""
        return {"address": list(self.address), "requests": self.requests, "connections": self.connections,
                "closed": dict(self.closed)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _mask in self._selector.select(timeout=0.1):
                    if key.data is None:
                        self._accept()
                    elif key.data is _WAKE:
                        self._send_later()
                    else:
                        self._read(key.fileobj, key.data)
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()
            self._selector.close()
            self._wake_w.close()

    def _later_for(self, conn: Any) -> Any:
        def on_deferred(rid: int, future: Any) -> None:
            def done(f: Any) -> None:
                data = deferred_response(rid, f)
                with self._later_lock:
                    self._later.append((conn, data))
                try:
                    self._wake_w.send(b"\0")
                except OSError:  # the wake-up socket is full: a wake-up is pending anyway
                    pass

            future.add_done_callback(done)

        return on_deferred

    def _send_later(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass
        with self._later_lock:
            later, self._later = self._later, []
        for conn, data in later:
            if conn.fileno() >= 0 and not self._send(conn, data):  # closed meanwhile: the answer goes nowhere
                self._drop(conn)

    def _accept(self) -> None:
        try:
            conn, _peer = self._sock.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = ServerConnection(self._secret, self._handler, os.urandom(32), max_frame=self._max_frame)
        self.connections += 1
        conn.setblocking(False)
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                self._count("tls")
                conn.close()
                return
            peer = _Peer(state, handshaken=False)
            state.on_deferred = self._later_for(conn)
        else:
            state.on_deferred = self._later_for(conn)
            peer = _Peer(state, handshaken=True)
            if not self._send(conn, state.hello()):
                conn.close()
                return
        self._selector.register(conn, selectors.EVENT_READ, peer)

    def _send(self, conn: Any, data: bytes) -> bool:
        try:
            try:
                sent = conn.send(data)  # usually all of it: the socket's buffer is empty
            except (BlockingIOError, ssl.SSLWantWriteError):
                sent = 0
            if sent < len(data):
                conn.setblocking(True)  # the rest, waiting: a slow reader only holds this one thread briefly
                conn.sendall(memoryview(data)[sent:])
                conn.setblocking(False)
            return True
        except OSError:
            return False

    def _read(self, conn: Any, peer: _Peer) -> None:
        if not peer.handshaken:
            try:
                conn.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                self._count("tls")
                self._drop(conn)
                return
            peer.handshaken = True
            if not self._send(conn, peer.state.hello()):
                self._drop(conn)
            return
        view, n = self._view, 0  # one read buffer: this thread alone reads
        try:
            n = conn.recv_into(view)
            while n and n < len(view) and isinstance(conn, ssl.SSLSocket) and conn.pending():
                # decrypted already: select() would not say so
                got = conn.recv_into(view[n:], min(conn.pending(), len(view) - n))
                if not got:
                    break
                n += got
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not n:
                return
        except OSError:
            pass  # what was read is served; nothing read: the connection is gone
        if not n:
            self._drop(conn)
            return
        out, close = peer.state.receive(view[:n])  # the unpacker copies what it keeps
        if out and not self._send(conn, out):
            close = True
        if close:
            if peer.state.closed_for is not None:
                self._count(peer.state.closed_for)
            self._drop(conn)

    def _count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

    def _drop(self, conn: Any) -> None:
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
