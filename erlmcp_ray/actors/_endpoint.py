"""The direct endpoint an actor runs beside itself: started on this node's address with the system's
secret, or None -- never failing the actor: its clients then use Ray calls. A shard copy's runs in a
thread of its own (``start_endpoint``); the coordinator's on the coordinator's event loop
(``start_async_endpoint``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray

from erlmcp_ray import _ray
from erlmcp_ray.direct import AsyncDirectServer, DirectServer, secret_key, server_context

__all__ = ["start_async_endpoint", "start_endpoint"]

log = logging.getLogger(__name__)


def start_endpoint(namespace: str, handler: Callable[[str, list], Any], *, max_frame: int, tls: dict | None,
                   who: str) -> DirectServer | None:
    """``who``'s endpoint serving ``handler``; None when the system has no secret or it cannot start
    (TLS asked for and its files unusable here: no endpoint at all, never a plaintext one)."""
    try:
        secret = _secret(namespace, who)
        if secret is None:
            return None
        return DirectServer(secret, handler, host=ray.util.get_node_ip_address(), max_frame=max_frame,
                            tls=server_context(tls) if tls else None)
    except Exception as exc:  # noqa: BLE001 - never fail the actor: Ray calls still work
        log.warning("%s: the direct endpoint did not start (%s); serving Ray calls only", who, exc)
        return None


async def start_async_endpoint(namespace: str, handler: Callable[[str, list], Any], *, max_frame: int,
                               tls: dict | None, who: str) -> AsyncDirectServer | None:
    """As ``start_endpoint``, served on the running event loop (``handler`` may return a coroutine)."""
    try:
        secret = _secret(namespace, who)
        if secret is None:
            return None
        return await AsyncDirectServer.start(secret, handler, host=ray.util.get_node_ip_address(),
                                             max_frame=max_frame, tls=server_context(tls) if tls else None)
    except Exception as exc:  # noqa: BLE001 - never fail the actor: Ray calls still work
        log.warning("%s: the direct endpoint did not start (%s); serving Ray calls only", who, exc)
        return None


def _secret(namespace: str, who: str) -> bytes | None:
    secret = _ray.kv_get(secret_key(namespace))
    if not secret:
        log.warning("%s: no direct secret in Ray's key-value store; serving Ray calls only", who)
        return None
    return secret
