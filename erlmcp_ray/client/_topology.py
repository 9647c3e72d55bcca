"""Where each shard's owner is: the supervisor's topology as this client last fetched it.

After a failover the owner of a shard is the replica the supervisor promoted, not slot 0. Every
part of the client asks ``Topology.owner`` per call (never keeps a ``Copy`` across retries); an owner
that is unavailable, or answers that it is not the owner, makes the client forget its handle and
fetch the layout again (at most every ``min_interval_s``, so a thousand failing calls cost one
fetch), and the retry goes wherever the new topology says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._settings import DomainRoute
from erlmcp_ray.client._transport import Copy, OwnerMoved, Transport

__all__ = ["Topology"]

log = logging.getLogger(__name__)


class Topology:
    def __init__(self, routes: dict[str, DomainRoute], transport: Transport, refresh: Callable[[], None], *,
                 min_interval_s: float = 0.1, check_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._routes, self._transport, self._refresh = routes, transport, refresh
        self._min_interval_s, self._clock = min_interval_s, clock
        #: an owner that has not answered for this long: is it still the owner?
        self.check_s = check_s
        self._lock = threading.Lock()
        self._last = float("-inf")
        self.refreshes = 0

    def owner(self, domain: str, shard: int) -> Copy:
        return Copy(domain, shard, self._routes[domain].owner(shard))

    def any_copy(self, domain: str, shard: int, turn: int) -> Copy:
        """The owner and then each replica in turn (``turn`` 0, 1, ...): where an eventual batch goes
        when its owner cannot be reached (a copy cut off from the owner stashes it)."""
        route = self._routes[domain]
        slots = [route.owner(shard), *route.replicas(shard)]
        return Copy(domain, shard, slots[turn % len(slots)])

    def call_owner(self, domain: str, shard: int, method: str, *args: Any, timeout: float) -> Any:
        """Call ``method`` on the shard's owner (see ``wait_owner``)."""
        target = self.owner(domain, shard)
        return self.wait_owner(target, self._transport.submit(target, method, *args), timeout, method)

    def wait_owner(self, target: Copy, pending: Any, timeout: float, what: str) -> Any:
        """The answer of a call to owner ``target``. While it does not come, the topology is fetched
        again every ``check_s``: if another copy owns the shard now (a failover; the old owner may be
        paused or cut off), ``UnavailableError`` at once, so the caller retries on the new owner
        instead of waiting out the whole timeout. Safe: a deposed owner acknowledges nothing (its
        lease ran out, its replicas and store refuse its epoch)."""
        deadline = self._clock() + timeout
        label = f"{target.domain} shard {target.shard} owner {what}"
        while True:
            left = deadline - self._clock()
            if self._transport.ready([pending], max(0.0, min(left, self.check_s))) or left <= self.check_s:
                return self._transport.result(pending, max(0.001, deadline - self._clock()), label)
            self.refresh()
            now_owner = self.owner(target.domain, target.shard)
            if now_owner != target:
                raise OwnerMoved(f"{label}: slot {target.slot} is no longer the owner (slot {now_owner.slot} is)")

    def refresh(self) -> None:
        """Fetch the layout again (at most every ``min_interval_s``)."""
        with self._lock:
            now = self._clock()
            if now - self._last < self._min_interval_s:
                return
            self._last = now
        try:
            self._refresh()
            self.refreshes += 1
        except Exception as exc:  # noqa: BLE001 - the coordinator may be restarting: the retry tries again
            log.debug("refreshing the topology failed: %s", exc)

    def owner_failed(self, domain: str, shard: int) -> None:
        """The owner did not answer (or is no longer the owner): look it up afresh."""
        self._transport.forget(self.owner(domain, shard))
        self.refresh()
