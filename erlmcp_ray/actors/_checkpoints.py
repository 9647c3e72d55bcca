"""Checkpoints as the supervisor takes, lists, restores and deletes them (see ``core.checkpoint``).

The shard owners do the heavy part themselves, each against the durable store: ``checkpoint_shard``
packs the owner's state under its lock (a consistent cut of that shard) and writes it as one blob;
``stage_checkpoint`` reads a blob back and checks it against the manifest's SHA-256;
``apply_staged`` replaces the owner's state with what it staged, under a new epoch. So no shard's
data passes through the supervisor, which only writes and reads manifests.

Restoring is two-phase: every owner stages (reads and checks) its shard first, and only when all
did does any owner apply — a checksum mismatch anywhere restores nothing. The coordinator then takes
a new epoch, so every client drops its caches (they may hold values newer than the checkpoint).

Hot copies: the newest ``HOT_KEPT`` checkpoints taken by this supervisor incarnation are also kept in
Ray's object store. Each owner returns its blob as a second return value of ``checkpoint_shard_hot``,
an object the supervisor (the caller) owns; a restore hands that reference to the owner, which gets
the bytes from the object store instead of the durable tier (the same SHA-256 check applies). The
durable blob is always written first: a hot copy lost (its node died, or the supervisor restarted,
since a ``ray.put`` or return object dies with its owner) only means the restore reads the store.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from erlmcp_ray import _ray
from erlmcp_ray.actors.options import COORDINATOR, owner_name
from erlmcp_ray.config import DurableKind, MemoryConfig
from erlmcp_ray.core.checkpoint import (
    PREFIX,
    Checkpoint,
    ShardEntry,
    checkpoint_ids,
    manifest_name,
    new_id,
    plan_retention,
)
from erlmcp_ray.errors import CheckpointNotFoundError, ConfigError, UnavailableError
from erlmcp_ray.storage import open_store

log = logging.getLogger(__name__)

__all__ = ["Checkpoints"]

_SHARD_S = 600.0  # one shard of a million entries takes seconds; leave room for a loaded machine
#: checkpoints whose shards are also kept in the object store (the newest ones)
HOT_KEPT = 1


class Checkpoints:
    def __init__(self, config: MemoryConfig, namespace: str, running: Any) -> None:
        """``running()``: the config as running (the persistence selector's layout applied)."""
        self._cfg, self.namespace, self._running = config, namespace, running
        #: checkpoint id -> {(domain, shard): ObjectRef of the blob}, newest last
        self._hot: dict[str, dict[tuple[str, int], Any]] = {}

    @property
    def enabled(self) -> bool:
        return self._cfg.durable.kind is not DurableKind.NONE

    def _store(self) -> Any:
        if not self.enabled:
            raise ConfigError("checkpoints are kept in the durable tier, but durable.kind is 'none'",
                              path="durable.kind")
        return open_store(self._cfg.durable, self.namespace)

    def _owners(self) -> list[tuple[str, int, Any]]:
        cfg = self._running()
        return [(d, s, _ray.get_actor(owner_name(self.namespace, d, s), self.namespace))
                for d in cfg.domains for s in range(cfg.domain(d).shards)]

    # ------------------------------------------------------------------ create / list / delete
    def create(self) -> Checkpoint:
        store = self._store()
        try:
            started = time.time()
            checkpoint_id = new_id(started)
            owners = self._owners()
            refs = [o.checkpoint_shard_hot.remote(checkpoint_id) for _, _, o in owners]
            answers = _ray.get([entry for entry, _blob in refs], timeout=_SHARD_S, what="checkpointing the shards")
            cp = Checkpoint.build(checkpoint_id, started, [ShardEntry(**a) for a in answers])
            store.put_blob(manifest_name(checkpoint_id), cp.encode())  # last: now the checkpoint exists
            self._hot[checkpoint_id] = {(d, s): blob for (d, s, _o), (_e, blob) in zip(owners, refs)}
            for old in list(self._hot)[:-HOT_KEPT]:
                del self._hot[old]  # the supervisor drops its references: Ray frees the objects
            log.info("checkpoint %s: %d entries, %d bytes, %.2f s", cp.id, cp.entries, cp.bytes,
                     time.time() - started)
            return cp
        finally:
            store.close()

    def list(self) -> list[Checkpoint]:
        store = self._store()
        try:
            return [self._manifest(store, i) for i in checkpoint_ids(store.list_blobs(PREFIX))]
        finally:
            store.close()

    def _manifest(self, store: Any, checkpoint_id: str) -> Checkpoint:
        if not isinstance(checkpoint_id, str) or not checkpoint_id.startswith("ckpt-") or "/" in checkpoint_id:
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r} (ids look like 'ckpt-…')")
        raw = store.get_blob(manifest_name(checkpoint_id))
        if raw is None:
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r} in {store.location}")
        return Checkpoint.decode(raw, manifest_name(checkpoint_id))

    def delete(self, checkpoint_id: str) -> None:
        store = self._store()
        try:
            cp = self._manifest(store, checkpoint_id)
            store.delete_blob(manifest_name(cp.id))  # first: from here on it is not listed
            self._hot.pop(cp.id, None)
            for s in cp.shards:
                store.delete_blob(s.blob)
        finally:
            store.close()

    def retain(self, keep: int) -> int:
        """Delete all but the ``keep`` newest checkpoints (and unfinished leftovers); how many blobs went."""
        store = self._store()
        try:
            doomed = plan_retention(store.list_blobs(PREFIX), keep)
            for name in doomed:
                store.delete_blob(name)
            return len(doomed)
        finally:
            store.close()

    # ------------------------------------------------------------------ restore
    def restore(self, checkpoint_id: str) -> dict[str, Any]:
        store = self._store()
        try:
            cp = self._manifest(store, checkpoint_id)
        finally:
            store.close()
        cp.verify()
        started = time.time()
        owners = {(d, s): o for d, s, o in self._owners()}
        missing = [f"{s.domain}/{s.shard}" for s in cp.shards if (s.domain, s.shard) not in owners]
        if missing:
            raise ConfigError(f"checkpoint {cp.id} holds shards this system does not have: {', '.join(missing)} "
                              f"(the domains or their shard counts changed since)")
        hot = self._hot.get(cp.id, {})
        try:
            sources = self._stage(cp.shards, owners, hot)
        except Exception:
            _ray.get([o.discard_staged.remote() for o in owners.values()], timeout=60, what="discarding staged")
            raise
        applied = _ray.get([owners[(s.domain, s.shard)].apply_staged.remote() for s in cp.shards],
                           timeout=_SHARD_S, what=f"restoring checkpoint {cp.id}")
        coordinator = _ray.get_actor(COORDINATOR, self.namespace)
        _ray.get(coordinator.new_epoch.remote(), timeout=60, what="telling clients to drop their caches")
        entries = sum(a["entries"] for a in applied)
        log.warning("restored checkpoint %s: %d shards, %d entries, %.2f s", cp.id, len(applied), entries,
                    time.time() - started)
        return {"checkpoint": cp.id, "shards": len(applied), "entries": entries,
                "epochs": {f"{s.domain}/{s.shard}": a["epoch"] for s, a in zip(cp.shards, applied)},
                "sources": {f"{d}/{s}": src for (d, s), src in sources.items()},
                "seconds": time.time() - started}

    def _stage(self, shards: list[ShardEntry], owners: dict, hot: dict) -> dict[tuple[str, int], str]:
        """Stage every shard on its owner at once, from its hot copy when there is one (else, or when
        that is lost, from the durable store); where each came from."""
        def submit(entry: ShardEntry, ref: Any) -> Any:
            owner = owners[(entry.domain, entry.shard)]
            if ref is None:
                return owner.stage_checkpoint.remote(entry.blob, entry.sha256)
            return owner.stage_checkpoint.remote(entry.blob, entry.sha256, ref)

        pending = [(e, hot.get((e.domain, e.shard))) for e in shards]
        calls = [(e, ref, submit(e, ref)) for e, ref in pending]
        sources = {}
        for entry, ref, call in calls:
            key = (entry.domain, entry.shard)
            try:
                _ray.get(call, timeout=_SHARD_S, what=f"staging {entry.blob}")
                sources[key] = "durable store" if ref is None else "object store"
                continue
            except UnavailableError as exc:  # the hot copy is lost (its node died): the store has it
                if ref is None:
                    raise
                log.warning("hot copy of %s lost (%s): reading the durable store", entry.blob, exc)
            _ray.get(submit(entry, None), timeout=_SHARD_S, what=f"reading {entry.blob}")
            sources[key] = "durable store"
        return sources
