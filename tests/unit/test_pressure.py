"""Memory pressure levels, hysteresis and the effects of each level (core.pressure, no Ray)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erlmcp_ray.core.pressure import (
    DEFAULT_THRESHOLDS,
    AllowGrowth,
    CollectGarbage,
    Evict,
    LevelChanged,
    PressureLevel,
    PressureMonitor,
    RefuseGrowth,
    Thresholds,
    Warn,
    level_for,
)

LOW, MEDIUM, HIGH, CRITICAL = PressureLevel
LIMIT = 1000  # bytes: used // 10 is the percentage, and every step is an exact ratio


def monitor(subject="domain:cache", *, evictable=True, max_entries=None, thresholds=DEFAULT_THRESHOLDS):
    m = PressureMonitor(thresholds)
    assert m.configure(subject, LIMIT, evictable, max_entries) == []
    m.validate()
    return m


def sweep(m, subject, percents):
    """Feed ``percents`` of LIMIT; {percent: effects}, validating after every step."""
    out = {}
    for p in percents:
        out[p] = m.handle(subject, p * LIMIT // 100)
        m.validate()
    return out


UP = list(range(101))
DOWN = list(range(99, -1, -1))


def test_fill_and_drain_evictable_subject():
    s = "domain:cache"
    m = monitor(s)
    up = sweep(m, s, UP)
    # Entering each level: LevelChanged then one Warn; HIGH and CRITICAL also collect garbage.
    assert up[60] == [LevelChanged(s, LOW, MEDIUM, 0.6), Warn(s, MEDIUM, 0.6)]
    assert up[80] == [LevelChanged(s, MEDIUM, HIGH, 0.8), Warn(s, HIGH, 0.8), CollectGarbage(s)]
    assert up[90] == [Evict(s, 800)]  # 90 % is still HIGH: critical is "> 90%"
    assert up[91] == [
        LevelChanged(s, HIGH, CRITICAL, 0.91),
        Warn(s, CRITICAL, 0.91),
        CollectGarbage(s),
        Evict(s, 600),
    ]
    # Between transitions: nothing in LOW/MEDIUM, an Evict to the level's target above it.
    assert all(up[p] == [] for p in [*range(60), *range(61, 80)])
    assert all(up[p] == [Evict(s, 800)] for p in range(81, 91))
    assert all(up[p] == [Evict(s, 600)] for p in range(92, 101))
    warns = [e for effects in up.values() for e in effects if isinstance(e, Warn)]
    assert [w.level for w in warns] == [MEDIUM, HIGH, CRITICAL]  # once per transition
    assert "critical" in warns[-1].message and "domain:cache" in warns[-1].message

    down = sweep(m, s, DOWN)
    # CRITICAL holds down to 85 % (its lower bound minus 5 points) and still evicts to 60 %.
    assert all(down[p] == [Evict(s, 600)] for p in range(85, 100))
    assert down[84] == [LevelChanged(s, CRITICAL, HIGH, 0.84), Evict(s, 800)]
    assert all(down[p] == [Evict(s, 800)] for p in range(81, 84))
    assert all(down[p] == [] for p in range(75, 81))  # HIGH, but at or under its target
    assert down[74] == [LevelChanged(s, HIGH, MEDIUM, 0.74)]  # going down: no warning, no GC
    assert all(down[p] == [] for p in range(55, 74))
    assert down[54] == [LevelChanged(s, MEDIUM, LOW, 0.54)]
    assert all(down[p] == [] for p in range(54))
    assert m.level(s) is LOW and m.snapshot()[s]["transitions"] == 6


def test_fill_and_drain_non_evictable_subject_refuses_growth_at_critical():
    s = "domain:registry"
    m = monitor(s, evictable=False)
    up = sweep(m, s, UP)
    everything = [e for effects in up.values() for e in effects]
    assert not any(isinstance(e, Evict) for e in everything)  # the others refuse, never evict
    assert up[80] == [LevelChanged(s, MEDIUM, HIGH, 0.8), Warn(s, HIGH, 0.8), CollectGarbage(s)]
    assert up[91] == [
        LevelChanged(s, HIGH, CRITICAL, 0.91),
        Warn(s, CRITICAL, 0.91),
        CollectGarbage(s),
        RefuseGrowth(s),
    ]
    assert all(up[p] == [] for p in range(92, 101))
    assert m.would_refuse(s, 1) and m.snapshot()[s]["refusing"]

    down = sweep(m, s, range(99, 84, -1))
    assert all(down[p] == [] for p in range(85, 100))
    assert m.level(s) is CRITICAL and m.would_refuse(s, 1)  # still refusing at 85 %
    down = sweep(m, s, range(84, -1, -1))
    assert down[84] == [LevelChanged(s, CRITICAL, HIGH, 0.84), AllowGrowth(s)]
    assert not m.would_refuse(s, 1_000_000)


def test_would_refuse_allows_writes_that_do_not_grow():
    m = monitor("d", evictable=False)
    assert not m.would_refuse("d", 10)  # LOW
    m.handle("d", 950)
    assert m.level("d") is CRITICAL
    assert m.would_refuse("d", 1)
    assert not m.would_refuse("d", 0)  # overwrite with a value of the same size
    assert not m.would_refuse("d", -50)  # smaller value, or a delete
    evictable = monitor("e", evictable=True)
    evictable.handle("e", 1000)
    assert evictable.level("e") is CRITICAL and not evictable.would_refuse("e", 10)


def test_hysteresis_prevents_flapping_around_80_percent():
    s = "node:n1"
    m = monitor(s, evictable=False)
    effects = [m.handle(s, p * LIMIT // 100) for p in (70, 79, 81, 79, 80, 76, 81, 75, 79, 81)]
    m.validate()
    changes = [e for es in effects for e in es if isinstance(e, LevelChanged)]
    # 70 enters MEDIUM, 81 enters HIGH; then nothing until usage falls below 75 %.
    assert [(c.old, c.new) for c in changes] == [(LOW, MEDIUM), (MEDIUM, HIGH)]
    assert sum(isinstance(e, Warn) for es in effects for e in es) == 2
    assert m.handle(s, 749) == [LevelChanged(s, HIGH, MEDIUM, 0.749)]
    assert m.handle(s, 790) == []  # back in MEDIUM's band: no flap up
    assert m.handle(s, 800)[0] == LevelChanged(s, MEDIUM, HIGH, 0.8)


def test_entries_ratio_counts_too():
    s = "domain:ephemeral"
    m = monitor(s, max_entries=100)
    assert m.handle(s, 100, entries=59) == []
    assert m.handle(s, 100, entries=60)[0] == LevelChanged(s, LOW, MEDIUM, 0.6)
    effects = m.handle(s, 100, entries=95)  # bytes are at 10 %, entries at 95 %
    assert effects[0] == LevelChanged(s, MEDIUM, CRITICAL, 0.95)
    assert effects[-1] == Evict(s, 600, target_entries=60)  # evicted for entries, not bytes
    assert m.handle(s, 100, entries=60) == [LevelChanged(s, CRITICAL, MEDIUM, 0.6)]
    assert m.snapshot()[s] == {
        "level": "medium",
        "ratio": 0.6,
        "used_bytes": 100,
        "entries": 60,
        "limit_bytes": LIMIT,
        "max_entries": 100,
        "evictable": True,
        "refusing": False,
        "transitions": 3,
    }
    # Without max_entries, entries are not a limit.
    other = monitor("x")
    assert other.handle("x", 0, entries=10**9) == [] and other.level("x") is LOW


def test_jumps_skip_levels_in_one_observation():
    s = "d"
    m = monitor(s, evictable=False)
    assert m.handle(s, 1000) == [
        LevelChanged(s, LOW, CRITICAL, 1.0),
        Warn(s, CRITICAL, 1.0),
        CollectGarbage(s),
        RefuseGrowth(s),
    ]
    assert m.handle(s, 0) == [LevelChanged(s, CRITICAL, LOW, 0.0), AllowGrowth(s)]
    m.validate()


def test_over_the_limit_and_exact_eviction_targets():
    m = PressureMonitor()
    m.configure("d", 333, evictable=True, max_entries=7)
    effects = m.handle("d", 400, entries=1)
    assert effects[-1] == Evict("d", 199, target_entries=4)  # floor(333 * 0.6), floor(7 * 0.6)
    assert m.snapshot()["d"]["ratio"] == pytest.approx(400 / 333)
    m.validate()


def test_reconfigure_and_remove():
    m = monitor("d", evictable=False)
    m.handle("d", 950)
    assert m.would_refuse("d", 1)
    # A larger limit re-evaluates the last usage: 950 of 2000 is LOW.
    assert m.configure("d", 2000, evictable=False) == [
        LevelChanged("d", CRITICAL, LOW, 0.475),
        AllowGrowth("d"),
    ]
    assert m.configure("d", 1000, evictable=False)[-1] == RefuseGrowth("d")
    # Becoming evictable lifts the refusal and starts eviction instead.
    assert m.configure("d", 1000, evictable=True) == [AllowGrowth("d"), Evict("d", 600)]
    assert m.configure("d", 1000, evictable=False) == [RefuseGrowth("d")]
    m.validate()
    assert m.remove("d") == [AllowGrowth("d")]
    assert "d" not in m and m.remove("d") == [] and m.subjects == ()


def test_bad_inputs():
    m = monitor("d")
    with pytest.raises(KeyError, match="not configured"):
        m.handle("nope", 1)
    with pytest.raises(KeyError):
        m.level("nope")
    with pytest.raises(KeyError):
        m.would_refuse("nope", 1)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError):
            m.handle("d", bad)
        with pytest.raises(ValueError):
            m.handle("d", 0, entries=bad)
    for limit in (0, -5, 2.0, None):
        with pytest.raises(ValueError):
            m.configure("e", limit, True)
    with pytest.raises(ValueError):
        m.configure("e", 10, True, max_entries=0)
    with pytest.raises(ValueError):
        m.configure("", 10, True)
    m.validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"medium": 0.0},
        {"medium": 0.8, "high": 0.8},
        {"high": 0.95, "critical": 0.9},
        {"critical": 1.01},
        {"hysteresis": -0.01},
        {"hysteresis": 0.6},
        {"medium": float("nan")},
        {"high": True},
    ],
)
def test_thresholds_validation(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


def test_level_for_table():
    t = DEFAULT_THRESHOLDS
    assert [level_for(r) for r in (0.0, 0.599, 0.6, 0.799, 0.8, 0.9, 0.9001, 5.0)] == [
        LOW,
        LOW,
        MEDIUM,
        MEDIUM,
        HIGH,
        HIGH,
        CRITICAL,
        CRITICAL,
    ]
    assert level_for(0.85, CRITICAL, t) is CRITICAL and level_for(0.8499, CRITICAL, t) is HIGH
    assert level_for(0.75, HIGH, t) is HIGH and level_for(0.7499, HIGH, t) is MEDIUM
    assert level_for(0.55, MEDIUM, t) is MEDIUM and level_for(0.5499, MEDIUM, t) is LOW
    assert level_for(0.80, CRITICAL, t) is HIGH  # leaves CRITICAL, but still inside HIGH's band
    assert level_for(0.10, CRITICAL, t) is LOW
    no_margin = Thresholds(hysteresis=0.0)
    assert level_for(0.8999, CRITICAL, no_margin) is HIGH
    assert [str(level) for level in PressureLevel] == ["low", "medium", "high", "critical"]
    assert t.exit_bound(CRITICAL) == 0.85 and t.exit_bound(LOW) < 0


# --------------------------------------------------------------------------- properties


@st.composite
def thresholds(draw):
    medium = draw(st.floats(0.05, 0.7))
    high = draw(st.floats(medium + 0.01, min(medium + 0.25, 0.95)))
    critical = draw(st.floats(high + 0.01, 1.0))
    hysteresis = draw(st.floats(0.0, medium * 0.99))
    return Thresholds(medium, high, critical, hysteresis)


observations = st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 120)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(t=thresholds(), evictable=st.booleans(), steps=observations)
def test_any_usage_sequence_keeps_the_invariants(t, evictable, steps):
    s = "subject"
    m = PressureMonitor(t)
    m.configure(s, LIMIT, evictable, max_entries=100)
    refused = False
    for used, entries in steps:
        old = m.level(s)
        effects = m.handle(s, used, entries)
        m.validate()
        new = m.level(s)
        ratio = max(used / LIMIT, entries / 100)
        if new < old:  # a level is never left inside its hysteresis band
            assert ratio < t.exit_bound(old)
            for level in range(new + 1, old + 1):  # nor any level stepped over
                assert ratio < t.exit_bound(PressureLevel(level))
        if new > old:  # and entered only when the ratio reached it
            assert t.raw_level(ratio) is new
        assert new >= t.raw_level(ratio)
        changes = [e for e in effects if isinstance(e, LevelChanged)]
        assert changes == ([LevelChanged(s, old, new, ratio)] if new != old else [])
        warns = [e for e in effects if isinstance(e, Warn)]
        assert warns == ([Warn(s, new, ratio)] if new > old else [])
        for e in effects:
            if isinstance(e, RefuseGrowth):
                assert not refused
                refused = True
            elif isinstance(e, AllowGrowth):
                assert refused
                refused = False
            elif isinstance(e, Evict):
                assert evictable and new >= HIGH
                assert e.target_bytes < used or (e.target_entries is not None and e.target_entries < entries)
        assert refused == (not evictable and new is CRITICAL) == m.would_refuse(s, 1)
