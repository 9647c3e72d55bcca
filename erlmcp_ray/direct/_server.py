"""A socket endpoint serving the direct protocol from one thread (``selectors``): what a shard copy
will run beside its Ray actor. Each connection is a ``ServerConnection``; one that breaks the
protocol is closed and counted, the others go on."""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

from erlmcp_ray.direct._protocol import MAX_FRAME, ServerConnection

__all__ = ["DirectServer"]


class DirectServer:
    """``DirectServer(secret, handler)``: listens on ``host:port`` (0: a free port) from a daemon
    thread; ``address`` is where; ``closed`` counts connections closed for a protocol breach, by reason."""

    def __init__(self, secret: bytes, handler: Callable[[str, list], Any], *, host: str = "127.0.0.1",
                 port: int = 0, max_frame: int = MAX_FRAME) -> None:
        self._secret, self._handler, self._max_frame = secret, handler, max_frame
        self._sock = socket.create_server((host, port))
        self._sock.setblocking(False)
        self.address = self._sock.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self.closed: dict[str, int] = {}
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="erlmcp-direct-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _mask in self._selector.select(timeout=0.1):
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.fileobj, key.data)
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()
            self._selector.close()

    def _accept(self) -> None:
        try:
            conn, _peer = self._sock.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = ServerConnection(self._secret, self._handler, os.urandom(32), max_frame=self._max_frame)
        self.connections += 1
        try:
            conn.sendall(state.hello())
        except OSError:
            conn.close()
            return
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ, state)

    def _read(self, conn: Any, state: ServerConnection) -> None:
        try:
            data = conn.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        out, close = state.receive(data)
        try:
            if out:
                conn.setblocking(True)  # replies are small; a slow reader only holds this one thread briefly
                conn.sendall(out)
                conn.setblocking(False)
        except OSError:
            close = True
        if close:
            if state.closed_for is not None:
                self.closed[state.closed_for] = self.closed.get(state.closed_for, 0) + 1
            self._drop(conn)

    def _drop(self, conn: Any) -> None:
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
