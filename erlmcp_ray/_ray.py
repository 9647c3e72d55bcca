"""The one seam through which erlmcp_ray talks to Ray.

Everything that waits on Ray goes through ``get``/``wait`` here, with a
timeout, and every Ray exception is translated into the erlmcp_ray tree:

    RayTaskError wrapping one of ours  -> that error, as raised in the actor
    GetTimeoutError                    -> OperationTimeoutError (may or may not have happened)
    actor/worker/node died, unavailable, object lost -> UnavailableError (retryable)
    anything else from a remote call   -> RemoteError (with the remote traceback)
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import exceptions as rex

from erlmcp_ray.errors import (
    ErlmcpRayError,
    OperationTimeoutError,
    RemoteError,
    UnavailableError,
)

__all__ = ["alive_nodes", "get", "get_actor", "kill_named", "kv_del", "kv_get", "kv_put", "translate", "wait",
           "was_restarted"]

_UNAVAILABLE = (
    rex.RayActorError,
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.LocalRayletDiedError,
    rex.TaskCancelledError,
    rex.ActorPlacementGroupRemoved,
    rex.ActorUnschedulableError,
)


log = logging.getLogger(__name__)


def translate(exc: BaseException, what: str, timeout: float | None = None) -> ErlmcpRayError:
    """The erlmcp_ray error for a Ray exception raised while waiting on ``what``."""
    if isinstance(exc, ErlmcpRayError) and not isinstance(exc, rex.RayTaskError):
        return exc
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause
        if isinstance(cause, ErlmcpRayError):
            return cause
        if isinstance(cause, _UNAVAILABLE):
            return UnavailableError(f"{what}: {cause}")
        return RemoteError(f"{what} failed remotely: {exc}")
    if isinstance(exc, rex.GetTimeoutError):
        return OperationTimeoutError(f"{what} did not answer within {timeout} s; it may or may not have happened")
    if isinstance(exc, _UNAVAILABLE):
        return UnavailableError(f"{what} is unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.RayError):
        return UnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    return RemoteError(f"{what}: {type(exc).__name__}: {exc}")


def get(refs: Any, timeout: float, what: str) -> Any:
    """``ray.get`` with a timeout and translated errors."""
    try:
        return ray.get(refs, timeout=timeout)
    except Exception as exc:
        raise translate(exc, what, timeout) from exc


def wait(refs: list, timeout: float) -> list:
    """The refs among ``refs`` that are ready, waiting up to ``timeout`` s for all of them."""
    if not refs:
        return []
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    except Exception as exc:
        raise translate(exc, "waiting for replies", timeout) from exc
    return ready


def wait_any(refs: list, timeout: float) -> list:
    """The refs among ``refs`` that are ready once at least one is (or ``timeout`` s passed)."""
    if not refs:
        return []
    try:
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # and whatever else is ready by now
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    except Exception as exc:
        raise translate(exc, "waiting for replies", timeout) from exc
    return ready


def get_actor(name: str, namespace: str) -> Any:
    """The named actor's handle, or UnavailableError when there is none."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise UnavailableError(f"no actor {name!r} in namespace {namespace!r}: is the system started?") from exc
    except Exception as exc:
        raise translate(exc, f"looking up {name!r}") from exc


def was_restarted() -> bool:
    """True inside an actor that Ray restarted (its constructor runs again, with empty state)."""
    import warnings

    with warnings.catch_warnings():
        # Ray's own implementation reads a deprecated attribute and warns about itself.
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def kv_get(key: bytes) -> bytes | None:
    """Ray's key-value store (in the GCS: it outlives every actor); None when absent."""
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        return None
    try:
        return internal_kv._internal_kv_get(key)
    except Exception as exc:
        raise translate(exc, f"reading {key!r} from Ray's key-value store") from exc


def kv_put(key: bytes, value: bytes) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(key, value, overwrite=True)
    except Exception as exc:
        raise translate(exc, f"writing {key!r} to Ray's key-value store") from exc


def kv_del(key: bytes) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(key)
    except Exception as exc:
        raise translate(exc, f"deleting {key!r} from Ray's key-value store") from exc


def kill_named(name: str, namespace: str) -> None:
    """Stop the named actor for good (no restart); nothing when there is none."""
    try:
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    except ValueError:
        pass


def restart(handle: Any) -> None:
    """Kill an actor's process so that Ray restarts it (its constructor runs again)."""
    try:
        ray.kill(handle, no_restart=False)
    except Exception as exc:  # noqa: BLE001 - already gone
        log.warning("restarting an actor failed: %s", exc)


def alive_nodes() -> list[dict]:
    """The cluster's alive nodes, as ``ray.nodes()`` describes them."""
    try:
        return [n for n in ray.nodes() if n.get("Alive")]
    except Exception as exc:
        raise translate(exc, "listing the cluster's nodes") from exc
