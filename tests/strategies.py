"""Hypothesis strategies and small fakes shared by the property tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from erlmcp_ray.core.hlc import HybridLogicalClock
from erlmcp_ray.core.shard_state import ShardState
from erlmcp_ray.core.vclock import VersionVector

KEYS = st.sampled_from(["a", "b", "c", "d", "é", "k" * 40])
SMALL_VALUES = st.binary(min_size=0, max_size=12)
TAGS = st.lists(st.sampled_from(["t1", "t2", "user_sessions"]), max_size=2, unique=True).map(tuple)

version_vectors = st.dictionaries(st.integers(0, 4), st.integers(0, 6), max_size=5).map(VersionVector)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4),
    max_leaves=12,
)


@dataclass
class FakeClock:
    """A settable millisecond clock; ``skew`` models a machine whose clock is off."""

    now: int = 1_700_000_000_000
    skew: int = 0

    def __call__(self) -> int:
        return self.now + self.skew

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass
class Sim:
    """Copies of one shard, each with its own skewed clock, over one shared base time."""

    skews: list[int]
    base: FakeClock = field(default_factory=FakeClock)
    states: list[ShardState] = field(init=False)

    def __post_init__(self) -> None:
        self.states = []
        for slot, skew in enumerate(self.skews):
            clock = FakeClock(skew=skew)
            clock.now = self.base.now
            self.states.append(self._make(slot, clock))

    def _make(self, slot: int, clock: FakeClock) -> ShardState:
        physical = lambda c=clock: self.base.now + c.skew
        return ShardState(slot, clock=HybridLogicalClock(physical), now_ms=physical)

    def run(self, events: list[tuple]) -> None:
        for ev in events:
            kind = ev[0]
            if kind == "tick":
                self.base.advance(ev[1])
            elif kind == "put":
                _, i, key, value, tags = ev
                self.states[i % len(self.states)].apply_local(key, value, tags=tags)
            elif kind == "del":
                _, i, key = ev
                self.states[i % len(self.states)].apply_local(key, delete=True)
            elif kind == "sync":
                _, i, j = ev
                a, b = self.states[i % len(self.states)], self.states[j % len(self.states)]
                a.merge(b)
            for s in self.states:
                s.validate()


events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(0, 50)),
        st.tuples(st.just("put"), st.integers(0, 3), KEYS, SMALL_VALUES, TAGS),
        st.tuples(st.just("del"), st.integers(0, 3), KEYS),
        st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3)),
    ),
    max_size=40,
)
skews = st.lists(st.integers(-5_000, 5_000), min_size=3, max_size=3)
