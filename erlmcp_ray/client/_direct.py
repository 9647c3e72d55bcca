"""Writes that go to the owner at once: bounded_stale (one call) and strong (group commit, chained).

A strong round submits the owner's write and every replica's ``apply_write`` of its answer; it is
acknowledged when ``min_insync`` copies hold it, else ``ReplicationError``. On a transport that
``chains_safely`` (the direct one: a chained call is sent the moment the owner's answer is read) the
replicas' calls are submitted with the owner's pending answer; otherwise once the answer is here --
on Ray, a call whose argument is another's pending answer waits in its actor's queue and holds up
every later call from this client to that actor: an owner paused (SIGSTOP) after the call was sent
kept the promoted replica from taking this client's next writes until the old owner woke. A bounded_stale write returns
once the owner applied it, and is kept by the write-behind until the owner confirms it
replicated (so an owner restart before that resends it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray.client._reads import ReadPath
from erlmcp_ray.client._settings import DomainRoute
from erlmcp_ray.client._topology import Topology
from erlmcp_ray.client._transport import Copy, Retry, Transport
from erlmcp_ray.client._write_behind import WriteBehind
from erlmcp_ray.core import record as R
from erlmcp_ray.direct import spinning
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
                 write_behind: WriteBehind, client_id: str, next_seq: Any, timeout_s: float,
                 topology: Topology, alone: Callable[[], bool] = lambda: True) -> None:
        self._transport, self._retry, self._routes = transport, retry, routes
        self._topology = topology
        self._reads, self._wb, self.client_id = reads, write_behind, client_id
        self._next_seq, self._timeout = next_seq, timeout_s
        # no other caller of this client is writing now (the group commit's: then this round is that
        # caller's one op); see strong_round
        self._alone = alone

    def bounded(self, d: DomainRoute, shard: int, op: tuple, stamp: int) -> bytes | None:
        seq, topo = self._next_seq(), self._topology
        answer = self._retry.run(
            lambda: topo.call_owner(d.name, shard, "write", self.client_id, seq, [op], True, timeout=self._timeout),
            on_unavailable=lambda: topo.owner_failed(d.name, shard))
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
        seq = self._next_seq()
        deadline = time.monotonic() + self._timeout
        topo = self._topology

        def start() -> tuple[Any, list, Any, DomainRoute]:
            # Submit the owner's write and every replica's apply of its answer. The route is
            # read once per attempt, and its copies, owner and min_insync go together: after a failover
            # the owner is the promoted replica, after a migration the copies changed.
            d = self._routes[domain]
            owner = Copy(domain, shard, d.owner(shard))
            answer = self._transport.submit(owner, "write", self.client_id, seq, ops, True, True)
            chain = getattr(self._transport, "chains_safely", False)
            replicas = self._apply_to(domain, shard, d.replicas(shard), answer) if chain else []
            result = topo.wait_owner(owner, answer, max(0.001, deadline - time.monotonic()), "write")
            if not chain:
                replicas = self._apply_to(domain, shard, d.replicas(shard), result)
            return result, replicas, owner, d

        # Retried while Ray restarts the owner (or the supervisor promotes another), with the same
        # request seq. A round with other callers about (its batch's, or those queueing the next)
        # waits without spinning: they need the GIL (erlmcp_ray.direct.spinning).
        with spinning(self._alone()):
            return self._commit(domain, shard, ops, start, deadline)

    def _commit(self, domain: str, shard: int, ops: list[tuple], start: Any, deadline: float) -> list[Any]:
        topo = self._topology
        result, replicas, owner, d = self._retry.run(start, on_unavailable=lambda: topo.owner_failed(domain, shard),
                                                     deadline=deadline)
        acked, failures = 1, {}
        attempt = 0
        while True:
            acked, waiting = self._collect_acks(replicas, acked, failures, d.min_insync, deadline)
            # Too few copies hold it, but the missing ones may come back (a replacement copy catching
            # up after a failover): apply the same answer to them again, until the deadline -- as a
            # Kafka producer retries NotEnoughReplicas. Not if the owner changed meanwhile.
            attempt += 1
            pause = self._retry.pause(attempt)
            if (acked >= d.min_insync or not waiting or time.monotonic() + pause > deadline
                    or topo.owner(domain, shard) != owner):
                break
            time.sleep(pause)
            replicas = self._apply_to(domain, shard, [t.slot for t in waiting], result)
        if acked < d.min_insync:
            raise ReplicationError(
                f"{domain} shard {shard}: applied by {acked} of {d.copies} copies, {d.min_insync} required; "
                f"the write is not acknowledged and may or may not be visible later "
                f"({'; '.join(f'slot {slot}: {why}' for slot, why in sorted(failures.items()))})")
        self._reads.note_acked(domain, [op[0] for op in ops], result.incarnation, result.seq)
        out: list[Any] = [rec for _key, rec in result.items]
        for i, error in self._op_failure(d, result) or ():  # these ops were not written: their callers get the error
            out[i] = error
        return out

    def _apply_to(self, domain: str, shard: int, slots: list[int], answer: Any) -> list[tuple[Copy, Any]]:
        """Each replica's ``apply_write`` of the owner's answer (or of its pending answer, on a
        transport that ``chains_safely``); ``(copy, None)`` for one that cannot be reached now."""
        out = []
        for slot in slots:
            target = Copy(domain, shard, slot)
            try:
                out.append((target, self._transport.submit(target, "apply_write", answer)))
            except UnavailableError:
                out.append((target, None))
        return out

    def _collect_acks(self, replicas: list, acked: int, failures: dict, needed: int,
                      deadline: float) -> tuple[int, list]:
        """Count the replicas' applies as they answer, until ``needed`` copies hold the write (the
        rest are not waited for: a paused or dying replica must not hold up an acknowledgement that
        ``min_insync`` allows) or all answered. ``failures`` gets each failed slot's reason; returns
        the count and the replicas worth asking again (unavailable, not refused)."""
        waiting, pending = [], {}
        for target, ref in replicas:
            if ref is None:
                failures[target.slot] = "unreachable"
                waiting.append(target)
            else:
                pending[target] = ref
        while pending and acked < needed:
            left = deadline - time.monotonic()
            # all of them, in the common case, in one wait; past a short slice, what answered so far
            done = self._transport.ready(list(pending.values()), max(0.001, min(left, 0.05)))
            for target in [t for t, ref in pending.items() if ref in done]:
                ref = pending.pop(target)
                try:
                    self._transport.result(ref, max(0.001, left), f"replica slot {target.slot}")
                    acked += 1
                    failures.pop(target.slot, None)
                except UnavailableError as exc:  # down, restarting, or a new copy still catching up
                    self._transport.forget(target)
                    failures[target.slot] = str(exc)
                    waiting.append(target)
                except ErlmcpRayError as exc:  # refused (a newer epoch: our owner was deposed): final
                    failures[target.slot] = str(exc)
            if time.monotonic() >= deadline:
                for target in pending:
                    failures[target.slot] = "did not answer in time (it may or may not have applied it)"
                break
        return acked, waiting

    def pressure_error(self, domain: str, message: str) -> MemoryPressureError:
        limit = "limits (a node's)" if message.startswith("node ") else f"max_bytes={self._routes[domain].max_bytes}"
        return MemoryPressureError(message, domain=domain, limit=limit)
