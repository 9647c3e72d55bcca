"""Bad input raises a documented error at the call site, before anything is sent (issue 9, bug 5),
and one bad op never costs the good ones in its batch. Hypothesis drives the public API of a
client on the in-process fake transport (the same shard rules as the actors)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erlmcp_ray.client._transport import Copy
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import WriteOp
from erlmcp_ray.errors import (
    InvalidConsistencyError,
    InvalidKeyError,
    InvalidValueError,
    RemoteError,
    UnknownDomainError,
)
from erlmcp_ray.testing import FakeTransport

CFG = {"domains": {"shared": {"shards": 2}}, "client": {"poll_timeout_s": 0.2}}
CALL_SITE = (InvalidValueError, InvalidKeyError, InvalidConsistencyError, UnknownDomainError)


@pytest.fixture(scope="module")
def fake():
    return FakeTransport(CFG)


@pytest.fixture(scope="module")
def client(fake):
    c = fake.client()
    yield c
    c.close()


@pytest.mark.parametrize("call", [
    lambda c: c.put("shared", "x\udfffy", 1),
    lambda c: c.get("shared", "x\udfffy"),
    lambda c: c.delete("shared", "\ud800"),
    lambda c: c.put("shared", "k", 1, ttl=1e20),
    lambda c: c.put("shared", "k", 1, ttl=math.inf),
    lambda c: c.put("shared", "k", 1, ttl=math.nan),
    lambda c: c.put("shared", "k", 1, ttl=-1),
    lambda c: c.put("shared", "k", 1, ttl=True),
    lambda c: c.put("shared", "k", 1, tags=["t" * 70_000]),
    lambda c: c.put("shared", "k", 1, tags=[f"t{i}" for i in range(20_000)]),
    lambda c: c.put("shared", "k", 1, tags=["\udfff"]),
    lambda c: c.put("shared", "k", 1, tags="single"),
    lambda c: c.put("shared", "k", object()),
    lambda c: c.put("shared", "k", 1, consistency="linearizable"),
    lambda c: c.put("shared", "k", 1, coherence="loud"),
    lambda c: c.get("nope", "k"),
    lambda c: c.coordinator.invalidate("shared", "k", timeout=math.inf),
    lambda c: c.coordinator.invalidate("shared", "k", timeout=math.nan),
    lambda c: c.coordinator.invalidate("shared", "k", timeout=-1),
    lambda c: c.flush(timeout=math.nan),
    lambda c: c.flush(timeout="soon"),
    lambda c: c.get("shared", "k", consistency=["strong"]),
])
def test_bad_input_raises_at_the_call_site_and_sends_nothing(fake, client, call):
    before = fake.calls_snapshot()
    with pytest.raises(CALL_SITE):
        call(client)
    after = fake.calls_snapshot()
    assert {m: n for m, n in after.items() if m != "poll"} == {m: n for m, n in before.items() if m != "poll"}


def test_one_bad_op_in_a_batch_costs_only_itself(fake):
    owner = fake.owner("shared", 0)
    ops = [WriteOp("good1", b"\x01"), WriteOp("bad", b"\x02", 10**30), WriteOp("good2", b"\x03")]
    answer = owner.write("c", 1, ops, False)
    assert [i for i, _ in answer.rejected] == [1] and "error" in answer.rejected[0][1]
    assert owner.state.get("good1") == b"\x01" and owner.state.get("good2") == b"\x03"
    assert owner.state.get("bad") is None


def test_a_rejected_eventual_write_is_reported_at_flush_and_the_others_land(fake):
    c = fake.client()
    try:
        first, second = [k for k in (f"k{i}" for i in range(50)) if shard_for(k, 2) == 0][:2]
        fake.hold("shared", 0)
        c.put("shared", first, "a")
        # As a client that skipped validation would send it: a TTL past the record's 64-bit expiry.
        c._wb.add("shared", 0, WriteOp("poison", b"\x01", 10**30))
        c.put("shared", second, "b")
        fake.release("shared", 0)
        with pytest.raises(RemoteError, match="rejected"):
            c.flush(timeout=10)
        c.flush(timeout=10)
        owner = fake.owner("shared", 0)
        assert owner.state.get(first) is not None and owner.state.get(second) is not None
        assert owner.state.get("poison") is None
        assert c.get("shared", "poison") is None  # its optimistic cached copy was dropped
    finally:
        c.close()


# Arguments mixing valid and invalid values of every kind the API takes.
keys = st.one_of(st.text(min_size=0, max_size=20), st.just("x\udfffy"), st.integers(), st.none(),
                 st.text(min_size=300, max_size=300).map(lambda s: s * 4), st.sampled_from(["a", "b", "c"]))
values = st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=True), st.text(max_size=10),
                   st.binary(max_size=10), st.none(), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=3), st.just({1.5: 2}),
                   st.just((1, 2)), st.just(object()))
ttls = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-5, max_value=10**25),
                 st.just(True), st.just("10"))
tags = st.one_of(st.just(()), st.lists(st.text(max_size=5), max_size=3), st.just("tag"), st.just([1]),
                 st.just(["\udfff"]))
levels = st.one_of(st.none(), st.sampled_from(["eventual", "bounded_stale", "strong", "Strong", "bounded-stale",
                                               "nope", ""]), st.integers())
domains = st.sampled_from(["shared", "session", "nope", None, 3])
timeouts = st.one_of(st.none(), st.floats(min_value=-1e9, max_value=1e9), st.sampled_from([math.nan, math.inf, "1"]))

calls = st.one_of(
    st.tuples(st.just("put"), domains, keys, values, levels, ttls, tags),
    st.tuples(st.just("get"), domains, keys, levels),
    st.tuples(st.just("delete"), domains, keys, levels),
    st.tuples(st.just("get_entry"), domains, keys, levels),
    st.tuples(st.just("invalidate"), domains, keys, timeouts),
    st.tuples(st.just("flush"), timeouts),
    st.tuples(st.just("set_consistency"), levels),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(calls, min_size=1, max_size=3))
def test_fuzzed_api_calls_fail_only_at_the_call_site(client, batch):
    for call in batch:
        try:
            _perform(client, call)
        except CALL_SITE:
            pass
    client.set_consistency(None)
    client.flush(timeout=10)  # no bad write slipped through to fail later


def _perform(client, call):
    name, *args = call
    if name == "put":
        domain, key, value, level, ttl, tags = args
        client.put(domain, key, value, consistency=level, ttl=ttl, tags=tags)
    elif name in ("get", "delete", "get_entry"):
        domain, key, level = args
        getattr(client, name)(domain, key, consistency=level)
    elif name == "invalidate":
        domain, key, timeout = args
        if isinstance(timeout, float) and math.isfinite(timeout) and timeout > 0.05:
            timeout = 0.05  # a valid but long wait only slows the test down
        client.coordinator.invalidate(domain, key, timeout=timeout)
    elif name == "flush":
        timeout = args[0]
        if isinstance(timeout, float) and math.isfinite(timeout) and 0 <= timeout < 1:
            timeout = 5.0  # a valid but too short flush would time out legitimately
        client.flush(timeout=timeout)
    elif name == "set_consistency":
        client.set_consistency(args[0])


def test_the_fuzz_reaches_the_shards(fake, client):
    assert fake.calls.get("write", 0) > 0 and fake.copies[Copy("shared", 0, 0)].state.last_seq > 0
