"""Choosing a policy: ``recommend_policy`` (the spec's Policy Selection) and ``benchmark_policies``."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from erlmcp_ray.eviction._base import Cache

__all__ = ["benchmark_policies", "explain_policy", "recommend_policy", "simulate"]

#: The spec's persistence-selection threshold, reused: above it a key space is "large".
LARGE_DATA = 100 * 1024 * 1024

# access_pattern -> (policy, why). The spec's comparison table ("Best For") decides the policy.
_BY_PATTERN = {
    "temporal": ("lru", (
        "keys used recently are used again soon; LRU keeps exactly those at one reorder per hit "
        "(spec: LRU for temporal locality)")),
    "sequential": ("fifo", (
        "a scan gains nothing from reordering on hits, so the cheapest bound wins; FIFO keeps no "
        "per-access state (spec: FIFO for sequential access). If the scan loops over more keys than "
        "fit, every recency policy scores 0: use tinylfu")),
    "uniform": ("random", (
        "with every key equally likely no policy beats cache/keys, so take the cheapest; random "
        "eviction keeps no per-access state (spec: Random for uniform access)")),
    "frequency": ("lfu", "a stable hot set: LFU keeps the most requested keys (spec: LFU for hot data)"),
    "mixed": ("tinylfu", (
        "recency and frequency both matter: W-TinyLFU's window absorbs bursts and its sketch keeps "
        "one-hit wonders out of the main space; it matched or beat ARC on most measured traces "
        "(benchmarks/results/eviction.txt)")),
}


def explain_policy(characteristics: Mapping[str, Any]) -> tuple[str, str]:
    """``(policy name, reason)`` for ``access_pattern``, ``data_size`` (bytes), ``performance``, ``ttl``."""
    if characteristics.get("ttl"):
        return "ttl", f"entries go stale after {characteristics['ttl']} s, so age decides first"
    pattern = characteristics.get("access_pattern", "mixed")
    if pattern not in _BY_PATTERN:
        raise ValueError(f"access_pattern must be one of {sorted(_BY_PATTERN)}, got {pattern!r}")
    name, reason = _BY_PATTERN[pattern]
    large = (characteristics.get("data_size") or 0) >= LARGE_DATA
    if name == "lfu" and large:
        return "tinylfu", ("a large, long-lived key space: plain LFU never forgets, so yesterday's hot keys "
                           "crowd out today's; W-TinyLFU's sketch halves its counts as it goes (aging)")
    if name == "tinylfu" and characteristics.get("performance") == "critical":
        return "arc", ("latency-critical and mixed: ARC adapts between recency and frequency at about "
                       "half W-TinyLFU's per-access cost (spec: ARC for adaptive workloads)")
    return name, reason


def recommend_policy(characteristics: Mapping[str, Any]) -> str:
    """The policy name (a key of ``POLICIES``) for the workload; ``explain_policy`` says why."""
    return explain_policy(characteristics)[0]


_MISS: Any = object()


def simulate(cache: Cache, keys: Iterable[Hashable]) -> int:
    """Replay a key trace: each key is a ``get``; a miss stores it (``cache[key] = True``). Returns hits."""
    get = cache.get
    hits = 0
    for key in keys:
        if get(key, _MISS) is _MISS:
            cache[key] = True
        else:
            hits += 1
    return hits


def benchmark_policies(keys: Iterable[Hashable], cache_size: int,
                       policies: Iterable[str] | Mapping[str, Callable[[int], Cache]] | None = None,
                       ) -> list[dict[str, Any]]:
    """Hit ratio and ops/s of each policy replaying ``keys`` at ``cache_size`` entries.

    ``policies``: names from ``POLICIES`` (default all) or ``{name: factory(maxsize)}``.
    Random and W-TinyLFU draw from ``random.Random(0)``, so runs repeat exactly; TTL runs with an
    infinite ttl (a key trace has no clock), which measures its capacity policy, LRU.
    """
    keys = keys if isinstance(keys, (list, tuple)) else list(keys)
    factories = policies if isinstance(policies, Mapping) else {
        name: _default_factory(name) for name in (policies if policies is not None else _registry())}
    return [_run(name, factory(cache_size), keys) for name, factory in factories.items()]


def _run(name: str, cache: Cache, keys: list) -> dict[str, Any]:
    start = time.perf_counter()
    hits = simulate(cache, keys)
    seconds = time.perf_counter() - start
    return {"policy": name, "requests": len(keys), "hits": hits, "hit_ratio": hits / len(keys) if keys else 0.0,
            "ops_per_s": len(keys) / seconds if seconds else math.inf, "evictions": cache.evictions,
            "seconds": seconds}


def _registry() -> dict[str, type[Cache]]:
    from erlmcp_ray.eviction import POLICIES  # the registry lives with the package's public names
    return POLICIES


def _default_factory(name: str) -> Callable[[int], Cache]:
    cls = _registry()[name]
    kwargs: dict[str, Any] = {"random": {"rng": random.Random(0)}, "tinylfu": {"rng": random.Random(0)},
                              "ttl": {"ttl": math.inf}}.get(name, {})
    return lambda size: cls(size, **kwargs)
