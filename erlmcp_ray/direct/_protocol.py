"""The direct data plane's protocol (issue 14), pure: no sockets, no threads, no clock.

A connection carries msgpack values, back to back (msgpack's streaming ``Unpacker`` finds their
boundaries; ``max_frame`` bounds what one value may take before it is complete). It opens with a
mutual challenge-response over a shared secret (HMAC-SHA256; the secret never crosses the wire):

    server -> client   ["erlmcp-direct", VERSION, server_nonce]
    client -> server   ["auth", client_nonce, HMAC(secret, "c" + server_nonce + client_nonce)]
    server -> client   ["ok", HMAC(secret, "s" + client_nonce + server_nonce)]      (or the connection closes)

then requests and responses, matched by a request id (several in flight per connection):

    client -> server   [REQUEST, id, method, args]
    server -> client   [RESPONSE, id, True, result]  or  [RESPONSE, id, False, [error type, message, args, attrs]]

(an error's ``args`` and attributes travel when msgpack can carry them, so the caller can raise the
same error again -- ``erlmcp_ray.errors`` by name only, never an arbitrary class).

``ServerConnection`` is one connection seen from the server: ``receive(bytes)`` returns what to send
back and whether to close. Anything unexpected -- a malformed or oversized value, a request before the
handshake, a wrong HMAC, a request of the wrong shape -- closes that connection (and is counted by
reason); nothing raises out of it, so a serving process never fails because of what a peer sent.
A handler's own exception is returned to the caller as an error response; the connection stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import types
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import msgpack

__all__ = ["MAX_FRAME", "READ_SIZE", "REQUEST", "RESPONSE", "VERSION", "ClientHandshake", "ProtocolError", "ServerConnection",
           "deferred_response", "error_response", "pack", "unpacker"]

VERSION = 1
REQUEST, RESPONSE = 0, 1
MAX_FRAME = 64 * 1024 * 1024
#: how much one read takes from a socket, into a buffer kept for the purpose: ``socket.recv(n)``
#: allocates n bytes per call, and from 128 KiB on that is an mmap/munmap pair (~20 us a read here)
READ_SIZE = 1 << 20
_HELLO = "erlmcp-direct"
_NONCE = 32


class ProtocolError(Exception):
    """A peer broke the protocol; the connection must close. ``reason`` names how (for counting)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_local = threading.local()


def pack(value: Any) -> bytes:
    # one Packer per thread: it keeps its buffer (packb makes a Packer, and a 1 MiB buffer, per call)
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    try:
        return packer.pack(value)
    except Exception:
        del _local.packer  # a failed pack may leave its buffer dirty
        raise


#: what a handler returns when it answers later (see ``ServerConnection.on_deferred``)
_LATER = (Future, asyncio.Future, types.CoroutineType)


def response(rid: int, value: Any) -> bytes:
    """The response carrying a handler's answer (its error response when msgpack cannot carry it)."""
    try:
        return pack([RESPONSE, rid, True, value])
    except Exception as exc:  # noqa: BLE001 - a result msgpack cannot carry
        return error_response(rid, exc)


def deferred_response(rid: int, future: Future) -> bytes:
    """The response for a handler's answer that came later (``future`` is done)."""
    try:
        value = future.result()
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - its error
        return error_response(rid, exc)
    return response(rid, value)


def error_response(rid: int, exc: BaseException) -> bytes:
    """The error response for ``exc`` (its args and attributes when they pack, else only its text)."""
    kind, text = type(exc).__name__, str(exc)
    try:
        return pack([RESPONSE, rid, False, [kind, text, list(exc.args), dict(vars(exc))]])
    except Exception:  # noqa: BLE001 - something in them msgpack cannot carry
        return pack([RESPONSE, rid, False, [kind, text, [text], {}]])


def _mac(secret: bytes, tag: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, tag + first + second, hashlib.sha256).digest()


def _unpacker(max_frame: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, max_buffer_size=max_frame, strict_map_key=False)


class ServerConnection:
    """One connection, server side (see the module docstring)."""

    def __init__(self, secret: bytes, handler: Callable[[str, list], Any], nonce: bytes, *,
                 max_frame: int = MAX_FRAME, on_deferred: Callable[[int, Future], None] | None = None) -> None:
        if len(secret) < 16 or len(nonce) != _NONCE:
            raise ValueError("a secret of at least 16 bytes and a 32-byte nonce are needed")
        self._secret, self._handler, self._nonce = secret, handler, nonce
        #: a handler may answer later: it returns a ``concurrent.futures.Future`` (or, on a server
        #: running on an asyncio loop, an asyncio future or a coroutine for the loop to run) and this
        #: is told ``(request id, future)``; the answer goes out when the future is done
        #: (``deferred_response``) or the coroutine returns
        self.on_deferred = on_deferred
        self._unpacker = _unpacker(max_frame)
        self.authenticated = False
        self.closed_for: str | None = None
        self.requests = 0

    def hello(self) -> bytes:
        """What the server sends first."""
        return pack([_HELLO, VERSION, self._nonce])

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Bytes from the peer; ``(bytes to send, close now)``. Never raises."""
        out: list[bytes] = []
        try:
            try:
                self._unpacker.feed(data)
            except msgpack.BufferFull:
                raise ProtocolError("oversized", "a value larger than max_frame") from None
            for message in self._unpacker:
                out.append(self._message(message))
        except ProtocolError as exc:
            self.closed_for = exc.reason
            return b"".join(out), True
        except Exception:  # noqa: BLE001 - msgpack's errors for malformed input are many
            self.closed_for = "malformed"
            return b"".join(out), True
        return b"".join(out), False

    def _message(self, message: Any) -> bytes:
        if not self.authenticated:
            return self._auth(message)
        if not (isinstance(message, list) and len(message) == 4 and message[0] == REQUEST
                and isinstance(message[1], int) and isinstance(message[2], str) and isinstance(message[3], list)):
            raise ProtocolError("bad_request", f"not [REQUEST, id, method, args]: {str(message)[:80]}")
        _kind, rid, method, args = message
        self.requests += 1
        try:
            result = self._handler(method, args)
            if isinstance(result, _LATER):
                if self.on_deferred is None:
                    raise TypeError(f"{method} answers later, and this server sends only immediate answers")
                self.on_deferred(rid, result)
                return b""
            return pack([RESPONSE, rid, True, result])
        except Exception as exc:  # noqa: BLE001 - the caller gets it; the connection stays
            return error_response(rid, exc)

    def _auth(self, message: Any) -> bytes:
        if not (isinstance(message, list) and len(message) == 3 and message[0] == "auth"
                and isinstance(message[1], bytes) and len(message[1]) == _NONCE and isinstance(message[2], bytes)):
            raise ProtocolError("unauthenticated", "the first message must be the handshake's answer")
        client_nonce, proof = message[1], message[2]
        if not hmac.compare_digest(proof, _mac(self._secret, b"c", self._nonce, client_nonce)):
            raise ProtocolError("bad_secret")
        self.authenticated = True
        return pack(["ok", _mac(self._secret, b"s", client_nonce, self._nonce)])


class ClientHandshake:
    """The client's side of the handshake: ``answer(hello)`` then ``check(ok)``."""

    def __init__(self, secret: bytes, nonce: bytes) -> None:
        if len(secret) < 16 or len(nonce) != _NONCE:
            raise ValueError("a secret of at least 16 bytes and a 32-byte nonce are needed")
        self._secret, self._nonce = secret, nonce
        self._server_nonce = b""

    def answer(self, hello: Any) -> bytes:
        if not (isinstance(hello, list) and len(hello) == 3 and hello[0] == _HELLO and isinstance(hello[2], bytes)):
            raise ProtocolError("not_a_server", f"unexpected greeting {str(hello)[:80]}")
        if hello[1] != VERSION:
            raise ProtocolError("version", f"the server speaks version {hello[1]}, this client {VERSION}")
        self._server_nonce = hello[2]
        return pack(["auth", self._nonce, _mac(self._secret, b"c", self._server_nonce, self._nonce)])

    def check(self, reply: Any) -> None:
        """The server proved it knows the secret too (else ProtocolError)."""
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == "ok" and isinstance(reply[1], bytes)
                and hmac.compare_digest(reply[1], _mac(self._secret, b"s", self._nonce, self._server_nonce))):
            raise ProtocolError("bad_server", "the server does not know the secret")


def unpacker(max_frame: int = MAX_FRAME) -> msgpack.Unpacker:
    """A streaming unpacker as both sides use it."""
    return _unpacker(max_frame)
