"""Which eviction policy a domain's caches and shard stores use (its ``eviction`` setting)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erlmcp_ray.config import DomainConfig, EvictionPolicyName
from erlmcp_ray.eviction import Cache, make_cache

__all__ = ["client_l1_policy", "shard_policy"]


def _kwargs(cfg: DomainConfig, name: str) -> dict[str, Any]:
    # A TTL policy expires entries after the domain's default ttl (300 s when it has none).
    return {"ttl": cfg.default_ttl or 300.0} if name == "ttl" else {}


def client_l1_policy(cfg: DomainConfig, maxsize: int, getsizeof: Callable[[Any], int]) -> Cache:
    """A client's L1 for the domain: the domain's policy; LRU for non-evictable domains, since
    a client's cache is always bounded (evicting a cached copy loses nothing)."""
    name = cfg.eviction.value
    if cfg.eviction is EvictionPolicyName.NONE:
        name = "lru"
    return make_cache(name, maxsize, getsizeof, **_kwargs(cfg, name))


def shard_policy(cfg: DomainConfig, maxsize: int, on_evict: Callable[[Any, Any], None]) -> Cache | None:
    """The policy that picks which entries an evictable domain's shard drops when it is full
    (None for a domain without eviction: it refuses writes instead, see memory limits)."""
    if cfg.eviction is EvictionPolicyName.NONE:
        return None
    name = cfg.eviction.value
    return make_cache(name, maxsize, lambda size: size, on_evict=on_evict, **_kwargs(cfg, name))
