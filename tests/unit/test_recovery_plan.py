"""Recovery planning and status (core.recovery): pure."""

from __future__ import annotations

import pytest

from erlmcp_ray.core.recovery import RecoveryStatus, ShardFacts, plan
from erlmcp_ray.errors import InvalidValueError


def _facts(**kw) -> ShardFacts:
    base = {"domain": "d", "shard": 0, "owner_alive": True, "live_replicas": 0, "durable": False,
            "checkpoint": False, "delta_possible": False}
    return ShardFacts(**{**base, **kw})


@pytest.mark.parametrize(("facts", "mode", "says"), [
    (_facts(live_replicas=1), "full", "live replicas"),
    (_facts(durable=True), "full", "stored rows"),
    (_facts(checkpoint=True), "full", "latest checkpoint"),
    (_facts(), "peer", "nothing to join"),
])
def test_auto_joins_whatever_there_is_and_says_what(facts, mode, says):
    (p,) = plan("auto", [facts])
    assert p.mode == mode and says in p.reason


def test_explicit_modes_that_cannot_apply_name_the_shard():
    with pytest.raises(InvalidValueError, match="d/0: no checkpoint"):
        plan("snapshot", [_facts()])
    with pytest.raises(InvalidValueError, match="op-log"):
        plan("delta", [_facts(checkpoint=True)])
    assert plan("delta", [_facts(checkpoint=True, delta_possible=True)])[0].mode == "delta"
    with pytest.raises(InvalidValueError, match="owner does not answer"):
        plan("peer", [_facts(owner_alive=False)])
    with pytest.raises(InvalidValueError, match="mode must be one of"):
        plan("everything", [])


def test_progress_moves_through_the_steps_and_ends_at_100():
    st = RecoveryStatus()
    assert st.progress == 0 and st.to_dict()["status"] == "idle"
    st.begin("full", 1.0)
    seen = []
    for step in ("detect", "assess"):
        st.step = step
        seen.append(st.progress)
    st.step, st.shards_total = "reconstruct", 4
    for done in range(5):
        st.shards_done = done
        seen.append(st.progress)
    for step in ("validate", "reintegrate"):
        st.step = step
        seen.append(st.progress)
    assert seen == sorted(seen) and seen[-1] < 100
    st.status = "completed"
    assert st.progress == 100
    st.begin("peer", 2.0)  # a new run starts afresh
    assert st.shards_total == 0 and st.mode == "peer" and st.status == "running"
