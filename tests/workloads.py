"""Workloads shared by unit tests (fake transport) and fault tests (real Ray)."""

from __future__ import annotations

import itertools
import random
import threading

from erlmcp_ray.testing import HistoryRecorder, Operation


def strong_register_history(clients: list, *, threads: int, ops: int, keys: int, domain: str = "shared",
                            timeout: float = 120.0) -> list[Operation]:
    """``threads`` threads (using ``clients`` in turn) each make ``ops`` random strong puts (of values
    never written before) and strong gets on ``keys`` keys; returns the recorded history."""
    return strong_history_through(lambda: None, clients, threads=threads, ops=ops, keys=keys, domain=domain,
                                  timeout=timeout)


def strong_history_through(fault, clients: list, *, threads: int, ops: int, keys: int, domain: str,
                           prefix: str = "reg", timeout: float = 180.0) -> list[Operation]:
    """As ``strong_register_history``, but ``fault()`` runs once half the operations are done, and an
    operation that raises is recorded as failed: a put as indefinite (it may have happened), a get as
    definite (a read that failed changed nothing)."""
    rec = HistoryRecorder()
    values = itertools.count(1)
    done = itertools.count(1)
    half = max(1, threads * ops // 2)
    reached = threading.Event()

    def worker(p: int) -> None:
        client, r = clients[p % len(clients)], random.Random(p)
        for _ in range(ops):
            key = f"{prefix}{r.randrange(keys)}"
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
