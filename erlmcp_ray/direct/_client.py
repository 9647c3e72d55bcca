"""A client connection of the direct protocol: opened and authenticated at once, safe across
threads, several requests in flight (request ids), answers dispatched by one reader thread."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from concurrent.futures import Future
from typing import Any

from erlmcp_ray.direct._protocol import (
    MAX_FRAME,
    REQUEST,
    RESPONSE,
    ClientHandshake,
    ProtocolError,
    pack,
    unpacker,
)

__all__ = ["DirectConnection", "RemoteCallError"]


class RemoteCallError(Exception):
    """The server's handler raised: ``kind`` is its exception's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class DirectConnection:
    def __init__(self, address: tuple[str, int], secret: bytes, *, timeout: float = 10.0,
                 max_frame: int = MAX_FRAME) -> None:
        self._sock = socket.create_connection(address, timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unpacker = unpacker(max_frame)
        handshake = ClientHandshake(secret, os.urandom(32))
        try:
            self._send(handshake.answer(self._next()))
            try:
                reply = self._next()
            except ConnectionError:
                raise ProtocolError("refused", "the server closed the connection at the handshake "
                                               "(it does not accept this secret)") from None
            handshake.check(reply)
        except (ProtocolError, OSError):
            self._sock.close()
            raise
        self._sock.settimeout(None)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.broken: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name="erlmcp-direct-reader", daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _next(self) -> Any:
        for message in self._unpacker:
            return message
        while True:
            data = self._sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._unpacker.feed(data)
            for message in self._unpacker:
                return message

    def call_async(self, method: str, *args: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self.broken is not None:
                raise ConnectionError(f"connection broken: {self.broken}")
            rid = next(self._ids)
            self._pending[rid] = future
        frame = pack([REQUEST, rid, method, list(args)])
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self._fail(exc)
        return future

    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        return self.call_async(method, *args).result(timeout=timeout)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read_loop(self) -> None:
        try:
            while True:
                message = self._next()
                if not (isinstance(message, list) and len(message) == 4 and message[0] == RESPONSE):
                    raise ProtocolError("bad_response", str(message)[:80])
                _kind, rid, ok, value = message
                with self._lock:
                    future = self._pending.pop(rid, None)
                if future is not None:
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(RemoteCallError(*value))
        except BaseException as exc:  # noqa: BLE001 - every waiting call learns it
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = exc
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"connection broken: {exc}"))
