"""Alert rules with an injected clock: a rule fires only after its whole window, resolves, and honours
its cooldown; the spec's two default rules point the right way."""

from __future__ import annotations

from erlmcp_ray.config import AlertRule, MemoryConfig
from erlmcp_ray.core.alerts import AlertEngine


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _engine(*rules, clock):
    return AlertEngine(rules, clock=clock, wall=lambda: 0.0)


def test_a_rule_fires_only_after_the_metric_stayed_past_the_threshold_for_the_whole_window():
    clock = Clock()
    eng = _engine(AlertRule(metric="memory_usage", threshold=0.9, window=60_000, action="trigger_eviction"),
                  clock=clock)
    assert eng.observe({("memory_usage", "session"): 0.95}) == []
    clock.t += 30
    assert eng.observe({("memory_usage", "session"): 0.97}) == []
    clock.t += 20
    assert eng.observe({("memory_usage", "session"): 0.80}) == []  # back under: the wait starts again
    clock.t += 1
    assert eng.observe({("memory_usage", "session"): 0.95}) == []
    clock.t += 59.9
    assert eng.observe({("memory_usage", "session"): 0.95}) == []
    clock.t += 0.1
    (event,) = eng.observe({("memory_usage", "session"): 0.96})
    assert (event.state, event.subject, event.value, event.action) == ("firing", "session", 0.96, "trigger_eviction")
    clock.t += 10
    assert eng.observe({("memory_usage", "session"): 0.99}) == []  # still firing: no second event
    assert eng.active() == [{"rule": 0, "metric": "memory_usage", "subject": "session", "action": "trigger_eviction"}]


def test_a_firing_rule_resolves_and_each_subject_is_tracked_alone():
    clock = Clock()
    eng = _engine(AlertRule(metric="memory_usage", threshold=0.9, window=1000, action="alert_operator"), clock=clock)
    eng.observe({("memory_usage", "a"): 0.95, ("memory_usage", "b"): 0.5})
    clock.t += 1
    fired = eng.observe({("memory_usage", "a"): 0.95, ("memory_usage", "b"): 0.5})
    assert [(e.subject, e.state) for e in fired] == [("a", "firing")]
    clock.t += 1
    resolved = eng.observe({("memory_usage", "a"): 0.7, ("memory_usage", "b"): 0.5})
    assert [(e.subject, e.state, e.value) for e in resolved] == [("a", "resolved", 0.7)]
    assert (eng.fired, eng.resolved) == (1, 1) and eng.active() == []


def test_the_cooldown_holds_back_a_second_firing():
    clock = Clock()
    eng = _engine(AlertRule(metric="memory_usage", threshold=0.9, window=1000, action="alert_operator", cooldown=60_000),
                  clock=clock)
    high, low = {("memory_usage", "a"): 0.95}, {("memory_usage", "a"): 0.5}
    eng.observe(high)
    clock.t += 1
    assert [e.state for e in eng.observe(high)] == ["firing"]
    clock.t += 1
    assert [e.state for e in eng.observe(low)] == ["resolved"]
    clock.t += 1
    eng.observe(high)
    clock.t += 5
    assert eng.observe(high) == []  # past the window, but within the cooldown
    clock.t += 53
    assert [e.state for e in eng.observe(high)] == ["firing"]  # 60 s after the first firing


def test_the_spec_default_rules_watch_memory_going_up_and_hit_rate_going_down():
    clock = Clock()
    eng = AlertEngine(MemoryConfig().alerts, clock=clock, wall=lambda: 0.0)
    samples = {("memory_usage", "session"): 0.95, ("cache_hit_rate", "client-1"): 0.30}
    eng.observe(samples)
    clock.t += 60
    assert [(e.metric, e.action) for e in eng.observe(samples)] == [("memory_usage", "trigger_eviction")]
    clock.t += 240
    assert [(e.metric, e.action) for e in eng.observe(samples)] == [("cache_hit_rate", "alert_operator")]
    # a user rule on the hit rate defaults to "below" too, and can be turned round
    assert AlertRule(metric="cache_hit_rate", threshold=0.5, window=1, action="alert_operator").direction == "below"
    assert AlertRule(metric="cache_hit_rate", threshold=0.5, window=1, action="alert_operator",
                     comparison="above").direction == "above"
    assert AlertRule(metric="node_usage", threshold=0.5, window=1, action="alert_operator").direction == "above"


def test_a_subject_that_stops_reporting_resolves():
    clock = Clock()
    eng = _engine(AlertRule(metric="cache_hit_rate", threshold=0.5, window=1000, action="alert_operator"), clock=clock)
    eng.observe({("cache_hit_rate", "c1"): 0.1})
    clock.t += 1
    assert [e.state for e in eng.observe({("cache_hit_rate", "c1"): 0.1})] == ["firing"]
    assert [(e.subject, e.state, e.value) for e in eng.observe({})] == [("c1", "resolved", None)]
