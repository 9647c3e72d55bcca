"""The direct data plane (issue 14): a socket protocol between clients and shard copies that carries
reads and writes off Ray actor calls. The protocol (authenticated framing, request ids), a one-thread
server (what each shard copy runs beside its actor), one on an asyncio loop (the coordinator's) and a
thread-safe client connection. The shared
secret is made by ``erlmcp_ray.start`` and kept in Ray's key-value store under ``secret_key``: only
processes admitted to the Ray cluster can read it."""

from erlmcp_ray.direct._aserver import AsyncDirectServer
from erlmcp_ray.direct._client import DirectConnection, FrameTooLarge, RemoteCallError, spinning
from erlmcp_ray.direct._protocol import ClientHandshake, ProtocolError, ServerConnection
from erlmcp_ray.direct._server import DirectServer
from erlmcp_ray.direct._tls import client_context, server_context

__all__ = ["AsyncDirectServer", "ClientHandshake", "DirectConnection", "DirectServer", "FrameTooLarge", "ProtocolError", "RemoteCallError",
           "ServerConnection", "client_context", "secret_key", "server_context", "spinning"]


def secret_key(namespace: str) -> bytes:
    """Where the direct plane's secret of a system lives in Ray's key-value store."""
    return f"erlmcp:{namespace}:direct_secret".encode()
