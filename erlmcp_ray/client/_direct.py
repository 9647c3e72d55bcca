"""Writes that go to the owner at once: bounded_stale (one call) and strong (group commit, chained).

A strong round submits the owner's write and, chained on its answer (a dependency the
transport resolves without this process), every replica's ``apply_write``; it is acknowledged
when ``min_insync`` copies hold it, else ``ReplicationError``. A bounded_stale write returns
once the owner applied it, and is kept by the write-behind until the owner confirms it
replicated (so an owner restart before that resends it).
"""

from __future__ import annotations

import time
from typing import Any

from erlmcp_ray.client._reads import ReadPath
from erlmcp_ray.client._settings import DomainRoute
from erlmcp_ray.client._transport import Copy, Retry, Transport
from erlmcp_ray.client._write_behind import WriteBehind
from erlmcp_ray.core import record as R
from erlmcp_ray.errors import (
    ErlmcpRayError,
    MemoryPressureError,
    RemoteError,
    ReplicationError,
    UnavailableError,
)

__all__ = ["DirectWrites"]


class DirectWrites:
    def __init__(self, *, transport: Transport, retry: Retry, routes: dict[str, DomainRoute], reads: ReadPath,
                 write_behind: WriteBehind, client_id: str, next_seq: Any, timeout_s: float) -> None:
        self._transport, self._retry, self._routes = transport, retry, routes
        self._reads, self._wb, self.client_id = reads, write_behind, client_id
        self._next_seq, self._timeout = next_seq, timeout_s

    def bounded(self, d: DomainRoute, shard: int, op: tuple, stamp: int) -> bytes | None:
        owner, seq = Copy(d.name, shard, 0), self._next_seq()
        answer = self._retry.run(
            lambda: self._transport.call(owner, "write", self.client_id, seq, [op], True, timeout=self._timeout),
            on_unavailable=lambda: self._transport.forget(owner))
        self._reads.same_owner(d.name, shard, answer.incarnation)
        failure = self._op_failure(d, answer)
        if failure is not None:
            raise failure[0][1]
        rec = answer.items[0][1]
        self._wb.track(d.name, shard, answer.incarnation, answer.seq, op, stamp,
                       R.record_hlc(rec) if type(rec) is bytes else 0)
        return rec

    def _op_failure(self, d: DomainRoute, answer: Any) -> list[tuple[int, Exception]] | None:
        out = [(i, self.pressure_error(d.name, m)) for i, m in answer.refused]
        out += [(i, RemoteError(f"{d.name}: a write was rejected by its owner: {m}")) for i, m in answer.rejected]
        return out or None

    def strong_round(self, domain: str, shard: int, ops: list[tuple]) -> list[Any]:
        """One group-commit round: the owner applies, every replica applies the owner's answer."""
        d = self._routes[domain]
        seq = self._next_seq()
        deadline = time.monotonic() + self._timeout
        owner = Copy(domain, shard, 0)

        def start() -> tuple[Any, list]:
            # Submit the owner's write and, chained on its answer, every replica's apply.
            answer = self._transport.submit(owner, "write", self.client_id, seq, ops, True, True)
            replicas = []
            for slot in range(1, d.copies):
                try:
                    replicas.append((slot, self._transport.submit(Copy(domain, shard, slot), "apply_write", answer)))
                except UnavailableError:
                    replicas.append((slot, None))
            result = self._transport.result(answer, self._timeout, f"{domain} shard {shard} owner")
            return result, replicas

        # Retried while Ray restarts the owner, with the same request seq.
        result, replicas = self._retry.run(start, on_unavailable=lambda: self._transport.forget(owner),
                                           deadline=deadline)
        acked, failures = 1, []
        for slot, pending in replicas:
            if pending is None:
                failures.append(f"slot {slot}: unreachable")
                continue
            try:
                self._transport.result(pending, max(0.001, deadline - time.monotonic()), f"replica slot {slot}")
                acked += 1
            except ErlmcpRayError as exc:
                self._transport.forget(Copy(domain, shard, slot))
                failures.append(f"slot {slot}: {exc}")
        if acked < d.min_insync:
            raise ReplicationError(
                f"{domain} shard {shard}: applied by {acked} of {d.copies} copies, {d.min_insync} required; "
                f"the write is not acknowledged and may or may not be visible later ({'; '.join(failures)})")
        out: list[Any] = [rec for _key, rec in result.items]
        for i, error in self._op_failure(d, result) or ():  # these ops were not written: their callers get the error
            out[i] = error
        return out

    def pressure_error(self, domain: str, message: str) -> MemoryPressureError:
        return MemoryPressureError(message, domain=domain, limit=f"max_bytes={self._routes[domain].max_bytes}")
