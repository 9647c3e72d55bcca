"""The process's clients share one long poll (client._poll_hub) on a real Ray: a client that joins
or leaves ends the poll in flight, so it is polled for at once and never left behind as a ghost.

The polls here wait 5 s for news: a join the hub missed would make the next invalidation of the
new client's keys wait that long, a close that left a ghost would make it wait for the lease.
"""

from __future__ import annotations

import time

import pytest
import ray

from erlmcp_ray.actors.options import COORDINATOR
from tests.conftest import module_system

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "t_poll_hub"
CFG = {
    "domains": {"shared": {"shards": 1}},
    "cache_coordinator": {"lease_ms": 20_000, "invalidation_timeout": 15_000},
    "client": {"poll_timeout_s": 5.0},
}

system = module_system(CFG, NS)


def _registered() -> set[str]:
    info = ray.get(ray.get_actor(COORDINATOR, namespace=NS).client_info.remote(), timeout=30)
    return set(info)


def test_a_client_that_joins_is_polled_for_at_once_and_one_that_leaves_is_no_ghost(system):
    first = system.client()
    try:
        first.put("shared", "a", 1, consistency="strong")
        assert first.get("shared", "a") == 1
        time.sleep(0.3)  # the hub's poll is waiting now (up to 5 s)
        late = system.client()  # joins the waiting poll's hub
        try:
            assert late.get("shared", "a") == 1  # cached
            t0 = time.monotonic()
            result = first.coordinator.invalidate("shared", "a")
            took = time.monotonic() - t0
            assert late.client_id in result.acked and result.missing == ()
            assert took < 2.0, f"the invalidation waited {took:.2f} s for the client that joined"
            assert late.get("shared", "a", local_only=True) is None
            assert late.stats()["transport"]["polls"]["shared_by"] == 2
        finally:
            late.close()
        assert late.client_id not in _registered()
        first.put("shared", "b", 2, consistency="strong")
        assert first.get("shared", "b") == 2
        time.sleep(0.3)
        t0 = time.monotonic()
        result = first.coordinator.invalidate("shared", "b")  # the closed client is not waited for
        assert result.missing == () and late.client_id not in result.acked
        assert time.monotonic() - t0 < 2.0
        assert late.client_id not in _registered()
    finally:
        first.close()


def test_a_client_that_joins_hears_of_the_next_write_of_a_client_polled_before_it(system):
    """The one member polled so far is not sent its own writes (NOLOOP), so nothing wakes the poll
    in flight when it writes: the member that joined must be in a poll already, or it would keep
    serving its old copy until that poll's 5 s were up."""
    writer = system.client()
    try:
        writer.put("shared", "w", 1, consistency="strong")
        time.sleep(0.3)  # the hub's poll is waiting now
        reader = system.client()
        try:
            assert reader.get("shared", "w") == 1  # cached
            writer.put("shared", "w", 2)
            writer.flush(timeout=30)
            t0 = time.monotonic()
            while reader.get("shared", "w", local_only=True) is not None and time.monotonic() - t0 < 10:
                time.sleep(0.01)
            took = time.monotonic() - t0
            assert took < 2.0, f"the client that joined kept its old copy {took:.2f} s after the write"
            assert reader.get("shared", "w") == 2
        finally:
            reader.close()
    finally:
        writer.close()


def test_clients_closing_while_others_invalidate_leave_the_rest_coherent(system):
    """Clients of one process come and go from a thread while the main thread invalidates keys
    the survivors cache: every invalidation is acknowledged by every surviving holder, no closed
    client is waited for, and no closed client stays registered."""
    import threading

    keep = [system.client() for _ in range(3)]
    gone: list[str] = []
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            c = system.client()
            c.get("shared", "churn")
            gone.append(c.client_id)
            c.close()

    churner = threading.Thread(target=churn)
    try:
        keep[0].put("shared", "churn", 0, consistency="strong")
        churner.start()
        for i in range(15):
            keep[0].put("shared", "churn", i, consistency="strong")
            for c in keep:
                assert c.get("shared", "churn") == i
            t0 = time.monotonic()
            result = keep[0].coordinator.invalidate("shared", "churn")
            assert {c.client_id for c in keep[1:]} <= set(result.acked) and result.missing == ()
            assert time.monotonic() - t0 < 3.0
            assert all(c.get("shared", "churn", local_only=True) is None for c in keep[1:])
    finally:
        stop.set()
        churner.join(30)
        for c in keep:
            c.close()
    assert gone and not (set(gone) & _registered())


def test_a_blocked_subscriber_holds_up_no_clients_coherence(system):
    """A callable subscriber that blocks delays only its own client's later events: the hub keeps
    polling for that client and the process's others, so their caches stay coherent and a
    synchronous invalidation is acknowledged by both."""
    import threading

    from tests.conftest import wait_for

    a, b, w = system.client(), system.client(), system.client()
    gate = threading.Event()
    seen: list[str] = []

    def blocking(event) -> None:
        seen.append(event.key)
        gate.wait(30)

    sub = a.subscribe("shared", blocking)
    try:
        w.put("shared", "x", 1, consistency="strong")
        wait_for(lambda: "x" in seen, what="the subscriber to be called (and block)")
        w.put("shared", "y", 1, consistency="strong")
        assert a.get("shared", "y") == 1 and b.get("shared", "y") == 1
        t0 = time.monotonic()
        result = w.coordinator.invalidate("shared", "y")
        assert {a.client_id, b.client_id} <= set(result.acked) and result.missing == ()
        assert time.monotonic() - t0 < 2.0
        assert a.get("shared", "y", local_only=True) is None and b.get("shared", "y", local_only=True) is None
        gate.set()
        wait_for(lambda: "y" in seen, what="the subscriber's later events, once it returns")
    finally:
        gate.set()
        sub.cancel()
        for c in (a, b, w):
            c.close()
