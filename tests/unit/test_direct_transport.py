"""The direct transport (issue 14) without Ray: a ``MemoryClient`` whose data path goes over real
sockets to ``DirectServer`` endpoints serving the ``FakeTransport``'s in-process shard copies (what a
shard actor does with its own copy), with the fake as the fallback for everything else.

Faults are real socket faults: a proxy that cuts a connection after the request reached the copy
and before its answer came back (the call happened; the client cannot know), an endpoint that is
gone, a wrong secret, a copy that does not answer."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from erlmcp_ray.client import Copy, MemoryClient
from erlmcp_ray.client._direct_transport import DirectPool, DirectTransport
from erlmcp_ray.core.routing import shard_for
from erlmcp_ray.core.wire import Progress
from erlmcp_ray.direct import DirectServer
from erlmcp_ray.errors import MemoryPressureError, OperationTimeoutError, UnavailableError
from erlmcp_ray.testing import FakeTransport
from tests.conftest import wait_for

SECRET = os.urandom(32)
CFG = {"domains": {"reg": {"backend": "replicated", "replication_factor": 2, "min_insync": 2, "shards": 2,
                           "max_bytes": "1MB"},
                   "small": {"backend": "memory", "max_bytes": "2KB", "eviction": "none"}},
       "client": {"call_timeout_s": 3.0}}


class CutProxy:
    """A TCP proxy to ``upstream``; ``cut_next_answer()``: the next bytes coming back are dropped and
    the client's connection is closed (the request was delivered)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = self._sock.getsockname()[:2]
        self._cut = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_answer(self) -> None:
        self._cut.set()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and self._cut.is_set():
                    self._cut.clear()
                    self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class Plane:
    """One endpoint per copy of the fake, each serving that copy."""

    def __init__(self, fake: FakeTransport) -> None:
        self.fake = fake
        self.servers: dict[Copy, DirectServer] = {}
        self.endpoints: dict[Copy, tuple[str, int]] = {}
        self.hold = threading.Event()  # cleared: no copy answers
        self.hold.set()
        self.stuck: dict[Copy, threading.Event] = {}  # a copy that answers once its event is set
        for target in fake.copies:
            self.serve(target)

    def serve(self, target: Copy) -> DirectServer:
        def handler(method, args, target=target):
            self.hold.wait(10)
            if target in self.stuck:
                self.stuck[target].wait(10)
            return self.fake.call(target, method, *args, timeout=5)

        server = self.servers[target] = DirectServer(SECRET, handler)
        self.endpoints[target] = server.address
        return server

    def lookup(self, target: Copy) -> dict | None:
        host, port = self.endpoints[target]
        return {"host": host, "port": port, "incarnation": "x"}

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


@pytest.fixture
def plane():
    p = Plane(FakeTransport(CFG))
    yield p
    p.close()


def _transport(plane: Plane, **pool) -> DirectTransport:
    """A transport of its own (its own pool) to the plane's endpoints."""
    return DirectTransport(plane.fake, DirectPool(lambda: SECRET, **pool), lookup=plane.lookup)


def _client(plane: Plane, secret: bytes = SECRET) -> tuple[MemoryClient, DirectTransport]:
    transport = DirectTransport(plane.fake, DirectPool(lambda: secret), lookup=plane.lookup)
    return MemoryClient("fake", plane.fake.config, transport=transport), transport


def test_reads_and_strong_writes_go_over_the_endpoints(plane):
    client, _ = _client(plane)
    try:
        for i in range(20):
            client.put("reg", f"k{i}", {"n": i}, consistency="strong")
        assert [client.get("reg", f"k{i}", consistency="strong") for i in range(20)] == [{"n": i} for i in range(20)]
        # every copy holds every strong write: the replicas applied the owners' answers, chained
        for shard in range(2):
            assert len(plane.fake.copies[Copy("reg", shard, 0)].state) == len(plane.fake.copies[Copy("reg", shard, 1)].state)
        stats = client.stats()["transport"]
        assert stats["kind"] == "direct" and stats["fallback"] == 0 and stats["direct"] >= 60
        assert stats["connections"] == 4 and stats["connects"] == 4  # one per copy, reused
        assert plane.fake.calls_snapshot()["apply_write"] >= 20
    finally:
        client.close()


def test_a_copys_error_arrives_as_the_same_error_with_its_attributes(plane):
    client, _ = _client(plane)
    try:
        with pytest.raises(MemoryPressureError) as info:
            for i in range(200):
                client.put("small", f"k{i}", "x" * 100, consistency="strong")
        assert info.value.domain == "small" and "max_bytes" in info.value.limit
    finally:
        client.close()


def test_an_answer_lost_with_its_connection_is_retried_and_applied_once(plane):
    """The request reached the owner, which applied it; the connection broke before the answer
    came back. The client retries on a new connection with the same request seq: the owner
    recognises it, so the write happens once (one version), and the caller gets its answer."""
    owner = Copy("reg", 0, 0)
    proxy = CutProxy(plane.endpoints[owner])
    plane.endpoints[owner] = proxy.address
    client, transport = _client(plane)
    try:
        key = next(f"k{i}" for i in range(100) if shard_for(f"k{i}", 2) == 0)
        client.put("reg", key, "v1", consistency="strong")
        before = plane.fake.copies[owner].state.last_seq
        proxy.cut_next_answer()
        client.put("reg", key, "v2", consistency="strong")
        assert proxy.cuts == 1
        assert client.get("reg", key, consistency="strong") == "v2"
        assert plane.fake.copies[owner].state.last_seq == before + 1  # applied once
        stats = transport.transport_stats()
        assert stats["broken"] >= 1 and stats["connects"] == 3  # owner, replica, and the owner again
    finally:
        client.close()


def test_a_copy_restarted_on_another_port_is_found_again(plane):
    client, transport = _client(plane)
    try:
        client.put("reg", "a", 1, consistency="strong")
        for target in list(plane.servers):  # every endpoint goes away; new ones listen elsewhere
            plane.servers[target].close()
            plane.serve(target)
        client.put("reg", "a", 2, consistency="strong")
        assert client.get("reg", "a", consistency="strong") == 2
        assert transport.transport_stats()["fallback"] == 0
    finally:
        client.close()


def test_an_unreachable_endpoint_sends_that_call_over_the_fallback(plane):
    gone = socket.create_server(("127.0.0.1", 0))
    address = gone.getsockname()[:2]
    gone.close()  # nothing listens there now
    for target in plane.endpoints:
        plane.endpoints[target] = address
    client, transport = _client(plane)
    try:
        client.put("reg", "a", 1, consistency="strong")
        assert client.get("reg", "a", consistency="strong") == 1
        stats = transport.transport_stats()
        assert stats["direct"] == 0 and stats["fallback"] >= 3 and stats["connect_failures"] >= 1
    finally:
        client.close()


def test_a_copy_that_does_not_answer_its_endpoint_lookup_is_called_over_the_fallback(plane):
    """Found by bench_failover: a strong put retried after its owner's node died waited in the
    endpoint lookup -- a Ray call to the copy, which Ray holds until it restarted the process
    elsewhere (seconds) -- and not in the owner's wait, which ends when a failover moved the owner.
    A lookup that times out now sends that call over the fallback, and is asked again a second
    later, not by every call meanwhile."""
    now = [0.0]
    asked = []

    def lookup(target):
        asked.append(target)
        if target == Copy("reg", 0, 0) and now[0] < 5:
            raise OperationTimeoutError("the copy's endpoint: no answer in 1.0 s")
        return plane.lookup(target)

    transport = DirectTransport(plane.fake, DirectPool(lambda: SECRET, clock=lambda: now[0]), lookup=lookup)
    client = MemoryClient("fake", plane.fake.config, transport=transport)
    key = next(k for k in (f"k{i}" for i in range(100)) if shard_for(k, 2) == 0)
    try:
        client.put("reg", key, 1, consistency="strong")  # no error: the owner's write went over the fallback
        assert client.get("reg", key, consistency="strong") == 1
        stats = transport.transport_stats()
        assert stats["fallback"] >= 2 and asked.count(Copy("reg", 0, 0)) == 1
        now[0] = 6.0  # past the recheck: the copy answers its lookup now
        client.put("reg", key, 2, consistency="strong")
        assert asked.count(Copy("reg", 0, 0)) == 2
        direct = transport.transport_stats()["direct"]
        assert client.get("reg", key, consistency="strong") == 2
        assert transport.transport_stats()["direct"] > direct
    finally:
        client.close()


def test_a_wrong_secret_is_refused_and_the_calls_go_over_the_fallback(plane):
    client, transport = _client(plane, secret=os.urandom(32))
    try:
        client.put("reg", "a", 1, consistency="strong")
        assert client.get("reg", "a", consistency="strong") == 1
        stats = transport.transport_stats()
        assert stats["direct"] == 0 and stats["refused"] >= 1
        assert sum(s.closed.get("bad_secret", 0) for s in plane.servers.values()) >= 1
    finally:
        client.close()


def test_a_silent_copy_times_out_and_its_connection_stays_usable(plane):
    transport = _transport(plane)
    owner = Copy("reg", 0, 0)
    transport.call(owner, "progress", timeout=2)
    plane.hold.clear()  # the copy stops answering
    with pytest.raises(OperationTimeoutError):
        transport.call(owner, "progress", timeout=0.2)
    plane.hold.set()
    assert isinstance(transport.call(owner, "progress", timeout=2), Progress)  # a named type again
    assert transport.transport_stats()["connects"] == 1


def test_ready_finds_an_answer_behind_a_copy_that_does_not_answer(plane):
    """A stuck copy first in the list must not hide another's answer (a strong write with one
    replica paused is acknowledged by the others)."""
    transport = _transport(plane)
    stuck, fine = Copy("reg", 0, 0), Copy("reg", 1, 0)
    transport.call(stuck, "progress", timeout=2)
    transport.call(fine, "progress", timeout=2)
    release = plane.stuck[stuck] = threading.Event()
    try:
        p_stuck, p_fine = transport.submit(stuck, "progress"), transport.submit(fine, "progress")
        time.sleep(0.05)
        t0 = time.monotonic()
        done = transport.ready([p_stuck, p_fine], 0.3)
        assert done == [p_fine] and time.monotonic() - t0 >= 0.25
    finally:
        release.set()


def test_a_dead_copy_fails_as_unavailable(plane):
    transport = _transport(plane)
    owner = Copy("reg", 0, 0)
    transport.call(owner, "progress", timeout=2)
    plane.fake.down(owner)
    with pytest.raises(UnavailableError):
        transport.call(owner, "read", "a", None, timeout=2)


def test_a_pool_holding_an_earlier_secret_reads_the_new_one_when_refused(plane):
    """Another start() of the system made a new secret; a process that kept the old one is refused
    once, reads the secret again, and goes on directly."""
    secrets_read = [os.urandom(32), SECRET]
    pool = DirectPool(lambda: secrets_read.pop(0) if secrets_read else SECRET)
    transport = DirectTransport(plane.fake, pool, lookup=plane.lookup)
    assert isinstance(transport.call(Copy("reg", 0, 0), "progress", timeout=2), Progress)
    stats = transport.transport_stats()
    assert stats["refused"] == 1 and stats["connects"] == 1 and stats["fallback"] == 0


def test_tls_both_ways_and_a_peer_outside_the_cluster_ca_is_refused(plane, tmp_path):
    """transport.tls_*: the endpoint speaks TLS only and both sides must present a certificate of
    the cluster's CA. A plaintext peer, or one with another CA's certificate, is closed (counted
    ``tls``); the calls of a client with the right one go direct, encrypted."""
    from erlmcp_ray.direct import client_context, server_context
    from tests.tls import make_certs

    ours, theirs = make_certs(tmp_path / "ours"), make_certs(tmp_path / "theirs")
    owner = Copy("reg", 0, 0)
    plane.servers[owner].close()
    tls_server = DirectServer(SECRET, lambda m, a: plane.fake.call(owner, m, *a, timeout=5), tls=server_context(ours))
    plane.servers[owner], plane.endpoints[owner] = tls_server, tls_server.address
    try:
        good = _transport(plane, tls=client_context(ours))
        assert isinstance(good.call(owner, "progress", timeout=5), Progress)
        assert good.transport_stats()["direct"] == 1
        plain = _transport(plane)
        assert isinstance(plain.call(owner, "progress", timeout=5), Progress)  # over the fallback
        assert plain.transport_stats()["fallback"] == 1
        stranger = _transport(plane, tls=client_context(theirs))
        assert isinstance(stranger.call(owner, "progress", timeout=5), Progress)  # over the fallback
        stats = stranger.transport_stats()
        assert stats["fallback"] == 1 and stats["refused"] == 1
        wait_for(lambda: tls_server.closed.get("tls", 0) >= 2, what="both refusals counted")
        # what crosses the wire is not msgpack: a raw look at the first bytes of the server's answer
        raw = socket.create_connection(tls_server.address, timeout=5)
        raw.sendall(b"\x16\x03\x01\x00\x05hello")  # not a valid ClientHello: the server alerts or closes
        raw.settimeout(5)
        first = raw.recv(64)
        assert not first.startswith(b"\x93\xaderlmcp-direct")  # never the plaintext greeting
        raw.close()
    finally:
        tls_server.close()
