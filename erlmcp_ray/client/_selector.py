"""``client.selector``: the persistence selector of the running system (spec ``auto_select``).

Thin: checks arguments here, then asks the supervisor actor (``actors/supervisor.py``), which owns
the evaluation and the migrations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._transport import SUPERVISOR, Transport
from erlmcp_ray.config import Backend
from erlmcp_ray.errors import InvalidValueError, UnknownDomainError

__all__ = ["Selector"]

#: A migration copies whole shards (to new replicas, to the durable store): minutes, not seconds.
_MIGRATION_TIMEOUT_S = 600.0


class Selector:
    def __init__(self, *, transport: Transport, domains: Callable[[], list[str]], timeout_s: float,
                 check_open: Callable[[], None]) -> None:
        self._transport, self._domains, self._timeout, self._check_open = transport, domains, timeout_s, check_open

    def auto_select(self, enabled: bool) -> None:
        """Turn the periodic evaluation (every ``persistence_selector.evaluation_interval``) on or off."""
        if type(enabled) is not bool:
            raise InvalidValueError(f"enabled must be True or False, got {enabled!r}", where="enabled")
        self._check_open()
        self._transport.call(SUPERVISOR, "set_enabled", enabled, timeout=self._timeout)

    def current_strategies(self) -> dict[str, Any]:
        """Per domain: its backend, copies and durable mode, whether the config or the selector set it,
        what the last evaluation measured and recommended, and its migrations."""
        self._check_open()
        return self._transport.call(SUPERVISOR, "strategies", timeout=self._timeout)

    def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate now, whether or not auto_select is on; the migrations it made."""
        self._check_open()
        return self._transport.call(SUPERVISOR, "evaluate", timeout=_MIGRATION_TIMEOUT_S)

    def migrate(self, domain: str, backend: str | Backend) -> dict[str, Any]:
        """Move ``domain`` (one that sets no backend in the config) to ``backend`` now, live."""
        if type(domain) is not str or domain not in self._domains():
            raise UnknownDomainError(domain, known=tuple(self._domains()))
        try:
            target = Backend(backend)
        except ValueError:
            raise InvalidValueError(f"backend must be memory, disk or replicated, got {backend!r}",
                                    where="backend") from None
        self._check_open()
        return self._transport.call(SUPERVISOR, "migrate", domain, target.value, timeout=_MIGRATION_TIMEOUT_S)
