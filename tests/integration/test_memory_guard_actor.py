"""The memory guard stops a guarded actor that outgrows its limit; Ray restarts it clean."""

from __future__ import annotations

import os
import time

import pytest
import ray

from erlmcp_ray import memory_guard

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
class ToolAgent:
    def __init__(self):
        self.watcher = memory_guard.guard_current_actor("tool", interval_s=0.05, max_heap_size="20MB")
        self.hoard = []

    def pid(self):
        return os.getpid()

    def usage_percent(self):
        return memory_guard.validate_memory("tool")

    def allocate(self, mib):
        self.hoard.append(bytearray(mib * 1024 * 1024))
        return len(self.hoard)


def test_a_guarded_actor_past_its_limit_is_restarted_and_keeps_serving(ray_local):
    agent = ToolAgent.remote()
    first = ray.get(agent.pid.remote(), timeout=60)
    assert ray.get(agent.usage_percent.remote(), timeout=30) < 100
    try:
        ray.get(agent.allocate.remote(60), timeout=60)
    except ray.exceptions.RayActorError:
        pass  # the watcher may stop the process before the call even returns
    deadline = time.monotonic() + 60
    second = None
    while time.monotonic() < deadline:
        try:
            second = ray.get(agent.pid.remote(), timeout=10)
            if second != first:
                break
        except ray.exceptions.RayActorError:
            pass  # being restarted
        time.sleep(0.1)
    assert second is not None and second != first  # a new process, started clean
    assert ray.get(agent.allocate.remote(1), timeout=30) == 1  # serving again, its hoard gone
    ray.kill(agent)
