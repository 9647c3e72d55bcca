"""``erlmcp-ray bench``: one client's operations against a running system, beside the floor of any
remote operation here (a bare Ray actor call, on the same cluster, in the same run).

Rows (each ``ops`` operations, timed one by one): the bare actor call, a strong put, a strong get
(it asks the owner), an eventual put (what the caller pays: the write is buffered), a get answered by
this process's L0 cache, a strong delete. ``benchmarks/`` holds the thorough versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray import _ray

__all__ = ["run"]


def _summary(name: str, samples_ns: list[int]) -> dict[str, Any]:
    s = sorted(samples_ns)
    return {"name": name, "ops": len(s), "median_us": s[len(s) // 2] / 1000,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000}


def _time(n: int, op: Callable[[int], Any], progress: Callable[[int], Any]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        op(i)
        out.append(clock() - t0)
        if i % 100 == 99:
            progress(100)
    progress(n % 100)
    return out


def run(client: Any, ops: int, domain: str, *, progress: Callable[[int], Any] = lambda _n: None) -> list[dict]:
    """The rows (name, ops, median_us, p99_us); the keys written (``bench:*``) are deleted after."""
    import ray

    @ray.remote(num_cpus=0)
    class _Echo:
        def ping(self) -> int:
            return 0

    echo = _Echo.remote()
    _ray.get(echo.ping.remote(), timeout=60, what="the bench actor")
    rows = [_summary("bare Ray actor call", _time(ops, lambda _i: _ray.get(echo.ping.remote(), timeout=30,
                                                                              what="bench actor"), progress))]
    ray.kill(echo)
    value = {"bench": True, "payload": "x" * 64}
    rows.append(_summary("strong put", _time(ops, lambda i: client.put(domain, f"bench:{i}", value,
                                                                       consistency="strong"), progress)))
    rows.append(_summary("strong get", _time(ops, lambda i: client.get(domain, f"bench:{i}",
                                                                       consistency="strong"), progress)))
    rows.append(_summary("eventual put (caller)", _time(ops, lambda i: client.put(domain, f"bench:{i}", value,
                                                                                  consistency="eventual"), progress)))
    client.flush()
    client.get(domain, "bench:0")
    rows.append(_summary("L0 get (hit)", _time(ops, lambda _i: client.get(domain, "bench:0"), progress)))
    rows.append(_summary("strong delete", _time(ops, lambda i: client.delete(domain, f"bench:{i}",
                                                                             consistency="strong"), progress)))
    return rows
