"""The client's one seam to the system's actors: the ``Transport`` protocol, Ray's, and the retry policy.

Nothing else in the client calls ``.remote``, ``ray.get``, ``ray.wait`` or ``ray.get_actor``.
A target is a shard copy, ``Copy(domain, shard, slot)``, or ``COORDINATOR``. Every error a
transport raises is already in the erlmcp_ray tree (``UnavailableError`` when the target is
gone or restarting, ``OperationTimeoutError`` when it did not answer in time, the actor's own
error otherwise). ``erlmcp_ray.testing.FakeTransport`` implements the same protocol over
in-process shard copies, so the client's logic runs in unit tests without Ray.

``Retry`` is the one retry policy: idempotent calls (reads, and writes carrying a request seq
the owner deduplicates) are retried with jittered exponential backoff while the target is
unavailable, until the call timeout runs out; a timeout is never retried (the operation may
or may not have happened).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from erlmcp_ray.errors import OperationTimeoutError, UnavailableError

__all__ = ["COORDINATOR", "SUPERVISOR", "Copy", "OwnerMoved", "RayTransport", "Retry", "Transport"]


class OwnerMoved(UnavailableError):
    """The call's target is no longer its shard's owner and the client knows the new one (a
    failover): ``Retry`` tries again at once, without a backoff pause."""


class Copy(NamedTuple):
    """A shard copy: one slot of one shard of a domain."""

    domain: str
    shard: int
    slot: int


#: The coordinator as a target.
COORDINATOR = "coordinator"
#: The supervisor (persistence selector, checkpoints) as a target.
SUPERVISOR = "supervisor"


class Transport(Protocol):
    def call(self, target: Any, method: str, *args: Any, timeout: float) -> Any:
        """Call ``method`` on ``target`` and wait up to ``timeout`` s for its answer."""

    def submit(self, target: Any, method: str, *args: Any) -> Any:
        """Start a call; returns a pending answer. An argument may be another pending answer:
        the callee then gets its value (a dependency, resolved without this process)."""

    def ready(self, pending: list, timeout: float) -> list:
        """The pending answers among ``pending`` that are done, waiting up to ``timeout`` s for all."""

    def result(self, pending: Any, timeout: float, what: str) -> Any:
        """The answer of a pending call (raises its error)."""

    def forget(self, target: Any) -> None:
        """The target failed: look it up afresh next time (Ray may have restarted it)."""

    def is_actor(self, obj: Any) -> bool:
        """True for an actor handle (a subscription target the coordinator calls itself)."""

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes: ``{"NodeID", "NodeManagerAddress"}`` each."""

    def node_id(self) -> str:
        """The Ray node this process runs on."""

    def stored_layout(self) -> bytes | None:
        """The running layout as the supervisor stored it (when the coordinator cannot say), or None."""


class Retry:
    """Jittered exponential backoff while a target is unavailable, within one deadline."""

    def __init__(self, timeout_s: float, *, base_s: float = 0.02, cap_s: float = 0.25,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._base, self._cap = base_s, cap_s
        self._rng = rng or random.Random()
        self._sleep, self._clock = sleep, clock

    def pause(self, attempt: int) -> float:
        # Jitter: clients that lost the same owner must not retry in lockstep when it returns.
        return min(self._cap, self._base * 2 ** attempt) * (0.5 + self._rng.random())

    def run(self, fn: Callable[[], Any], *, on_unavailable: Callable[[], None] | None = None,
            retry: bool = True, deadline: float | None = None) -> Any:
        """``fn()``, retried while it raises ``UnavailableError`` (never on a timeout)."""
        deadline = self._clock() + self.timeout_s if deadline is None else deadline
        attempt = 0
        while True:
            try:
                return fn()
            except UnavailableError as exc:
                if on_unavailable is not None:
                    on_unavailable()
                if isinstance(exc, OwnerMoved) and retry and self._clock() < deadline:
                    continue  # the new owner is known: no reason to wait
                attempt += 1
                pause = self.pause(attempt)
                if not retry or isinstance(exc, OperationTimeoutError) or self._clock() + pause > deadline:
                    raise
                self._sleep(pause)


class RayTransport:
    """Calls to the named actors of one system namespace, with handles cached per target.

    ``place`` names this client for the fault seam (``erlmcp_ray._faults``): a partition that puts
    it on another side than a target makes the call fail as ``UnavailableError`` at submission."""

    def __init__(self, namespace: str, place: str = "client") -> None:
        from erlmcp_ray import _faults, _ray
        from erlmcp_ray.actors.options import COORDINATOR as COORDINATOR_NAME
        from erlmcp_ray.actors.options import SUPERVISOR as SUPERVISOR_NAME
        from erlmcp_ray.actors.options import shard_name

        self._ray = _ray
        self.namespace = namespace
        self._names = {COORDINATOR: COORDINATOR_NAME, SUPERVISOR: SUPERVISOR_NAME}
        self._shard_name = shard_name
        self._handles: dict[Any, tuple[Any, str]] = {}
        self._lock = threading.Lock()  # guards the dict only; lookups happen outside it
        self.place = place
        self._seam = _faults.seam(namespace)

    def _handle(self, target: Any) -> Any:
        entry = self._handles.get(target)  # (handle, actor name): no name built per call
        if entry is None:
            name = self._names[target] if type(target) is str else self._shard_name(*target)
            self._seam.check(self.place, name)
            entry = (self._ray.get_actor(name, self.namespace), name)
            with self._lock:
                self._handles[target] = entry
        else:
            self._seam.check(self.place, entry[1])
        return entry[0]

    def forget(self, target: Any) -> None:
        with self._lock:
            self._handles.pop(target, None)

    def check_partition(self, target: Any) -> None:
        """``UnavailableError`` when the fault seam cuts this client off from ``target`` (what
        ``submit`` checks; another transport in front of this one checks it too)."""
        name = self._names.get(target)
        if name is None:
            name = self._names[target] = self._shard_name(*target)
        self._seam.check(self.place, name)

    def submit(self, target: Any, method: str, *args: Any) -> Any:
        try:
            return getattr(self._handle(target), method).remote(*args)
        except UnavailableError:
            raise
        except Exception as exc:  # a dead handle can fail at submission
            raise self._ray.translate(exc, f"{target} {method}") from exc

    def call(self, target: Any, method: str, *args: Any, timeout: float) -> Any:
        return self._ray.get(self.submit(target, method, *args), timeout=timeout, what=f"{_what(target)} {method}")

    def ready(self, pending: list, timeout: float) -> list:
        return self._ray.wait(pending, timeout)

    def ready_any(self, pending: list, timeout: float) -> list:
        """The pending answers that are done once at least one is (or ``timeout`` s passed)."""
        return self._ray.wait_any(pending, timeout)

    def result(self, pending: Any, timeout: float, what: str) -> Any:
        return self._ray.get(pending, timeout=timeout, what=what)

    def is_actor(self, obj: Any) -> bool:
        import ray

        return isinstance(obj, ray.actor.ActorHandle)

    def alive_nodes(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def stored_layout(self) -> bytes | None:
        from erlmcp_ray.core.layout import layout_key

        try:
            return self._ray.kv_get(layout_key(self.namespace))
        except Exception:  # noqa: BLE001 - the GCS itself unreachable: the caller's error stands
            return None


def _what(target: Any) -> str:
    if type(target) is str:
        return f"the {target}"
    return f"{target[0]} shard {target[1]} slot {target[2]}"
