"""``erlmcp-ray demo``: agents on a local Ray sharing memory at three consistency levels.

Starts a local Ray and the memory system on the embedded default (nothing else
needed), runs agents as Ray actors — each keeps its own ``session`` state
(bounded_stale), publishes findings to ``shared`` (eventual, write-behind), and
reads the ``shared`` plan that a coordinator agent writes with ``strong`` —
while a subscriber actor counts the ``shared`` updates it receives. Then prints
what happened: hits per cache tier, latencies, replica lag, events.
"""

from __future__ import annotations

import time
from typing import Any

import click
import ray

import erlmcp_ray


@ray.remote(num_cpus=0)
class Agent:
    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.mem = client  # unpickled here: this process gets its own client and caches
        self.timings: dict[str, list[float]] = {"strong_get": [], "session_put": [], "finding_put": [],
                                                 "cached_get": []}

    def _timed(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[what].append(time.perf_counter() - t0)
        return out

    def step(self, round_no: int, ops: int) -> int:
        plan = self._timed("strong_get", self.mem.get, "shared", "plan", consistency="strong")
        self._timed("session_put", self.mem.put, "session", f"{self.name}:state",
                    {"round": round_no, "plan": plan and plan["version"]})
        for i in range(ops):
            self._timed("finding_put", self.mem.put, "shared", f"finding:{self.name}:{i % 16}",
                        {"agent": self.name, "round": round_no, "i": i}, tags=("findings",))
            self._timed("cached_get", self.mem.get, "shared", f"finding:{self.name}:{(i * 7) % 16}")
        return ops

    def finish(self) -> dict:
        self.mem.flush(timeout=30)
        mine = self.mem.get("session", f"{self.name}:state", consistency="strong")
        return {"name": self.name, "stats": self.mem.stats(), "timings": self.timings, "session": mine}


@ray.remote(num_cpus=0)
class Subscriber:
    def __init__(self) -> None:
        self.events = 0
        self.deleted = 0
        self.keys: set[str] = set()

    def on_memory_update(self, event: Any) -> None:
        self.events += 1
        self.deleted += event.deleted
        self.keys.add(event.key)

    def summary(self) -> dict:
        return {"events": self.events, "keys": len(self.keys), "deletes": self.deleted}


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] * 1e6


def run_demo(agents: int = 4, rounds: int = 10, ops: int = 50, namespace: str = "erlmcp-demo",
             echo: Any = click.echo) -> dict:
    """Run the demo; returns the summary it printed (the test suite checks it)."""
    started_ray = not ray.is_initialized()
    echo("starting a local Ray and the memory system (embedded default: no Redis, no cluster)...")
    system = erlmcp_ray.start(namespace=namespace)
    try:
        client = system.client()
        subscriber = Subscriber.remote()
        sub = client.subscribe("shared", subscriber)
        client.put("shared", "plan", {"version": 1, "goal": "survey the corpus"}, consistency="strong")
        team = [Agent.remote(f"agent-{i}", client) for i in range(agents)]
        with click.progressbar(range(rounds), label=f"{agents} agents working", file=None) as bar:
            for r in bar:
                ray.get([a.step.remote(r, ops) for a in team], timeout=120)
                if r == rounds // 2:  # the coordinator agent revises the plan mid-run
                    client.put("shared", "plan", {"version": 2, "goal": "write the report"}, consistency="strong")
        results = ray.get([a.finish.remote() for a in team], timeout=120)
        client.flush(timeout=30)
        time.sleep(0.5)  # let the last publications reach the subscriber
        summary = _summarise(client, results, ray.get(subscriber.summary.remote(), timeout=30))
        sub.cancel()
        client.close()
        _print(summary, echo)
        return summary
    finally:
        erlmcp_ray.shutdown(namespace)
        if started_ray:
            ray.shutdown()


def _summarise(client: Any, results: list[dict], subscriber: dict) -> dict:
    tiers = {"l0_hits": 0, "l1_hits": 0, "misses": 0, "replica_reads": 0, "owner_reads": 0,
             "buffered_puts": 0, "batches_sent": 0, "strong_writes": 0, "sync_writes": 0}
    timings: dict[str, list[float]] = {}
    for r in results:
        st = r["stats"]
        for k in ("l0_hits", "l1_hits", "misses"):
            tiers[k] += st["cache"][k]
        for k in ("replica_reads", "owner_reads", "buffered_puts", "batches_sent", "strong_writes", "sync_writes"):
            tiers[k] += st["tiers"][k]
        for k, v in r["timings"].items():
            timings.setdefault(k, []).extend(v)
    lag = []
    for domain, shards in client.sync_status().items():
        for s in shards:
            for rep in s["replicas"]:
                lag.append((domain, s["shard"], rep["slot"], rep["seq_lag"], rep["staleness_ms"]))
    return {
        "agents": len(results), "tiers": tiers, "subscriber": subscriber, "replica_lag": lag,
        "latency_us": {k: {"p50": _pct(v, 0.5), "p99": _pct(v, 0.99), "n": len(v)} for k, v in timings.items()},
        "sessions_ok": all(r["session"] is not None for r in results),
        "domains": {d: client.get_domain_stats(d) for d in ("session", "shared")},
    }


def _print(s: dict, echo: Any) -> None:
    t = s["tiers"]
    echo("")
    echo(f"== {s['agents']} agents done ==")
    echo(f"reads:  L0 hits {t['l0_hits']}, L1 hits {t['l1_hits']}, misses {t['misses']} "
         f"(-> replica {t['replica_reads']}, owner {t['owner_reads']})")
    echo(f"writes: {t['buffered_puts']} eventual (sent in {t['batches_sent']} batches), "
         f"{t['sync_writes']} bounded_stale, {t['strong_writes']} strong")
    echo("latency (µs)        p50        p99       n")
    for name, v in s["latency_us"].items():
        echo(f"  {name:14} {v['p50']:9.1f} {v['p99']:10.1f} {v['n']:7d}")
    echo("replica lag:")
    for domain, shard, slot, seq_lag, staleness in s["replica_lag"]:
        echo(f"  {domain}/{shard} slot {slot}: {seq_lag} ops behind, staleness bound {staleness:.0f} ms")
    sub = s["subscriber"]
    echo(f"subscriber: {sub['events']} update events for {sub['keys']} keys of 'shared'")
    for d, ds in s["domains"].items():
        echo(f"domain {d}: {ds['entries']} entries, {ds['bytes']} bytes of {ds['limit']}")
