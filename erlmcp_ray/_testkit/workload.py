"""A strong register workload to run through a fault, and the count of acknowledged writes lost.

``strong_history_through(fault, clients, ...)``: threads make random strong puts (of values never
written before) and strong gets on a few keys, ``fault()`` strikes once half the operations are
done, and every operation is recorded (``HistoryRecorder``) for ``check_linearizable``.
``lost_writes(history, final)``: with each key's value read once the system settled, how many keys
lost their last acknowledged write (the value read is neither it nor a write that may have come
after it). The fault suite and ``benchmarks/bench_faults.py`` use both; so may users' own tests.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Hashable
from typing import Any

from erlmcp_ray._testkit.history import HistoryRecorder, Operation

__all__ = ["keys_on_shard", "lost_writes", "strong_history_through", "strong_register_history"]


def keys_on_shard(prefix: str, n: int, shard: int, shards: int) -> list[str]:
    """``n`` key names starting with ``prefix`` that all live on ``shard`` (of ``shards``): a fault
    struck at that shard's copies then hits every operation of the workload."""
    from erlmcp_ray.core.routing import shard_for

    names = (f"{prefix}{i}" for i in range(1_000_000))
    return [k for k, _ in zip((k for k in names if shard_for(k, shards) == shard), range(n))]


def strong_register_history(clients: list, *, threads: int, ops: int, keys: int, domain: str = "shared",
                            timeout: float = 120.0) -> list[Operation]:
    """``threads`` threads (using ``clients`` in turn) each make ``ops`` random strong puts (of values
    never written before) and strong gets on ``keys`` keys; returns the recorded history."""
    return strong_history_through(lambda: None, clients, threads=threads, ops=ops, keys=keys, domain=domain,
                                  timeout=timeout)


def strong_history_through(fault: Callable[[], Any], clients: list, *, threads: int, ops: int,
                           keys: int | list[str], domain: str, prefix: str = "reg",
                           timeout: float = 180.0) -> list[Operation]:
    """As ``strong_register_history``, but ``fault()`` runs once half the operations are done, and an
    operation that raises is recorded as failed: a put as indefinite (it may have happened), a get as
    definite (a read that failed changed nothing). ``keys``: how many (named ``prefix`` + i), or
    the key names (``keys_on_shard`` picks names on one shard)."""
    names = [f"{prefix}{i}" for i in range(keys)] if isinstance(keys, int) else list(keys)
    rec = HistoryRecorder()
    values = itertools.count(1)
    done = itertools.count(1)
    half = max(1, threads * ops // 2)
    reached = threading.Event()

    def worker(p: int) -> None:
        client, r = clients[p % len(clients)], random.Random(p)
        for _ in range(ops):
            key = names[r.randrange(len(names))]
            if r.random() < 0.5:
                value = next(values)
                t = rec.invoke(p, "put", key, value)
                try:
                    client.put(domain, key, value, consistency="strong")
                    rec.ok(t)
                except Exception:  # noqa: BLE001 - recorded: the checker decides
                    rec.fail(t, definite=False)
            else:
                t = rec.invoke(p, "get", key)
                try:
                    rec.ok(t, client.get(domain, key, consistency="strong"))
                except Exception:  # noqa: BLE001
                    rec.fail(t, definite=True)
            if next(done) == half:
                reached.set()

    workers = [threading.Thread(target=worker, args=(p,)) for p in range(threads)]
    for t in workers:
        t.start()
    reached.wait(timeout)
    fault()
    for t in workers:
        t.join(timeout)
    return rec.history()


def lost_writes(history: list[Operation], final: dict[Hashable, Any]) -> list[Hashable]:
    """The keys whose last acknowledged put is lost: ``final[key]`` (read after the system settled)
    is neither that put's value nor the value of a put that may have taken effect after it (one
    still running, or indeterminate, when it was invoked)."""
    lost = []
    puts: dict[Hashable, list[Operation]] = {}
    for op in history:
        if op.kind == "put":
            puts.setdefault(op.key, []).append(op)
    for key, ops in puts.items():
        acked = [op for op in ops if op.completed != float("inf")]
        if not acked:
            continue
        last = max(acked, key=lambda op: op.completed)
        allowed = {op.value for op in ops if op.completed > last.invoked}
        if final.get(key) not in allowed:
            lost.append(key)
    return lost
