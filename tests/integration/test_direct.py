"""The direct data plane on a real Ray (issue 14): every shard copy serves a socket endpoint beside
its actor; clients' reads and writes go over it, authenticated with the secret ``start()`` put in
Ray's key-value store; everything else stays a Ray call. ``transport.kind = "ray"`` turns it off.

Shows: the data path really goes direct (both sides count it); the endpoint refuses a wrong secret,
garbage, an oversized frame and a request before the handshake -- closing that connection only,
counting why, while the copy keeps serving its clients; a killed copy (Ray restarts it on a new
port) is found again; a new ``start()`` in the namespace has a new secret."""

from __future__ import annotations

import os
import socket
import time

import msgpack
import pytest
import ray

import erlmcp_ray
from erlmcp_ray import _ray
from erlmcp_ray.actors.options import shard_name
from erlmcp_ray.direct import DirectConnection, ProtocolError, secret_key
from erlmcp_ray.testing import kill_actor
from tests.conftest import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "t_direct"


def _cfg(**transport) -> dict:
    return {"domains": {"reg": {"backend": "replicated", "replication_factor": 2, "shards": 1, "max_bytes": "10MB"}},
            "client": {"poll_timeout_s": 0.5, "call_timeout_s": 20.0},
            **({"transport": transport} if transport else {})}


@pytest.fixture(scope="module")
def system(ray_local):
    sysm = erlmcp_ray.start(_cfg(max_frame="256KiB"), namespace=NS)
    yield sysm
    erlmcp_ray.shutdown(NS)


def _actor(slot: int, ns: str = NS):
    return ray.get_actor(shard_name("reg", 0, slot), namespace=ns)


def _direct_stats(slot: int, ns: str = NS) -> dict | None:
    return ray.get(_actor(slot, ns).stats.remote(), timeout=30)["direct"]


def _endpoint(slot: int, ns: str = NS) -> tuple[str, int]:
    ep = ray.get(_actor(slot, ns).endpoint.remote(), timeout=30)
    return ep["host"], ep["port"]


def test_the_data_path_goes_over_the_endpoints(system):
    client = system.client()
    try:
        before = [_direct_stats(slot)["requests"] for slot in (0, 1)]
        for i in range(50):
            client.put("reg", f"k{i}", i, consistency="strong")
        assert [client.get("reg", f"k{i}", consistency="strong") for i in range(50)] == list(range(50))
        stats = client.stats()["transport"]
        assert stats["kind"] == "direct" and stats["fallback"] == 0 and stats["direct"] >= 100
        after = [_direct_stats(slot)["requests"] for slot in (0, 1)]
        assert after[0] - before[0] >= 100  # the owner: writes and strong reads
        assert after[1] - before[1] >= 50  # the replica: each strong write's apply, chained by the client
    finally:
        client.close()


def test_replication_rounds_go_over_the_endpoints(system):
    """The owner's replication rounds (deltas, and the heartbeats that keep a replica's staleness
    bound fresh) reach the replica over its endpoint: with no client call at all, the replica's
    direct requests grow; eventual writes reach it that way."""
    first = _direct_stats(1)["requests"]
    wait_for(lambda: _direct_stats(1)["requests"] >= first + 3, timeout=10, what="heartbeat syncs over the endpoint")
    client = system.client()
    try:
        for i in range(200):
            client.put("reg", f"ev{i}", i)
        client.flush(timeout=30)
        stats = ray.get([_actor(slot).stats.remote() for slot in (0, 1)], timeout=30)
        assert stats[0]["entries"] == stats[1]["entries"] >= 200
        # the owner's publications of those writes reached the coordinator over its endpoint too
        from erlmcp_ray.actors.options import COORDINATOR

        coordinator = ray.get(ray.get_actor(COORDINATOR, namespace=NS).stats.remote(), timeout=30)["direct"]
        assert coordinator["methods"].get("publish", 0) >= 1
        assert stats[0]["to_peers"]["fallback"] == 0 and stats[0]["to_peers"]["direct"] >= 3
    finally:
        client.close()


def test_the_copies_and_the_coordinator_collect_their_young_generation_less_often(system):
    """Their processes raise the collector's young-generation threshold (what decoding and applying
    write batches allocate made it run every few hundred ops); this test's process keeps its own."""
    import gc

    from erlmcp_ray.actors._process import GC_YOUNG
    from erlmcp_ray.actors.options import COORDINATOR

    stats = ray.get([_actor(slot).stats.remote() for slot in (0, 1)]
                    + [ray.get_actor(COORDINATOR, namespace=NS).stats.remote()], timeout=30)
    for s in stats:
        assert s["gc"]["threshold"][0] == GC_YOUNG and len(s["gc"]["collections"]) == 3
    assert gc.get_threshold()[0] != GC_YOUNG


def test_coherence_polls_and_waiting_invalidations_go_over_the_coordinators_endpoint(system):
    """The clients' long polls and a synchronous invalidate reach the coordinator over its endpoint
    (its coroutines answer there when done); the invalidation still waits for every holder. The
    clients of this process share one long poll (their PollHub): one answer reaches all three,
    one next poll acknowledges for all three."""
    from erlmcp_ray.actors.options import COORDINATOR

    coordinator = ray.get_actor(COORDINATOR, namespace=NS)
    holders = [system.client() for _ in range(3)]
    try:
        holders[0].put("reg", "inv", "v", consistency="strong")
        for h in holders:
            assert h.get("reg", "inv") == "v"  # cached now
        before = ray.get(coordinator.stats.remote(), timeout=30)["direct"]
        result = holders[0].coordinator.invalidate("reg", "inv")
        assert set(result.acked) >= {h.client_id for h in holders[1:]} and not result.missing
        after = ray.get(coordinator.stats.remote(), timeout=30)["direct"]
        assert after["methods"]["invalidate"] == before["methods"].get("invalidate", 0) + 1
        assert after["methods"]["poll_many"] >= before["methods"].get("poll_many", 0) + 1  # past it
        assert after["methods"].get("poll", 0) == before["methods"].get("poll", 0)  # none polled alone
        assert after["closed"] == {}
        assert all(h._cache.lookup("reg", "inv") is None for h in holders[1:])
        # the shared long poll has a connection of its own; close() leaves the hub (and ends the
        # poll in flight): a poll that just began does not hold close() up for its 0.5 s
        polls = [h.stats()["transport"]["polls"] for h in holders]
        assert all(p["connections"] == 1 and p["shared_by"] >= 3 for p in polls)
        holders[0].coordinator.invalidate("reg", "inv")
        for h in holders:
            t0 = time.monotonic()
            h.close()
            assert time.monotonic() - t0 < 0.2
    finally:
        for h in holders:
            h.close()


def test_transport_kind_ray_serves_no_endpoint(ray_local):
    ns = "t_direct_ray"
    sysm = erlmcp_ray.start(_cfg(kind="ray"), namespace=ns)
    try:
        client = sysm.client()
        client.put("reg", "a", 1, consistency="strong")
        assert client.get("reg", "a", consistency="strong") == 1
        assert client.stats()["transport"] == {"kind": "ray"}
        assert _direct_stats(0, ns) is None
        assert ray.get(_actor(0, ns).endpoint.remote(), timeout=30) is None
        client.close()
    finally:
        erlmcp_ray.shutdown(ns)


def test_transport_spin_us_busy_polls_for_the_copies_answers_never_the_coordinators(system):
    """transport.spin_us: a client's connections to the shard copies spin before they sleep (each
    wait either caught its answer spinning or missed it; how many are caught depends on the machine),
    its coherence polls to the coordinator never do; with 0 nothing spins."""
    def spins(sysm) -> tuple[dict, dict]:
        client = sysm.client()
        try:
            for i in range(20):
                client.put("reg", f"s{i}", i, consistency="strong")
                assert client.get("reg", f"s{i}", consistency="strong") == i
            stats = client.stats()["transport"]
            return stats["spins"], stats["polls"]["spins"]
        finally:
            client.close()

    copies, polls = spins(system)
    assert copies["hit"] + copies["miss"] > 0, copies
    assert polls == {"hit": 0, "miss": 0}
    ns = "t_direct_nospin"
    quiet = erlmcp_ray.start(_cfg(spin_us=0), namespace=ns)
    try:
        assert spins(quiet) == ({"hit": 0, "miss": 0}, {"hit": 0, "miss": 0})
    finally:
        erlmcp_ray.shutdown(ns)


def test_a_wrong_secret_is_refused_and_counted(system):
    before = _direct_stats(0)["closed"].get("bad_secret", 0)
    with pytest.raises(ProtocolError, match="refused"):
        DirectConnection(_endpoint(0), os.urandom(32))
    wait_for(lambda: _direct_stats(0)["closed"].get("bad_secret", 0) == before + 1, what="the refusal counted")
    secret = _ray.kv_get(secret_key(NS))
    conn = DirectConnection(_endpoint(0), secret)  # the system's secret is taken
    assert conn.call("ping", timeout=10) >= 1
    conn.close()


def _raw(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.recv(4096)  # the server's greeting
    return sock


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    return True


def test_garbage_and_requests_before_the_handshake_close_only_that_connection(system):
    client = system.client()
    try:
        client.put("reg", "steady", 0, consistency="strong")
        before = dict(_direct_stats(0)["closed"])
        bad = _raw(_endpoint(0))
        bad.sendall(b"\xc1" * 64)  # 0xc1: never valid msgpack
        assert _closed(bad)
        early = _raw(_endpoint(0))
        early.sendall(msgpack.packb([0, 1, "read", ["steady", None]]))  # a request, no handshake
        assert _closed(early)
        rng = __import__("random").Random(7)
        for _ in range(20):  # random bytes: each connection closed or left waiting, never a crash
            s = _raw(_endpoint(0))
            s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
            s.close()
        closed = _direct_stats(0)["closed"]
        assert closed.get("malformed", 0) >= before.get("malformed", 0) + 1
        assert closed.get("unauthenticated", 0) >= before.get("unauthenticated", 0) + 1
        # the copy kept serving its client, on its own connection, all along
        for i in range(20):
            client.put("reg", "steady", i, consistency="strong")
        assert client.get("reg", "steady", consistency="strong") == 19
        assert client.stats()["transport"]["broken"] == 0
    finally:
        client.close()


def test_transport_max_frame_cuts_a_larger_frame_and_the_client_sends_such_a_call_over_ray(system):
    """max_frame = 256 KiB here: a 300 KB frame from a peer closes its connection (counted
    ``oversized``); a 100 KB one is served. The client never sends a larger one: a 300 KB value
    goes over Ray."""
    secret = _ray.kv_get(secret_key(NS))
    conn = DirectConnection(_endpoint(0), secret, max_frame=1 << 30)
    assert conn.call("find", None, "x" * 100_000, timeout=10) == []  # a 100 KB request: served
    before = _direct_stats(0)["closed"].get("oversized", 0)
    with pytest.raises(ConnectionError):
        conn.call("find", None, "x" * 300_000, timeout=10)
    assert _direct_stats(0)["closed"].get("oversized", 0) == before + 1
    client = system.client()
    try:
        fallback = client.stats()["transport"]["fallback"]
        client.put("reg", "big", "v" * 300_000, consistency="strong")
        assert client.get("reg", "big", consistency="strong") == "v" * 300_000
        assert client.stats()["transport"]["fallback"] > fallback
    finally:
        client.close()


def test_a_killed_copy_is_reached_again_on_its_new_endpoint(system):
    client = system.client()
    try:
        client.put("reg", "r", 0, consistency="strong")
        old = _endpoint(1)
        kill_actor(NS, shard_name("reg", 0, 1))  # the replica: Ray restarts it, listening elsewhere
        wait_for(lambda: _try_endpoint(1) not in (None, old), timeout=60, what="the restarted replica's endpoint")
        for i in range(1, 30):
            client.put("reg", "r", i, consistency="strong")
            time.sleep(0.01)
        assert client.get("reg", "r", consistency="strong") == 29
        stats = client.stats()["transport"]
        assert stats["broken"] >= 1  # the old connection broke; a new one was made
        wait_for(lambda: _direct_stats(1)["requests"] > 0, timeout=30, what="the new replica served directly")
    finally:
        client.close()


def _try_endpoint(slot: int):
    try:
        return _endpoint(slot)
    except Exception:  # noqa: BLE001 - restarting
        return None


def test_a_new_start_has_a_new_secret(ray_local):
    ns = "t_direct_restart"
    erlmcp_ray.start(_cfg(), namespace=ns)
    first = _ray.kv_get(secret_key(ns))
    client = erlmcp_ray.connect(ns)
    client.put("reg", "a", 1, consistency="strong")
    client.close()
    erlmcp_ray.shutdown(ns)
    assert _ray.kv_get(secret_key(ns)) is None  # shutdown removed it
    erlmcp_ray.start(_cfg(), namespace=ns)
    try:
        second = _ray.kv_get(secret_key(ns))
        assert second and second != first
        client = erlmcp_ray.connect(ns)
        client.put("reg", "a", 2, consistency="strong")
        assert client.get("reg", "a", consistency="strong") == 2
        assert client.stats()["transport"]["fallback"] == 0
        client.close()
    finally:
        erlmcp_ray.shutdown(ns)


def test_transport_tls_encrypts_the_data_plane_and_refuses_plaintext(ray_local, tmp_path):
    """With transport.tls_cert/key/ca the copies' endpoints speak (mutual) TLS only: the clients'
    data path still goes direct, a plaintext connection is closed and counted ``tls``."""
    from tests.tls import make_certs

    ns = "t_direct_tls"
    certs = make_certs(tmp_path)
    sysm = erlmcp_ray.start(_cfg(tls_cert=certs["cert"], tls_key=certs["key"], tls_ca=certs["ca"]), namespace=ns)
    try:
        client = sysm.client()
        for i in range(20):
            client.put("reg", f"k{i}", i, consistency="strong")
        assert [client.get("reg", f"k{i}", consistency="strong") for i in range(20)] == list(range(20))
        stats = client.stats()["transport"]
        assert stats["fallback"] == 0 and stats["direct"] >= 40
        from erlmcp_ray.actors.options import COORDINATOR

        # the coherence polls too: the coordinator's endpoint (on its event loop) speaks TLS
        coordinator = ray.get(ray.get_actor(COORDINATOR, namespace=ns).stats.remote(), timeout=30)["direct"]
        assert coordinator["requests"] >= 1 and coordinator["closed"] == {}
        client.close()
        secret = _ray.kv_get(secret_key(ns))
        with pytest.raises((ConnectionError, ProtocolError, OSError)):
            DirectConnection(_endpoint(0, ns), secret, timeout=5)  # the right secret, no TLS: not served
        wait_for(lambda: _direct_stats(0, ns)["closed"].get("tls", 0) >= 1, what="the plaintext peer counted")
    finally:
        erlmcp_ray.shutdown(ns)
