"""The durable stores against their contract and their faults: SQLite files in tmp_path, and a
redis-server of the test's own (tests/redis_server.py) — no mocks."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

import pytest
import redis

from erlmcp_ray.config import DurableConfig
from erlmcp_ray.core import record as R
from erlmcp_ray.errors import CorruptDataError, StaleEpochError, UnavailableError
from erlmcp_ray.storage import RedisStore, SQLiteStore, _redis, open_store
from erlmcp_ray.testing import check_store
from tests.redis_server import RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


def _rec(value: bytes, hlc: int = 1) -> bytes:
    return R.pack({0: hlc}, hlc, 0, value)


# ---------------------------------------------------------------------------- the contract
def test_sqlite_store_meets_the_contract(tmp_path):
    paths = iter(tmp_path / f"s{i}.db" for i in range(100))
    last = {}

    def factory():
        last["path"] = next(paths)
        return SQLiteStore(last["path"])

    def reopen(store):
        store.close()
        return SQLiteStore(store.path)

    check_store(factory, reopen)


def test_redis_store_meets_the_contract(redis_server):
    prefixes = iter(f"contract{i}" for i in range(100))

    def factory():
        return RedisStore(redis_server.url, prefix=next(prefixes))

    def reopen(store):
        store.close()
        return RedisStore(redis_server.url, prefix=store._prefix)

    check_store(factory, reopen)


def test_open_store_follows_the_config(tmp_path, redis_server, monkeypatch):
    s = open_store(DurableConfig(kind="sqlite", data_dir=str(tmp_path)), "ns1")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "ns1.db"
    s.close()
    s = open_store(DurableConfig(kind="sqlite", path=str(tmp_path / "x" / "f.db")), "ns1")
    assert s.path == tmp_path / "x" / "f.db"
    s.close()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # "~" is the opening process's home, not a directory "~"
    s = open_store(DurableConfig(kind="sqlite", data_dir="~/data"), "ns1")
    assert s.path == tmp_path / "home" / "data" / "ns1.db"
    s.close()
    r = open_store(DurableConfig(kind="redis", redis_url=redis_server.url), "ns2")
    r.write_batch("d", 0, 1, [("k", _rec(b"\x01"))])
    assert redis.Redis.from_url(redis_server.url).exists("erlmcp:ns2:{d:0}:records")
    r.purge()
    r.close()
    assert open_store(DurableConfig(kind="none"), "ns") is None


# ---------------------------------------------------------------------------- corruption
def test_a_corrupt_sqlite_row_is_an_error_naming_shard_key_and_file(tmp_path):
    path = tmp_path / "c.db"
    s = SQLiteStore(path)
    s.write_batch("session", 1, 1, [("good", _rec(b"\x01")), ("bad", _rec(b"\x02"))])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE records SET record = ? WHERE key = 'bad'", (b"garbage",))
    with pytest.raises(CorruptDataError, match=r"session/1 key 'bad'.*c\.db"):
        s.load_shard("session", 1)
    s.close()


def test_a_corrupt_redis_value_is_an_error_naming_shard_and_key(redis_server):
    s = RedisStore(redis_server.url, prefix="corrupt")
    s.write_batch("session", 0, 1, [("good", _rec(b"\x01")), ("bad", _rec(b"\x02"))])
    redis.Redis.from_url(redis_server.url).hset("corrupt:{session:0}:records", "bad", b"\x00\x00\x00\x01xyz")
    with pytest.raises(CorruptDataError, match=r"session/0 key 'bad'"):
        s.load_shard("session", 0)
    s.purge()
    s.close()


# ---------------------------------------------------------------------------- Redis load_shard's reading
def _odd_records(n: int) -> dict[str, bytes]:
    """Keys and records of many lengths (0..300 bytes: 1-, 2- and 3-digit RESP headers), records
    holding RESP-looking bytes, non-ASCII keys."""
    out = {}
    for i in range(n):
        key = f"k{i}" if i % 3 else f"ключ-{i}-" + "x" * (i % 120)
        out[key] = _rec(b"\r\n$12\r\n*2\r\n" * (i % 20) + bytes([i % 256]) * (i % 7), i + 1)
    return out


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_load_shard_reads_every_record_over_many_hscan_steps(redis_server, monkeypatch, protocol):
    monkeypatch.setattr(_redis, "_SCAN_COUNT", 500)  # many steps
    r = redis.Redis.from_url(redis_server.url, protocol=protocol)
    s = RedisStore(redis_server.url, prefix=f"scan-resp{protocol}", client=r)
    want = _odd_records(5000)
    s.write_batch("d", 0, 3, list(want.items()))
    s.write_batch("d", 1, 1, [("one", _rec(b"\x01"))])
    for _ in range(2):
        image = s.load_shard("d", 0)
        assert image.epoch == 3 and image.records == want
        assert s.load_shard("d", 1).records == {"one": _rec(b"\x01")}
        assert s.load_shard("d", 2).records == {} and s.epoch("d", 0) == 3
    s.purge()
    s.close()


@pytest.mark.parametrize("bad", [b"\x00\x00\x00\x01xyz", b"\x01\x02", b""])
def test_a_corrupt_redis_value_among_many_is_named_and_the_store_serves_on(redis_server, monkeypatch, bad):
    monkeypatch.setattr(_redis, "_SCAN_COUNT", 300)
    s = RedisStore(redis_server.url, prefix="corrupt-many")
    want = _odd_records(2000)
    s.write_batch("session", 0, 1, list(want.items()))
    redis.Redis.from_url(redis_server.url).hset("corrupt-many:{session:0}:records", "k1000", bad)
    with pytest.raises(CorruptDataError, match=r"session/0 key 'k1000'"):
        s.load_shard("session", 0)
    s.write_batch("session", 0, 1, [("k1000", want["k1000"])])  # repaired
    assert s.load_shard("session", 0).records == want
    s.purge()
    s.close()


def test_a_sqlite_file_that_is_not_a_database_is_refused_clearly(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises((CorruptDataError, UnavailableError), match="junk.db"):
        SQLiteStore(path).load_shard("d", 0)


# ---------------------------------------------------------------------------- epochs across processes
def test_two_sqlite_connections_of_different_epochs_racing_on_one_shard(tmp_path):
    """Two store objects on one file (two owners' processes would each open their own)."""
    path = tmp_path / "race.db"
    old, new = SQLiteStore(path), SQLiteStore(path)
    results: list[bool] = []  # per write of the deposed owner: accepted?
    started = threading.Event()

    def deposed():
        # Until refused 20 times (not a fixed count: on a loaded machine a fixed count of writes
        # could all be done before the fence, and the race this test is about would never happen).
        deadline = time.monotonic() + 60
        for i in itertools.count():
            if time.monotonic() > deadline:
                return
            try:
                old.write_batch("d", 0, 1, [("k", _rec(b"old", i + 1))])
                results.append(True)
            except StaleEpochError:
                results.append(False)
                if results.count(False) >= 20:
                    return
            if i == 20:
                started.set()

    t = threading.Thread(target=deposed)
    t.start()
    assert started.wait(30)
    new.fence("d", 0, 2)
    for j in range(50):
        new.write_batch("d", 0, 2, [("k", _rec(b"new", 1000 + j))])
    t.join(60)
    assert SQLiteStore(path).load_shard("d", 0).records["k"] == _rec(b"new", 1049)
    first_refused = results.index(False)
    assert first_refused >= 20 and not any(results[first_refused:]), "once refused, every later write is refused"
    old.close()
    new.close()


# ---------------------------------------------------------------------------- unreachable, killed
def test_an_unreachable_redis_is_a_clear_error_naming_the_url_without_password():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(UnavailableError, match=r"redis://\*\*\*@127\.0\.0\.1") as info:
        RedisStore(url, connect_timeout_s=0.5)
    assert "s3cret" not in str(info.value)


def test_a_killed_redis_fails_writes_as_unavailable_and_serves_again_after_restart(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        s = RedisStore(server.url, prefix="kill", timeout_s=2.0)
        s.write_batch("d", 0, 1, [("k", _rec(b"\x01"))])
        server.kill()
        with pytest.raises(UnavailableError):
            s.write_batch("d", 0, 1, [("k", _rec(b"\x02"))])
        server.start()  # same port and directory: the append-only file brings the data back
        assert s.load_shard("d", 0).records == {"k": _rec(b"\x01")}, "an unacknowledged write was stored"
        s.write_batch("d", 0, 1, [("k", _rec(b"\x03"))])
        assert s.load_shard("d", 0).records == {"k": _rec(b"\x03")}
        s.close()
    finally:
        server.kill()


def test_an_unwritable_sqlite_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnavailableError, match="cannot open the SQLite store"):
        SQLiteStore(blocker / "sub" / "x.db")  # a directory under a file cannot be made


@pytest.mark.parametrize("prefix", ["glob*", "glob?", "glob[ab]", "glob\\"])
def test_purge_deletes_only_its_own_prefix_even_with_glob_characters(redis_server, prefix):
    """A namespace is free text: purging "glob*" must not take "globber"'s keys (SCAN MATCH is a glob)."""
    mine = RedisStore(redis_server.url, prefix=prefix)
    neighbours = [RedisStore(redis_server.url, prefix=p) for p in ("globber", "globa", "glob\\x")]
    try:
        for s in (mine, *neighbours):
            s.write_batch("d", 0, 1, [("k", b"v")])
            s.put_blob("b", b"x")
        mine.purge()
        assert mine.shards() == [] and mine.list_blobs() == []
        for s in neighbours:
            assert s.shards() == [("d", 0)] and s.get_blob("b") == b"x", s
    finally:
        for s in (mine, *neighbours):
            s.purge()
            s.close()
