"""The direct protocol served on an asyncio event loop, for an actor whose methods are coroutines (the
coordinator): a request is read, run and answered on the actor's own loop, so a long poll or a
waiting invalidation costs no thread hand-over each way (``DirectServer`` runs its own thread and
would pass each request to the loop and each answer back: ~70 us a request, measured here).

The same protocol state per connection as ``DirectServer`` (``ServerConnection``): a connection that
breaks the protocol is closed and counted by reason, the others go on. A handler returns its answer,
or an awaitable that the loop runs (the answer goes out when it is done; other requests on the
connection are served meanwhile). A peer that does not read its answers is not read from either
until the loop's write buffer for it drained (asyncio's flow control), so it cannot make the server
buffer without bound. With ``tls`` every connection is TLS (asyncio's own), and a peer that fails
its TLS handshake is closed; asyncio does not tell the protocol of that, so it is not counted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import ssl
import types
from collections.abc import Callable
from typing import Any

from erlmcp_ray.direct._protocol import (
    MAX_FRAME,
    ServerConnection,
    deferred_response,
    error_response,
    response,
)

__all__ = ["AsyncDirectServer"]


class _Connection(asyncio.Protocol):
    def __init__(self, server: AsyncDirectServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._state: ServerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        server = self._server
        server.connections += 1
        server._open.add(self)
        self._state = ServerConnection(server._secret, server._handler, os.urandom(32),
                                       max_frame=server._max_frame, on_deferred=self._deferred)
        self._transport.write(self._state.hello())

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._state is None:
            return
        out, close = self._state.receive(data)
        if out:
            self._transport.write(out)
        if close:
            self._server._count(self._state.closed_for or "closed")
            self._transport.abort()
            self._transport = None

    def _deferred(self, rid: int, future: Any) -> None:
        if isinstance(future, types.CoroutineType):  # run as a task that answers itself, the moment it
            asyncio.get_running_loop().create_task(self._answer(rid, future))  # returns (no loop turn between)
            return
        if isinstance(future, concurrent.futures.Future):  # finished by another thread: answered on the loop
            future = asyncio.wrap_future(future)

        def done(f: Any) -> None:
            transport = self._transport
            if transport is not None and not transport.is_closing():  # else the answer goes nowhere
                transport.write(deferred_response(rid, f))

        future.add_done_callback(done)

    async def _answer(self, rid: int, coroutine: Any) -> None:
        try:
            data = response(rid, await coroutine)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - the caller gets it
            data = error_response(rid, exc)
        transport = self._transport
        if transport is not None and not transport.is_closing():  # else the answer goes nowhere
            transport.write(data)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server._open.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class AsyncDirectServer:
    """``await AsyncDirectServer.start(secret, handler, ...)`` on the loop that is to serve; then
    ``address``, ``describe()`` and ``closed`` as ``DirectServer`` has them (``describe`` also counts
    the requests by method). ``close()`` may be
    called from any thread."""

    def __init__(self, secret: bytes, handler: Callable[[str, list], Any], *, max_frame: int = MAX_FRAME) -> None:
        if len(secret) < 16:
            raise ValueError("a secret of at least 16 bytes is needed")
        self._secret, self._max_frame = secret, max_frame
        self.connections = 0
        self.closed: dict[str, int] = {}
        self._open: set[_Connection] = set()

        self.methods: dict[str, int] = {}  # requests served, by method (the loop's thread only)

        def counted(method: str, args: list) -> Any:
            self.methods[method] = self.methods.get(method, 0) + 1
            result = handler(method, args)
            if inspect.isawaitable(result) and not isinstance(result, (types.CoroutineType, asyncio.Future)):
                return asyncio.ensure_future(result)  # a coroutine runs as a task that answers itself
            return result

        self._handler = counted
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    async def start(cls, secret: bytes, handler: Callable[[str, list], Any], *, host: str = "127.0.0.1",
                    port: int = 0, max_frame: int = MAX_FRAME, tls: ssl.SSLContext | None = None) -> AsyncDirectServer:
        self = cls(secret, handler, max_frame=max_frame)
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), host, port, ssl=tls)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    @property
    def requests(self) -> int:
        return sum(self.methods.values())

    def describe(self) -> dict:
        return {"address": list(self.address), "requests": self.requests, "methods": dict(self.methods),
                "connections": self.connections, "closed": dict(self.closed)}

    def close(self) -> None:
        if self._server is None or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._close()
        else:
            self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self._server.close()  # stops listening; the connections are closed here too
        for conn in list(self._open):
            conn.abort()

    def _count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
