"""Per-node limits (core.node_limits) and a shard owner carrying them out (ShardCopy): pure, no Ray."""

from __future__ import annotations

from erlmcp_ray.config import DomainConfig
from erlmcp_ray.core.node_limits import CopyUsage, NodeBudget
from erlmcp_ray.core.pressure import CRITICAL, HIGH
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.core.wire import write_op


def usage(*copies: tuple[str, int, int, int, bool]) -> list[CopyUsage]:
    return [CopyUsage((d, s), 0, b, e, ev) for d, s, b, e, ev in copies]


def test_a_node_under_high_asks_nothing():
    budget = NodeBudget(1000, 100)
    assert budget.observe({"n1": usage(("cache", 0, 790, 10, True))}) == []
    assert budget.refused() == {} and budget.snapshot()["n1"]["level"] == "medium"


def test_at_high_the_evictable_shards_shed_the_excess_in_proportion_to_what_they_hold():
    budget = NodeBudget(1000, 100)
    [evict] = budget.observe({"n1": usage(("cache", 0, 600, 10, True), ("cache", 1, 200, 10, True),
                                          ("registry", 0, 50, 5, False))})
    assert evict.level is HIGH and evict.node == "n1"
    # 850 bytes, HIGH line 800: 50 to free, split 3:1 over the evictable copies (rounded up)
    assert evict.shares == {("cache", 0): (38, 0), ("cache", 1): (13, 0)}
    assert budget.refused() == {}  # HIGH never refuses


def test_the_entry_limit_counts_too():
    budget = NodeBudget(10**9, 100)
    [evict] = budget.observe({"n1": usage(("cache", 0, 10, 95, True))})
    assert evict.level is CRITICAL and evict.shares == {("cache", 0): (0, 35)}  # down to 60 entries


def test_at_critical_a_node_that_cannot_evict_enough_refuses_its_other_shards_until_below_85_percent():
    budget = NodeBudget(1000, 10**6)
    node = usage(("cache", 0, 100, 1, True), ("registry", 0, 850, 1, False))
    [evict] = budget.observe({"n1": node})  # 95 %: 350 to free, only 100 evictable
    assert evict.shares == {("cache", 0): (100, 0)}
    refused = budget.refused()
    assert set(refused) == {("registry", 0)} and "n1" in refused[("registry", 0)]
    assert budget.observe({"n1": usage(("registry", 0, 870, 1, False))}) == []  # 87 %: still CRITICAL
    assert set(budget.refused()) == {("registry", 0)}
    budget.observe({"n1": usage(("registry", 0, 840, 1, False))})  # 84 %: left CRITICAL
    assert budget.refused() == {}


def test_a_critical_node_whose_evictable_shards_can_cover_the_excess_evicts_and_refuses_nothing():
    budget = NodeBudget(1000, 10**6)
    [evict] = budget.observe({"n1": usage(("cache", 0, 500, 1, True), ("registry", 0, 450, 1, False))})
    assert evict.shares == {("cache", 0): (350, 0)} and budget.refused() == {}


def test_a_node_that_stops_reporting_is_forgotten_with_its_refusals():
    budget = NodeBudget(1000, 10**6)
    budget.observe({"n1": usage(("registry", 0, 990, 1, False)), "n2": usage(("registry", 1, 10, 1, False))})
    assert set(budget.refused()) == {("registry", 0)}
    budget.observe({"n2": usage(("registry", 1, 10, 1, False))})
    assert budget.refused() == {} and set(budget.snapshot()) == {"n2"}


def _owner(eviction: str) -> ShardCopy:
    d = DomainConfig(max_bytes=10**6, eviction=eviction)
    return ShardCopy("d", 0, 0, 1, 1, ShardSettings(domain_config=d.model_dump(mode="json"), max_bytes=10**6))


def test_an_owner_refused_by_its_node_takes_no_growing_write_but_shrinking_ones_and_deletes():
    owner = _owner("none")
    owner.write("c", 1, [write_op("a", b"x" * 100), write_op("b", b"y" * 100)])
    assert owner.set_node_refusal("node n1 holds 95% of its limits") is True
    assert owner.set_node_refusal("node n1 holds 95% of its limits") is False  # no change
    answer = owner.write("c", 2, [write_op("new", b"z"), write_op("a", b"x" * 500), write_op("b", b"y" * 10),
                                  write_op("a", None)])
    assert [i for i, _msg in answer.refused] == [0, 1]
    assert "node n1" in answer.refused[0][1]
    assert owner.state.get("new") is None and owner.state.get("b") is not None and owner.state.get("a") is None
    assert owner.stats()["node_refusal"].startswith("node n1")
    owner.set_node_refusal(None)
    assert owner.write("c", 3, [write_op("new", b"z")]).refused == []


def test_an_owner_asked_for_its_share_evicts_at_least_that_in_policy_order():
    owner = _owner("lru")
    for i in range(10):
        owner.write("c", i + 1, [write_op(f"k{i}", b"v" * 100)])
    before = owner.state.bytes_used
    assert owner.evict_amount(250) >= 1
    assert before - owner.state.bytes_used >= 250
    assert owner.state.get("k0") is None and owner.state.get("k9") is not None  # least recent first
    assert owner.evict_amount(0, 3) == 3  # entries too
    assert _owner("none").evict_amount(10**6) == 0  # no policy: nothing to evict
