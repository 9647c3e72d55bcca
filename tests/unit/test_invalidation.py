"""InvalidationLog: sequence numbers, filtering, gaps, leases, the per-answer cap, subscriptions."""

from __future__ import annotations

import pytest

from erlmcp_ray.core import record as R
from erlmcp_ray.core.codec import encode_value
from erlmcp_ray.core.invalidation import MAX_POLL_MESSAGES, InvalidationLog, PollResult


class Clock:
    """Seconds, advanced by hand: lease tests never sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rec(value, hlc=7, deleted=False) -> bytes:
    return R.pack({0: 1}, hlc, 0, encode_value(value), deleted=deleted)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def log(clock):
    return InvalidationLog(epoch=42, clock=clock)


def test_seq_numbers_are_consecutive_from_one(log):
    assert (log.last_seq, log.first_seq) == (0, 1)
    assert log.publish([("cache", "a", rec(1)), ("cache", "b", rec(2))]) == 2
    assert log.publish([]) == 2
    assert log.publish([("session", "c", None)]) == 3
    res = log.poll("c1", 0, ["cache", "session"], ["cache"])
    assert [m[0] for m in res.messages] == [1, 2, 3]
    assert res == PollResult(42, 3, False, res.messages)


def test_message_fields_are_read_from_the_record(log):
    live, tomb = rec("v", hlc=11), rec(None, hlc=12, deleted=True)
    log.publish([("cache", "a", live), ("cache", "a", tomb), ("cache", "b", None, "invalidate")])
    res = log.poll("c1", 0, ["cache"], ["cache"])
    assert res.messages == [
        (1, "cache", "a", 11, False, live, "write"),
        (2, "cache", "a", 12, True, tomb, "write"),
        (3, "cache", "b", 0, False, None, "invalidate"),  # explicit invalidation: unconditional
    ]
    assert res.to_tuple() == (42, 3, False, res.messages, 0)  # 0: the layout generation, set by the actor


def test_only_the_clients_domains_and_values_only_where_asked(log):
    log.publish([("cache", "a", rec(1)), ("session", "s", rec(2)), ("shared", "x", rec(3))])
    res = log.poll("c1", 0, ["cache", "session"], ["session"])
    assert [(m[1], m[2]) for m in res.messages] == [("cache", "a"), ("session", "s")]
    assert res.messages[0][5] is None and res.messages[0][3] == 7  # stripped, version kept
    assert res.messages[1][5] == rec(2)
    assert res.last_seq == 3  # the skipped "shared" message is covered too


def test_a_client_is_not_sent_its_own_writes_unless_it_asks(log):
    """Redis's NOLOOP: a write's notification skips the client that made it (it versioned its own
    copy from the write's answer), unless the client registered wanting its own writes or takes
    the domain's values; the client still counts as having acknowledged them."""
    log.register("writer", ["cache"], [], own_writes=False)
    log.register("other", ["cache"], [])
    log.register("listener", ["cache"], [], own_writes=True)
    log.register("valued", ["cache"], ["cache"], own_writes=False)
    log.publish([("cache", "a", rec(1), "write", 0, "writer"), ("cache", "b", rec(2), "write", 0, "other"),
                 ("cache", "c", rec(3), "write", 0, "valued"), ("cache", "d", rec(4))])
    assert [m[2] for m in log.poll("writer", 0).messages] == ["b", "c", "d"]
    assert [m[2] for m in log.poll("other", 0).messages] == ["a", "b", "c", "d"]  # own_writes defaults to True
    assert [m[2] for m in log.poll("listener", 0).messages] == ["a", "b", "c", "d"]
    assert [m[2] for m in log.poll("valued", 0).messages] == ["a", "b", "c", "d"]  # values: every write
    assert all(len(m) == 7 for m in log.poll("other", 0).messages)  # the origin does not travel
    log.publish([("cache", "e", rec(5), "write", 0, "writer")])
    res = log.poll("writer", 4)
    assert res.messages == [] and res.last_seq == 5
    log.poll("writer", 5)
    assert "writer" in log.ack_status(5, ["cache"])[0]
    log.register("writer", ["cache"], [], own_writes=True)  # a re-registration can change it
    assert [m[2] for m in log.poll("writer", 4).messages] == ["e"]


def test_value_domains_alone_still_receive(log):
    log.publish([("shared", "x", rec(3))])
    assert log.poll("c1", 0, [], ["shared"]).messages[0][5] == rec(3)


def test_poll_from_the_middle_and_at_the_head(log):
    log.publish([("cache", str(i), rec(i)) for i in range(5)])
    assert [m[0] for m in log.poll("c1", 3, ["cache"]).messages] == [4, 5]
    res = log.poll("c1", 5, ["cache"])
    assert res.messages == [] and res.last_seq == 5 and not res.gap


def test_poll_keeps_registered_domains_when_none_given(log):
    log.register("c1", ["cache"], ["cache"])
    log.publish([("cache", "a", rec(1))])
    assert log.poll("c1", 0).messages[0][5] == rec(1)
    assert log.poll("stranger", 0).messages == []  # unknown and no domains: nothing


def test_register_returns_where_an_empty_cache_starts(log):
    log.publish([("cache", "a", rec(1))])
    assert log.register("c1", ["cache"]) == (42, 1)
    with pytest.raises(TypeError):
        log.register("c1", "cache")


def test_capacity_trims_the_oldest_and_late_clients_see_a_gap(clock):
    log = InvalidationLog(epoch=1, capacity=3, clock=clock)
    log.publish([("cache", str(i), rec(i)) for i in range(5)])
    assert (log.first_seq, log.last_seq, log.stats()["messages"]) == (3, 5, 3)
    assert not log.poll("c1", 2, ["cache"]).gap  # saw up to 2, 3.. are held
    res = log.poll("c1", 1, ["cache"])  # message 2 is gone
    assert res == PollResult(1, 5, True, [])


def test_max_bytes_trims_by_record_bytes(clock):
    r = rec("x" * 100)
    log = InvalidationLog(epoch=1, max_bytes=2 * len(r) + 1, clock=clock)
    log.publish([("cache", "a", r), ("cache", "b", None), ("cache", "c", r), ("cache", "d", r)])
    assert log.first_seq == 2 and log.stats()["bytes"] == 2 * len(r)
    assert log.poll("c1", 0, ["cache"]).gap
    assert [m[2] for m in log.poll("c1", 1, ["cache"]).messages] == ["b", "c", "d"]


def test_a_record_larger_than_max_bytes_empties_the_log(clock):
    log = InvalidationLog(epoch=1, max_bytes=10, clock=clock)
    log.publish([("cache", "a", rec("x" * 100))])
    assert (log.first_seq, log.last_seq) == (2, 1)
    assert log.poll("c1", 0, ["cache"]).gap  # the client would otherwise miss "a"
    assert not log.poll("c1", 1, ["cache"]).gap


def test_since_seq_from_the_future_is_a_gap(log):
    log.publish([("cache", "a", rec(1))])
    res = log.poll("c1", 99, ["cache"])  # the client knew another incarnation's log
    assert res.gap and res.last_seq == 1 and res.messages == []


def test_trimming_compacts_and_keeps_indexing_right(clock):
    log = InvalidationLog(epoch=1, capacity=100, clock=clock)
    for i in range(100):
        log.publish([("cache", str(i * 100 + j), None) for j in range(100)])
    assert (log.first_seq, log.last_seq) == (9901, 10000)
    assert [m[0] for m in log.poll("c1", 9990, ["cache"]).messages] == list(range(9991, 10001))


def test_answers_are_capped_and_resume_where_they_stopped(log):
    total = 2 * MAX_POLL_MESSAGES + 5
    log.publish([("cache", str(i), None) if i % 2 else ("other", str(i), None) for i in range(2 * total)])
    seen, since, answers = [], 0, 0
    while True:
        res = log.poll("c1", since, ["cache"])
        answers += 1
        assert not res.gap and len(res.messages) <= MAX_POLL_MESSAGES
        if res.messages and len(res.messages) == MAX_POLL_MESSAGES:
            assert res.last_seq == res.messages[-1][0]  # resume right after the last one returned
        seen += [m[0] for m in res.messages]
        since = res.last_seq
        if not res.messages:
            break
    assert seen == list(range(2, 2 * total + 1, 2)) and answers == 4
    assert since == log.last_seq


def test_leases_expire_on_the_injected_clock(log, clock):
    log.register("a", ["cache"])
    clock.now += 5
    log.poll("b", 0, ["cache"])
    assert log.expired() == [] and sorted(log.live_clients()) == ["a", "b"]
    clock.now += 5  # a: 10 s since its register, the default lease
    assert log.expired() == ["a"] and log.live_clients() == ["b"]
    assert log.expired(now=clock.now + 5) == ["a", "b"]
    log.poll("a", 0)  # a poll renews, and keeps the registered domains
    assert log.expired() == [] and log.client_info()["a"]["domains"] == ["cache"]


def test_forget_expired_and_unregister(log, clock):
    log.register("a", ["cache"])
    log.register("b", ["cache"])
    assert log.unregister("b") and not log.unregister("b")
    clock.now += 11
    assert log.forget_expired() == ["a"] and log.stats()["clients"] == 0


def test_client_info_reports_acks_and_leases(log, clock):
    log.publish([("cache", "a", None), ("cache", "b", None)])
    log.poll("a", 1, ["cache", "session"], ["session"])
    clock.now += 4
    info = log.client_info()["a"]
    assert info == {
        "domains": ["cache", "session"],
        "value_domains": ["session"],
        "acked_seq": 1,
        "lease_remaining_ms": pytest.approx(6000),
        "expired": False,
    }


def test_subscriptions_for_a_domain_and_for_all(log):
    assert not log.subscribed
    log.add_subscription("s1", "cache", "t1")
    assert log.subscribed
    log.add_subscription("s2", None, "t2")
    log.add_subscription("s3", "session", "t3")
    assert log.subscriptions_for("cache") == [("s1", "t1"), ("s2", "t2")]
    assert log.subscriptions_for("shared") == [("s2", "t2")]
    assert log.subscriptions_for(None) == [("s2", "t2")]
    log.add_subscription("s1", "session", "t1")  # the same id again moves it
    assert log.subscriptions_for("cache") == [("s2", "t2")]
    assert log.remove_subscription("s2") and not log.remove_subscription("s2")
    assert log.subscriptions_for("session") == [("s3", "t3"), ("s1", "t1")]
    assert log.stats()["subscriptions"] == 2
    assert log.remove_subscription("s1") and log.remove_subscription("s3") and not log.subscribed


def test_stats(log):
    log.publish([("cache", "a", rec(1)), ("cache", "b", None)])
    log.register("c", ["cache"])
    stats = log.stats()
    keys = ("epoch", "last_seq", "first_seq", "messages", "clients", "live_clients")
    assert [stats[k] for k in keys] == [42, 2, 1, 2, 1, 1]
    assert stats["bytes"] == len(rec(1))


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        InvalidationLog(epoch=1, capacity=0)


def test_knows_registered_clients_only():
    from erlmcp_ray.core.invalidation import InvalidationLog

    log = InvalidationLog(epoch=1)
    assert not log.knows("c1")
    log.register("c1", ["shared"])
    assert log.knows("c1")
    log.unregister("c1")
    assert not log.knows("c1")


def test_ack_status_counts_live_clients_of_the_domain(log):
    log.register("a", ["cache"])
    log.register("b", ["cache"])
    log.register("other", ["session"])
    seq = log.publish([("cache", "k", None, "invalidate")])
    assert log.ack_status(seq, ["cache"]) == ([], ["a", "b"])
    log.poll("a", seq, None, None)
    assert log.ack_status(seq, ["cache"]) == (["a"], ["b"])


def test_acks_count_only_polls_that_move_an_acknowledgement_forward(log):
    """What the coordinator wakes its waiting invalidations on: a poll from where the client already
    was (a long poll's wake-up, a re-poll), or from further back, acknowledges nothing new."""
    log.register("a", ["cache"])
    seq = log.publish([("cache", "k", None, "invalidate"), ("cache", "j", None, "invalidate")])
    assert log.acks == 0
    log.poll("a", 0, None, None)  # where it registered from: nothing moved
    assert log.acks == 0
    log.poll("a", seq - 1, None, None)
    log.poll("a", seq - 1, None, None)  # the same again
    assert log.acks == 1
    log.poll("a", seq, None, None)
    assert log.acks == 2 and log.ack_status(seq, ["cache"]) == (["a"], [])
    log.poll("a", seq - 1, None, None)  # back again (a client that dropped its caches): no ack
    assert log.acks == 2 and log.ack_status(seq, ["cache"]) == ([], ["a"])


def test_lease_left_is_the_first_lease_among_the_clients_to_run_out(log, clock):
    log.register("a", ["cache"])
    clock.now += 4
    log.register("b", ["cache"])
    assert log.lease_left(["a", "b"]) == pytest.approx(6.0)  # the default lease is 10 s
    assert log.lease_left(["b", "nobody"]) == pytest.approx(10.0)
    assert log.lease_left(["nobody"]) == float("inf") and log.lease_left([]) == float("inf")
    clock.now += 7
    assert log.lease_left(["a", "b"]) == 0.0  # a's has run out: ack_status no longer counts it
    assert log.ack_status(log.publish([("cache", "k", None)]), ["cache"]) == ([], ["b"])


def test_restored_clients_must_ack_again():
    from erlmcp_ray.core.invalidation import InvalidationLog

    old = InvalidationLog(epoch=1)
    old.register("a", ["cache"], ["cache"])
    new = InvalidationLog(epoch=2)
    new.restore_clients(old.snapshot_clients())
    seq = new.publish([("cache", "k", None)])
    assert new.ack_status(seq, ["cache"]) == ([], ["a"])
    assert new.client_info()["a"]["value_domains"] == ["cache"]


# ------------------------------------------------- the coordinator's wake-up of waiting polls
def test_a_signal_wakes_exactly_the_waits_begun_before_it_fired_and_keeps_none_that_timed_out():
    """The coordinator's ``_Signal``: ``fire()`` wakes every coroutine waiting then, at once; one
    that starts waiting after it sleeps until the next fire or its timeout; waits that timed out
    or were cancelled are not kept (a coordinator with no publish for hours must not pile them up)."""
    import asyncio

    from erlmcp_ray.actors.coordinator import _Signal

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        signal = _Signal()
        woke: list[tuple[str, float]] = []

        async def waiter(name: str, timeout_s: float) -> None:
            t0 = loop.time()
            await signal.wait(timeout_s)
            woke.append((name, loop.time() - t0))

        early = [asyncio.ensure_future(waiter(f"early{i}", 5.0)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert len(signal) == 3
        signal.fire()
        late = asyncio.ensure_future(waiter("late", 0.2))
        await asyncio.gather(*early)
        assert sorted(n for n, _ in woke) == ["early0", "early1", "early2"]
        assert all(took < 1.0 for _, took in woke)
        await late  # not woken by the fire before it: its timeout ended it
        assert woke[-1][0] == "late" and woke[-1][1] >= 0.19
        for _ in range(50):
            await signal.wait(0.0)
        cancelled = asyncio.ensure_future(signal.wait(5.0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        assert len(signal) == 0

    asyncio.run(scenario())
