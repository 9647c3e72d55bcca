"""Fixtures for tests against a real local Ray (one Ray per test module) and small helpers."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
import ray

import erlmcp_ray

_ns = itertools.count()

SMALL = {
    "domains": {
        "session": {"shards": 1},
        "shared": {"shards": 2},
    },
    "client": {"poll_timeout_s": 0.5},
}


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def system(ray_local, request):
    namespace = f"t{next(_ns)}_{request.module.__name__.rsplit('.', 1)[-1]}"
    sysm = erlmcp_ray.start(SMALL, namespace=namespace)
    yield sysm
    erlmcp_ray.shutdown(namespace)


def module_system(config: dict, namespace: str):
    """A module-scoped ``system`` fixture running ``config`` in ``namespace``."""

    @pytest.fixture(scope="module")
    def system(ray_local):
        sysm = erlmcp_ray.start(config, namespace=namespace)
        yield sysm
        erlmcp_ray.shutdown(namespace)

    return system


@pytest.fixture
def client(system):
    c = system.client()
    yield c
    c.close()


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def one_coherence_round(c) -> None:
    """Wait until ``c`` completed one more coordinator poll than now (a poll answered after this call)."""
    start = c.counters["polls"]
    wait_for(lambda: c.counters["polls"] >= start + 2, what="a coherence round")


@contextlib.contextmanager
def running_system(config, namespace):
    """A memory system started for one test and shut down after it, its durable data purged."""
    system = erlmcp_ray.start(config, namespace=namespace)
    try:
        yield system
    finally:
        erlmcp_ray.shutdown(namespace, purge=True)
