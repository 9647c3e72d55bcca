"""The supervisor's failover loop (``actors._failover.Failover``) without Ray: ``erlmcp_ray._ray``'s
calls answered by scripted shard copies, the clock injected. What the promotion waits for the old
owner's lease, as the supervisor's own bookkeeping of its checks decides it."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from erlmcp_ray import _faults, _ray
from erlmcp_ray.actors._failover import Failover
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.layout import Layout
from erlmcp_ray.errors import UnavailableError
from tests.unit.test_failover_logic import Clock

NS = "unit_failover_supervisor"


class _Ref:
    def __init__(self, value: Any = None, error: Exception | None = None, ready: bool = True) -> None:
        self.value, self.error, self.ready = value, error, ready


class _Method:
    def __init__(self, fn) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> _Ref:
        return self._fn(*args)


class _Copy:
    """A scripted shard copy: ``health`` answers with its facts (or fails: its process is gone),
    ``adopt`` fences it, ``promote`` records the wait the supervisor asked for."""

    _tokens = itertools.count(1)

    def __init__(self, slot: int, node: str, sync_age_s: float) -> None:
        self.slot, self.node, self.sync_age_s = slot, node, sync_age_s
        self.dead = self.frozen = False
        self.checks: list[tuple] = []  # the arguments of each health check it got
        self.promoted_wait: float | None = None
        self.health = _Method(self._health)
        self.adopt = _Method(lambda owner, epoch: _Ref(self._facts()))
        self.promote = _Method(self._promote)

    def _facts(self) -> dict:
        return {"slot": self.slot, "epoch": 0, "owner_slot": 0, "is_owner": self.slot == 0,
                "incarnation": "inc0", "position": ["inc0", 10], "sync_age_s": self.sync_age_s, "last_seq": 10,
                "stash": 0, "node_id": self.node, "check_token": next(self._tokens)}

    def _health(self, *args: Any) -> _Ref:
        self.checks.append(args)
        if self.frozen:
            return _Ref(ready=False)
        if self.dead:
            return _Ref(error=UnavailableError("the actor died"))
        return _Ref(self._facts())

    def _promote(self, epoch: int, copies: int, wait_s: float, live: list) -> _Ref:
        self.promoted_wait = wait_s
        return _Ref({"epoch": epoch, "entries": 1})


@pytest.fixture
def cluster(monkeypatch):
    copies = {shard_name("reg", 0, slot): _Copy(slot, f"node{slot}", sync_age_s=0.4) for slot in range(3)}
    alive = {c.node for c in copies.values()}
    kv: dict[bytes, bytes] = {}
    clock = Clock()

    def wait_any(refs: list, timeout: float) -> list:
        ready = [r for r in refs if r.ready]
        if not ready:
            clock.t += timeout  # Ray waited that long for them
        return ready

    def get(ref: _Ref, timeout: float, what: str = "") -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    monkeypatch.setattr(_ray, "kv_get", kv.get)
    monkeypatch.setattr(_ray, "kv_put", kv.__setitem__)
    monkeypatch.setattr(_ray, "alive_nodes", lambda: [{"NodeID": n} for n in alive])
    monkeypatch.setattr(_ray, "get_actor", lambda name, namespace: copies[name])
    monkeypatch.setattr(_ray, "wait_any", wait_any)
    monkeypatch.setattr(_ray, "get", get)
    monkeypatch.setitem(_faults._seams, NS, _faults.FaultSeam(NS, read=lambda key: None))
    config = MemoryConfig.load({"distributed_memory": {"failure_timeout_ms": 1000},
                                "domains": {"reg": {"backend": "replicated", "max_bytes": "10MB", "shards": 1,
                                                    "replication_factor": 3, "min_insync": 2}}})
    owners: list[tuple] = []
    failover = Failover(config, NS, layout=Layout, running=lambda: config,
                        set_owner=lambda *owner: owners.append(owner), clock=clock)
    return SimpleNamespace(failover=failover, copies=copies, alive=alive, clock=clock, owners=owners)


def test_a_promotion_waits_out_the_lease_the_last_check_sent_to_the_old_owner_granted(cluster):
    """The old owner's replicas last synced 0.4 s ago (it was cut off from them), but it answered the
    supervisor's checks until its node was declared dead: the check sent to it in that round renews
    its lease from then, so the successor must wait a whole lease (0.5 s), not the 0.1 s the syncs
    alone would ask for."""
    failover, copies, clock = cluster.failover, cluster.copies, cluster.clock
    for _ in range(2):
        failover.round()
        clock.t += failover.period_s
    cluster.alive.discard("node0")
    failover.round()
    successor = copies[shard_name("reg", 0, 1)]
    assert cluster.owners and cluster.owners[0][2] == 1
    assert successor.promoted_wait == pytest.approx(failover.lease_s)


def test_a_check_whose_process_died_renews_no_lease_the_promotion_waits_for(cluster):
    """Once a check to the old owner failed outright (its process is gone), no lease can be renewed
    from what was sent to it: the successor waits only for what the replicas' syncs ask (0.1 s)."""
    failover, copies, clock = cluster.failover, cluster.copies, cluster.clock
    failover.round()
    clock.t += failover.period_s
    copies[shard_name("reg", 0, 0)].dead = True
    failover.round()  # the check fails: the process that would have renewed from it is gone
    clock.t += 0.01
    cluster.alive.discard("node0")
    failover.round()
    successor = copies[shard_name("reg", 0, 1)]
    assert cluster.owners and cluster.owners[0][2] == 1
    assert successor.promoted_wait == pytest.approx(failover.lease_s - 0.4)


def test_rounds_start_a_period_apart_however_long_one_took(cluster):
    failover, clock = cluster.failover, cluster.clock
    period = failover.period_s
    waits: list[float] = []

    class Stop:
        def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            return len(waits) > 3

    took = iter([period, 0.1, 0.0])

    def round_() -> None:
        clock.t += next(took)

    failover.round = round_
    failover.run(Stop())
    assert waits == pytest.approx([period, 0.0, period - 0.1, period])


def test_an_answer_is_taken_when_it_came_not_when_the_slowest_copy_stopped_being_waited_for(cluster):
    """A frozen copy makes the round wait a whole period; the owner's answer came at its start, and
    its next check must say it was held that period (the owner renews its lease from the answer's
    time plus that): taken only when the wait ended, it would say ~0, and the lease would start a
    period too early."""
    failover, copies = cluster.failover, cluster.copies
    copies[shard_name("reg", 0, 2)].frozen = True
    failover.round()  # the owner answers at once; slot 2 is waited for a period
    failover.round()  # at once: the last round took its period
    owner = copies[shard_name("reg", 0, 0)]
    _slot, _epoch, since = owner.checks[-1]
    assert since is not None and since[1] == pytest.approx(failover.period_s)
