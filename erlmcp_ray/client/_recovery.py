"""``client.recovery`` (spec ``erlmcp_memory_recovery``): checkpoints of the running system.

Thin: checks arguments here, then asks the supervisor (``actors/supervisor.py``), which writes the
manifests; the shard owners write and read their own shards (``actors/_checkpoints.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._transport import SUPERVISOR, Transport
from erlmcp_ray.core.checkpoint import Checkpoint
from erlmcp_ray.errors import InvalidValueError

__all__ = ["Recovery"]

#: A checkpoint or a restore moves every shard through the durable store: minutes on big domains.
_LONG_S = 900.0


class Recovery:
    def __init__(self, *, transport: Transport, timeout_s: float, check_open: Callable[[], None],
                 drop_caches: Callable[[], None]) -> None:
        self._transport, self._timeout, self._check_open = transport, timeout_s, check_open
        self._drop_caches = drop_caches

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        self._check_open()
        return self._transport.call(SUPERVISOR, method, *args, timeout=timeout or self._timeout)

    def create_checkpoint(self) -> Checkpoint:
        """A consistent cut of every shard of every domain, in the durable store: ``Checkpoint(id,
        created_at, domains, entries, bytes, checksum)``."""
        return self._call("create_checkpoint", timeout=_LONG_S)

    def list_checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, newest first."""
        return self._call("list_checkpoints")

    def restore_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Every shard back to the checkpoint (under a new epoch; clients drop their caches). Checks
        every shard against the manifest first: on a mismatch nothing is restored (``CorruptDataError``);
        an unknown id raises ``CheckpointNotFoundError``. Returns counts."""
        try:
            return self._call("restore_checkpoint", _checked_id(checkpoint_id), timeout=_LONG_S)
        finally:
            # Ours at once (others at their next poll): they may hold values newer than the checkpoint.
            self._drop_caches()

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete a checkpoint (``CheckpointNotFoundError`` when there is none by that id)."""
        self._call("delete_checkpoint", _checked_id(checkpoint_id))


    def verify_state(self) -> dict[str, Any]:
        """Per shard: the digests of all copies (equal = in sync), version vectors consistent, stored
        rows' checksums valid; ``ok`` when all hold (see ``actors/_verify.py``)."""
        return self._call("verify_state", timeout=_LONG_S)


def _checked_id(checkpoint_id: Any) -> str:
    if type(checkpoint_id) is not str or not checkpoint_id:
        raise InvalidValueError(f"a checkpoint id is a non-empty str, got {checkpoint_id!r}", where="checkpoint_id")
    return checkpoint_id
