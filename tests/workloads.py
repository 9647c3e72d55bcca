"""Workloads shared by unit tests (fake transport) and fault tests (real Ray): shipped in
``erlmcp_ray.testing`` (``erlmcp_ray/_testkit/workload.py``)."""

from __future__ import annotations

from erlmcp_ray._testkit.workload import keys_on_shard, lost_writes, strong_history_through, strong_register_history

__all__ = ["keys_on_shard", "lost_writes", "strong_history_through", "strong_register_history"]
