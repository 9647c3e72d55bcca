"""``client.recovery`` (spec ``erlmcp_memory_recovery``): checkpoints, recovery runs, verification.

Thin: checks arguments here, then asks the supervisor (``actors/supervisor.py``), which writes the
manifests; the shard owners write and read their own shards (``actors/_checkpoints.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._transport import SUPERVISOR, Retry, Transport
from erlmcp_ray.core.checkpoint import Checkpoint
from erlmcp_ray.core.recovery import MODES
from erlmcp_ray.errors import InvalidValueError

__all__ = ["Recovery"]

#: A checkpoint or a restore moves every shard through the durable store: minutes on big domains.
_LONG_S = 900.0


class Recovery:
    def __init__(self, *, transport: Transport, timeout_s: float, check_open: Callable[[], None],
                 drop_caches: Callable[[], None], retry: Retry | None = None) -> None:
        self._transport, self._timeout, self._check_open = transport, timeout_s, check_open
        self._drop_caches = drop_caches
        self._retry = retry or Retry(timeout_s)

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        self._check_open()
        return self._transport.call(SUPERVISOR, method, *args, timeout=timeout or self._timeout)

    def _read(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """A call that changes nothing: retried while the supervisor is unavailable (Ray restarting it,
        after its node died) until the call timeout."""
        return self._retry.run(lambda: self._call(method, *args, timeout=timeout),
                               on_unavailable=lambda: self._transport.forget(SUPERVISOR))

    def create_checkpoint(self) -> Checkpoint:
        """A consistent cut of every shard of every domain, in the durable store: ``Checkpoint(id,
        created_at, domains, entries, bytes, checksum)``."""
        return self._call("create_checkpoint", timeout=_LONG_S)

    def list_checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, newest first."""
        return self._read("list_checkpoints")

    def restore_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Every shard back to the checkpoint (under a new epoch; clients drop their caches). Checks
        every shard against the manifest first: on a mismatch nothing is restored (``CorruptDataError``);
        an unknown id raises ``CheckpointNotFoundError``. Returns counts, and per shard whether it was
        read from the ``"object store"`` (the newest checkpoint's hot copy) or the ``"durable store"``."""
        try:
            return self._call("restore_checkpoint", _checked_id(checkpoint_id), timeout=_LONG_S)
        finally:
            # Ours at once (others at their next poll): they may hold values newer than the checkpoint.
            self._drop_caches()

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete a checkpoint (``CheckpointNotFoundError`` when there is none by that id)."""
        self._call("delete_checkpoint", _checked_id(checkpoint_id))


    def trigger_recovery(self, mode: str = "auto") -> dict[str, Any]:
        """Recover every shard (spec modes: full, delta, peer, snapshot, auto — see
        ``core/recovery.py``); returns the final status (as ``get_recovery_status``)."""
        return self._recover(_checked_mode(mode))

    def recover_domain(self, domain: str, node_id: str | None = None) -> dict[str, Any]:
        """``auto`` recovery of one domain (only its shards with a copy on ``node_id`` or one down,
        when a node is named)."""
        if type(domain) is not str or not domain:
            raise InvalidValueError(f"domain must be a domain name, got {domain!r}", where="domain")
        return self._recover("auto", [domain], _checked_node(node_id, allow_none=True))

    def recover_node(self, node_id: str) -> dict[str, Any]:
        """``auto`` recovery of every shard with a copy on ``node_id`` (or a copy down)."""
        return self._recover("auto", None, _checked_node(node_id, allow_none=False))

    def get_recovery_status(self) -> dict[str, Any]:
        """The current (or last) recovery: status, mode, step, progress 0-100, per-shard detail."""
        return self._read("get_recovery_status")

    def get_failover_status(self) -> dict[str, Any]:
        """Health checks and failovers: ``failure_timeout_s``, ``lease_s``, the shards whose owner
        moved (``owners``: ``"domain/shard" -> {slot, epoch}``), the last promotions, restarts,
        replacements, heals and stashes lost (``history``, each a dict with ``kind``), the copies
        silent for more than two check periods, the copies holding a stash not yet merged
        (``stashed``: ``"domain/shard/slot" -> keys``) and ``stash_lost`` (keys lost with a copy that
        restarted before the heal, as far as this supervisor saw them)."""
        return self._read("failover_status")

    def heal_partition(self) -> dict[str, Any]:
        """Merge what copies cut off from their owner took during a partition into the owners (spec
        ``heal_partition()``); the supervisor also does it by itself once both sides reach each other.
        ``{"nodes", "merged", "conflicts_resolved"}``: Ray nodes whose copies took part, True when every
        copy was reached (else ``unreachable`` lists them), concurrent versions resolved by last
        writer (each loser goes to subscribers as a ``MemoryConflict``); also ``stashed_writes``,
        ``entries_changed`` and per-shard ``shards``."""
        try:
            return self._call("heal_partition", timeout=_LONG_S)
        finally:
            self._drop_caches()

    def _recover(self, mode: str, domains: list[str] | None = None, node_id: str | None = None) -> dict[str, Any]:
        try:
            return self._call("trigger_recovery", mode, domains, node_id, timeout=_LONG_S)
        finally:
            self._drop_caches()

    def verify_state(self) -> dict[str, Any]:
        """Per shard: the digests of all copies (equal = in sync), version vectors consistent, stored
        rows' checksums valid; ``ok`` when all hold (see ``actors/_verify.py``)."""
        return self._read("verify_state", timeout=_LONG_S)


def _checked_mode(mode: Any) -> str:
    if mode not in MODES:
        raise InvalidValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", where="mode")
    return mode


def _checked_node(node_id: Any, *, allow_none: bool) -> str | None:
    if node_id is None and allow_none:
        return None
    if type(node_id) is not str or not node_id:
        raise InvalidValueError(f"node_id must be a Ray node id (hex str), got {node_id!r}", where="node_id")
    return node_id


def _checked_id(checkpoint_id: Any) -> str:
    if type(checkpoint_id) is not str or not checkpoint_id:
        raise InvalidValueError(f"a checkpoint id is a non-empty str, got {checkpoint_id!r}", where="checkpoint_id")
    return checkpoint_id
