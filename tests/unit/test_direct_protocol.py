"""The direct data plane's protocol (erlmcp_ray.direct): the handshake proves both sides know the
secret, requests are answered by id, and nothing a peer sends -- random bytes, truncated or
oversized values, wrong shapes, a wrong secret -- raises out of the server side: the connection is
closed and the reason counted. Then the same over real sockets, on both servers (``DirectServer``'s
own thread, ``AsyncDirectServer`` on an event loop): a server keeps serving its other connections
while one is flooded with garbage."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erlmcp_ray.direct import (
    AsyncDirectServer,
    ClientHandshake,
    DirectConnection,
    DirectServer,
    ProtocolError,
    RemoteCallError,
    ServerConnection,
)
from erlmcp_ray.direct._protocol import REQUEST, RESPONSE, pack, unpacker

SECRET = b"s" * 32


def handler(method: str, args: list):
    if method == "echo":
        return args
    if method == "sleep":
        time.sleep(args[0])
        return "slept"
    if method == "boom":
        raise KeyError("no such key")
    raise ValueError(f"unknown method {method}")


def async_handler(method: str, args: list):
    """``handler`` for a server on an event loop: a sleep is a coroutine there, as the coordinator's are."""
    if method == "sleep":
        return asyncio.sleep(args[0], "slept")
    return handler(method, args)


class _LoopServer:
    """An ``AsyncDirectServer`` on an event loop in a thread of its own (in an actor, the actor's loop)."""

    def __init__(self, handler, **kwargs) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            AsyncDirectServer.start(SECRET, handler, **kwargs), self.loop).result(10)
        self.address = self.server.address

    @property
    def closed(self) -> dict:
        return self.server.closed

    def buffered(self) -> int:
        return asyncio.run_coroutine_threadsafe(self._buffered(), self.loop).result(10)

    async def _buffered(self) -> int:
        return sum(c._transport.get_write_buffer_size() for c in self.server._open if c._transport is not None)

    def close(self) -> None:
        self.server.close()

        def stop() -> None:  # what still runs (a timed-out call's sleep) is cancelled first
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(stop)
        self._thread.join(10)


@pytest.fixture(params=["thread", "asyncio"])
def make_server(request):
    """Builds the server under test: ``make_server(handler)``; the asyncio one gets coroutine sleeps."""
    made: list = []

    def make(h=None, **kwargs):
        if request.param == "thread":
            server = DirectServer(SECRET, h or handler, **kwargs)
        else:
            server = _LoopServer(async_handler if h is None else h, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _connected(max_frame: int = 1 << 20) -> ServerConnection:
    server = ServerConnection(SECRET, handler, os.urandom(32), max_frame=max_frame)
    client = ClientHandshake(SECRET, os.urandom(32))
    u = unpacker()
    u.feed(server.hello())
    out, close = server.receive(client.answer(next(u)))
    assert not close
    u.feed(out)
    client.check(next(u))
    assert server.authenticated
    return server


def _replies(data: bytes) -> list:
    u = unpacker()
    u.feed(data)
    return list(u)


def test_requests_are_answered_by_id_and_handler_errors_come_back_without_closing():
    server = _connected()
    out, close = server.receive(pack([REQUEST, 7, "echo", [1, "a"]]) + pack([REQUEST, 8, "boom", []]))
    assert not close
    assert _replies(out) == [[RESPONSE, 7, True, [1, "a"]], [RESPONSE, 8, False, ["KeyError", "'no such key'", ["no such key"], {}]]]
    out, close = server.receive(pack([REQUEST, 9, "echo", [b"\x00" * 10]])[:5])  # half a frame: waits
    assert (out, close) == (b"", False)


def test_a_wrong_secret_is_refused_on_both_sides():
    server = ServerConnection(SECRET, handler, os.urandom(32))
    impostor = ClientHandshake(b"x" * 32, os.urandom(32))
    u = unpacker()
    u.feed(server.hello())
    out, close = server.receive(impostor.answer(next(u)))
    assert close and out == b"" and server.closed_for == "bad_secret" and not server.authenticated
    # and a client refuses a server that does not know the secret
    fake = ServerConnection(b"y" * 32, handler, os.urandom(32))
    honest = ClientHandshake(SECRET, os.urandom(32))
    u = unpacker()
    u.feed(fake.hello())
    out, _ = fake.receive(honest.answer(next(u)))  # the fake refuses the proof: closes, sends nothing
    with pytest.raises(ProtocolError):
        honest.check(["ok", b"\x00" * 32])


def test_a_request_before_the_handshake_closes_the_connection():
    server = ServerConnection(SECRET, handler, os.urandom(32))
    _out, close = server.receive(pack([REQUEST, 1, "echo", []]))
    assert close and server.closed_for == "unauthenticated" and server.requests == 0


@pytest.mark.parametrize(("frame", "reason"), [
    (pack([REQUEST, "1", "echo", []]), "bad_request"),
    (pack([REQUEST, 1, 5, []]), "bad_request"),
    (pack({"not": "a list"}), "bad_request"),
    (b"\xc1", "malformed"),  # a byte msgpack never uses
    (pack([REQUEST, 1, "echo", ["x" * 2_000_000]]), "oversized"),
])
def test_bad_frames_close_with_their_reason(frame, reason):
    server = _connected(max_frame=1 << 20)
    _out, close = server.receive(frame)
    assert close and server.closed_for == reason, (server.closed_for, reason)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_fuzz_nothing_a_peer_sends_raises(chunks, authenticate):
    server = _connected() if authenticate else ServerConnection(SECRET, handler, os.urandom(32))
    for chunk in chunks:
        _out, close = server.receive(chunk)
        if close:
            assert server.closed_for is not None
            break


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=12))
def test_fuzz_valid_msgpack_of_any_shape_is_answered_or_closes(value):
    server = _connected()
    out, close = server.receive(msgpack.packb(value, use_bin_type=True))
    assert close or _replies(out)


def test_over_sockets_a_flooded_connection_is_closed_and_the_others_go_on(make_server):
    server = make_server()
    try:
        good = DirectConnection(server.address, SECRET)
        assert good.call("echo", 1, "two") == [1, "two"]
        with pytest.raises(RemoteCallError, match="KeyError"):
            good.call("boom")
        # many callers, many requests in flight on one connection
        results: list = []

        def caller(n: int) -> None:
            results.extend(good.call("echo", n, i) == [n, i] for i in range(50))

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 400 and all(results)
        with pytest.raises(ProtocolError):  # the wrong secret: refused
            DirectConnection(server.address, b"z" * 32)
        flood = socket.create_connection(server.address)
        flood.recv(1024)  # the hello
        try:
            flood.sendall(os.urandom(256 * 1024))
        except OSError:
            pass  # already closed on us: fine
        flood.close()
        assert good.call("echo", "still here") == ["still here"]
        assert sum(server.closed.values()) >= 1
        # a call that times out leaves the connection usable; its late answer is dropped
        with pytest.raises(TimeoutError):
            good.call("sleep", 0.3, timeout=0.1)
        assert good.call("echo", "after") == ["after"]
        pending = [good.call_async("echo", i) for i in range(20)]
        assert [good.result(f, 10) for f in reversed(pending)] == [[i] for i in reversed(range(20))]
    finally:
        server.close()


def test_a_handler_may_answer_later_and_answers_come_in_any_order(make_server):
    """A handler that returns a Future (an asyncio long poll run elsewhere, say) is answered when
    it is done, by the server's thread (on the asyncio server: on its loop, whichever thread
    finished the future); other requests on the connection are served meanwhile."""
    import concurrent.futures
    import threading

    held: dict[str, concurrent.futures.Future] = {}

    def later(method, args):
        if method == "later":
            held[args[0]] = f = concurrent.futures.Future()
            return f
        return args

    server = make_server(later)
    conn = DirectConnection(server.address, SECRET)
    try:
        a, b = conn.call_async("later", "a"), conn.call_async("later", "b")
        assert conn.call("now", 1, timeout=5) == [1]  # not held up by the two waiting
        threading.Timer(0.05, lambda: held["b"].set_result("B")).start()
        assert conn.result(b, timeout=5) == "B" and not a.done()
        held["a"].set_exception(KeyError("gone"))
        with pytest.raises(RemoteCallError, match="KeyError"):
            conn.result(a, timeout=5)
        assert conn.call("now", 2, timeout=5) == [2]
    finally:
        conn.close()
        server.close()


def test_a_coroutine_handler_on_the_asyncio_server_answers_the_moment_it_returns():
    """On the asyncio server a handler may return a coroutine: the loop runs it as a task that sends
    its own answer when it returns (its error when it raises, or returns what msgpack cannot carry),
    in the order they finish; other requests on the connection are served meanwhile."""
    gate = asyncio.Event()  # the held call returns once the test sets it (on the server's loop)

    async def held(value):
        await gate.wait()
        return value

    async def at_once(value):
        await asyncio.sleep(0)
        return value

    async def failing():
        await asyncio.sleep(0)
        raise KeyError("gone")

    async def unpackable():
        return object()

    def h(method, args):
        calls = {"held": lambda: held(*args), "at_once": lambda: at_once(*args), "failing": failing,
                 "unpackable": unpackable}
        return calls.get(method, lambda: args)()

    server = _LoopServer(h)
    conn = DirectConnection(server.address, SECRET)
    try:
        late, early = conn.call_async("held", "late"), conn.call_async("at_once", "early")
        assert conn.call("now", 1, timeout=5) == [1]  # not held up by the one waiting
        assert conn.result(early, timeout=5) == "early" and not late.done()
        server.loop.call_soon_threadsafe(gate.set)
        assert conn.result(late, timeout=5) == "late"
        with pytest.raises(RemoteCallError, match="KeyError"):
            conn.call("failing", timeout=5)
        with pytest.raises(RemoteCallError, match="TypeError"):
            conn.call("unpackable", timeout=5)
        assert conn.call("now", 2, timeout=5) == [2]  # the connection stays
        assert server.closed == {}
    finally:
        conn.close()
        server.close()


def test_an_oversized_value_closes_its_connection_on_either_server(make_server):
    server = make_server(max_frame=4096)
    good = DirectConnection(server.address, SECRET)
    big = DirectConnection(server.address, SECRET)
    with pytest.raises((ConnectionError, TimeoutError)):
        big.call("echo", b"x" * 10_000, timeout=5)
    assert server.closed.get("oversized") == 1
    assert good.call("echo", b"y" * 1000, timeout=5) == [b"y" * 1000]


def test_the_asyncio_server_reads_no_more_from_a_peer_that_does_not_read_its_answers():
    """A peer sends requests with large answers and reads none: once the loop's write buffer for it
    is full the server stops reading its requests (flow control), so what it buffers stays bounded
    -- not every answer asked for (here 400 x 64 KiB) -- and other peers are still served."""
    server = _LoopServer(async_handler)
    try:
        greedy = DirectConnection(server.address, SECRET)
        blob = b"z" * 65536
        sent = threading.Event()

        def ask() -> None:
            try:
                for _ in range(400):
                    greedy.call_async("echo", blob)
            except (ConnectionError, OSError):
                pass
            sent.set()

        threading.Thread(target=ask, daemon=True).start()
        sent.wait(2.0)  # blocks in sendall once the server stops reading: it does not finish
        peak = max(server.buffered() for _ in range(20) if time.sleep(0.02) is None)
        assert peak < 4 * 1024 * 1024, peak  # 400 answers would be 26 MB
        other = DirectConnection(server.address, SECRET)
        assert other.call("echo", "served", timeout=5) == ["served"]
        greedy.close()
    finally:
        server.close()


@pytest.mark.parametrize("spin_s", [0.0, 0.004])
def test_a_wait_ends_at_its_deadline_not_at_a_read_slice(spin_s):
    """A waiting caller reads blocking, a slice (``_RECV_SLICE_S``) at a time: an answer later than
    a slice still arrives, a deadline between slices is still kept, and a value larger than one
    read arrives whole. The same with a spin before each wait."""
    from erlmcp_ray.direct._client import _RECV_SLICE_S
    from erlmcp_ray.direct._protocol import READ_SIZE

    server = DirectServer(SECRET, handler)
    try:
        conn = DirectConnection(server.address, SECRET, spin_s=spin_s)
        assert conn.call("sleep", 4 * _RECV_SLICE_S, timeout=5) == "slept"  # several slices with nothing
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.call("sleep", 1.0, timeout=1.5 * _RECV_SLICE_S)
        took = time.monotonic() - t0
        assert 1.5 * _RECV_SLICE_S <= took < 1.5 * _RECV_SLICE_S + 0.1, took
        with pytest.raises(TimeoutError):  # no time at all: what arrived, without waiting
            conn.call("sleep", 0.2, timeout=0)
        big = os.urandom(3 * READ_SIZE + 17)
        assert conn.call("echo", big, timeout=10) == [big]
        assert conn.call("echo", "after", timeout=5) == ["after"]  # the late answers were dropped
    finally:
        server.close()


@pytest.mark.parametrize("spin_s", [0.0, 0.0005])
def test_callers_waiting_behind_a_reader_take_over_when_it_leaves(spin_s):
    """Leader/follower: the caller reading the socket leaves once its own answer came; a caller still
    waiting must read next at once (not sleep until its own timeout), also when the one woken to read
    had its answer already. Many threads, answers in every order, some calls timing out; the same
    with the reader spinning before it sleeps."""
    import random

    server = DirectServer(SECRET, handler)
    try:
        conn = DirectConnection(server.address, SECRET, spin_s=spin_s)
        # A reads first (short call), B waits behind it for a longer one: B's answer comes right after.
        took: dict[str, float] = {}

        def timed(name: str, seconds: float) -> None:
            t0 = time.monotonic()
            assert conn.call("sleep", seconds, timeout=20) == "slept"
            took[name] = time.monotonic() - t0

        a = threading.Thread(target=timed, args=("a", 0.05))
        a.start()
        time.sleep(0.01)
        b = threading.Thread(target=timed, args=("b", 0.3))
        b.start()
        a.join(10)
        b.join(10)
        assert took["b"] < 1.0, took  # not its 20 s timeout: it took over the reading

        rng = random.Random(7)
        errors: list[BaseException] = []
        done = []

        def caller(n: int) -> None:
            r = random.Random(n)
            try:
                for i in range(40):
                    if r.random() < 0.1:
                        try:
                            conn.call("sleep", 0.02, timeout=0.001)  # times out; its answer comes late
                        except TimeoutError:
                            pass
                    else:
                        assert conn.call("echo", n, i, timeout=20) == [n, i]
                done.append(n)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(rng.randrange(10**6) + n,)) for n in range(16)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(done) == 16, errors
        assert time.monotonic() - t0 < 15  # no caller sat out a 20 s timeout

        # The connection breaks while callers wait: every one learns it at once.
        outcomes: list[BaseException | None] = []

        def stuck() -> None:
            try:
                conn.call("sleep", 5, timeout=20)
                outcomes.append(None)
            except BaseException as exc:  # noqa: BLE001
                outcomes.append(exc)

        waiting = [threading.Thread(target=stuck) for _ in range(6)]
        for t in waiting:
            t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        conn.close()
        for t in waiting:
            t.join(10)
        assert len(outcomes) == 6 and all(isinstance(o, (ConnectionError, OSError)) for o in outcomes), outcomes
        assert time.monotonic() - t0 < 3
    finally:
        server.close()


def test_a_spinning_reader_stops_spinning_for_answers_that_keep_missing_it():
    """``spin_s``: a reader busy-polls before it sleeps. Quick answers are caught by the spin; after
    ``_SPIN_MISSES`` waits in a row that it missed, the connection rests from spinning for
    ``_SPIN_REST`` waits, then tries again; a wait of no time does not spin; answers stay right."""
    from erlmcp_ray.direct._client import _SPIN_MISSES, _SPIN_REST

    server = DirectServer(SECRET, handler)
    try:
        conn = DirectConnection(server.address, SECRET, spin_s=2.0)  # catches any echo, even on a loaded machine
        conn.spins.update(hit=0, miss=0)  # (the handshake's reads spun too)
        for i in range(20):
            assert conn.call("echo", i, timeout=5) == [i]
        assert conn.spins == {"hit": 20, "miss": 0}

        short = DirectConnection(server.address, SECRET, spin_s=0.0005)
        short.spins.update(hit=0, miss=0)
        short._spin_misses = 0
        for _ in range(_SPIN_MISSES):  # each answer comes long after the spin ended
            assert short.call("sleep", 0.02, timeout=5) == "slept"
        assert short.spins["miss"] == _SPIN_MISSES
        for i in range(_SPIN_REST):  # resting: no spin at all, answered by the blocking read
            assert short.call("sleep", 0.001, timeout=5) == "slept"
        assert short.spins["miss"] == _SPIN_MISSES and short.spins["hit"] == 0
        short._spin_s = 2.0  # the rest is over: the next wait spins again (and now catches its answer)
        assert short.call("echo", "again", timeout=5) == ["again"]
        assert short.spins == {"hit": 1, "miss": _SPIN_MISSES}

        with pytest.raises(TimeoutError):  # no time at all: a look, not a spin
            conn.call("sleep", 0.05, timeout=0)
        assert conn.spins == {"hit": 20, "miss": 0}
    finally:
        server.close()


def test_no_spin_under_tls(tmp_path):
    """An SSL socket cannot be read with MSG_DONTWAIT: a TLS connection given a spin never spins,
    and its calls are answered."""
    from erlmcp_ray.direct import client_context, server_context
    from tests.tls import make_certs

    certs = make_certs(tmp_path)
    server = DirectServer(SECRET, handler, tls=server_context(certs))
    try:
        conn = DirectConnection(server.address, SECRET, tls=client_context(certs), spin_s=0.2)
        assert conn.spins == {"hit": 0, "miss": 0}  # not even the handshake
        for i in range(5):
            assert conn.call("echo", i, timeout=5) == [i]
        assert conn.spins == {"hit": 0, "miss": 0}
    finally:
        server.close()


def test_a_reader_does_not_spin_while_other_calls_wait_nor_in_a_thread_that_says_not_to():
    """A spinning reader holds its process's GIL from the others: it does not spin while other calls
    on its connection wait (their callers need the GIL when their answers come), nor within
    ``spinning(False)`` in its thread (nested: the outer no wins; other threads unaffected)."""
    from concurrent.futures import Future

    from erlmcp_ray.direct import spinning

    release = threading.Event()

    def later_or_now(method: str, args: list):
        if method != "later":
            return handler(method, args)
        answer: Future = Future()  # answered once released, while the server serves other calls
        threading.Thread(target=lambda: (release.wait(10), answer.set_result("late")), daemon=True).start()
        return answer

    server = DirectServer(SECRET, later_or_now)
    try:
        conn = DirectConnection(server.address, SECRET, spin_s=2.0)
        conn.spins.update(hit=0, miss=0)
        with spinning(False):
            assert conn.call("echo", 1, timeout=5) == [1]
            with spinning(True):
                assert conn.call("echo", 2, timeout=5) == [2]
            other: list = []
            t = threading.Thread(target=lambda: other.append(conn.call("echo", 3, timeout=5)))
            t.start()
            t.join(10)
            assert other == [[3]]
        assert conn.spins == {"hit": 1, "miss": 0}  # the other thread's call only
        assert conn.call("echo", 4, timeout=5) == [4]
        assert conn.spins == {"hit": 2, "miss": 0}

        slow = conn.call_async("later")  # in flight (its answer comes once released), no one waiting for it
        assert conn.call("echo", 5, timeout=5) == [5]  # this caller reads, two calls wait: no spin
        assert conn.spins == {"hit": 2, "miss": 0}
        release.set()
        with spinning(False):
            assert conn.result(slow, 5) == "late"
        assert conn.spins == {"hit": 2, "miss": 0}
    finally:
        server.close()
