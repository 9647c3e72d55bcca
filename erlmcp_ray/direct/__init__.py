"""The direct data plane (issue 14, in progress): a socket protocol between clients and shard copies
that will carry the data path off Ray actor calls. This first part is the protocol (authenticated
framing, request ids), a one-thread server and a thread-safe client connection, tested and fuzzed;
nothing in the memory system uses it yet (the shards serve only Ray calls)."""

from erlmcp_ray.direct._client import DirectConnection, RemoteCallError
from erlmcp_ray.direct._protocol import ClientHandshake, ProtocolError, ServerConnection
from erlmcp_ray.direct._server import DirectServer

__all__ = ["ClientHandshake", "DirectConnection", "DirectServer", "ProtocolError", "RemoteCallError",
           "ServerConnection"]
