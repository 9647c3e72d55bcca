"""``RedisStore``: the durable tier on Redis (one server or a Redis Cluster), with redis-py.

Layout, under a prefix (default ``erlmcp``; put the system's namespace in it to share a server):

    {prefix}:{<domain>:<shard>}:records   hash: key -> 4-byte CRC-32 + packed record
    {prefix}:{<domain>:<shard>}:epoch     the shard's epoch
    {prefix}:shards                       set of "<domain>\\x00<shard>" (an index for shards())
    {prefix}:blob:<name>                  4-byte CRC-32 + the blob;  {prefix}:blobs  set of names

The two keys of a shard share a hash tag (the part in braces), so they live in one Redis Cluster
slot and one Lua script can touch both: the epoch check and the writes of a batch are one atomic
step on the server. Batches larger than ``chunk`` records are sent as several such steps (each
checked against the epoch), pipelined. Password and TLS come from the URL (``rediss://``).

Loading a shard reads the records hash with HSCAN (``_SCAN_COUNT`` fields a step). redis-py's pure
Python reply parser costs ~2 µs per field and was most of a 1,000,000-entry reload, so on a
plain ``redis.Redis`` client (RESP2 or RESP3) ``load_shard`` borrows a pool connection
and reads the replies off its socket with a parser of its own (``_read_hscan``): the request for
the next step is sent before the current reply is parsed, so Redis builds it meanwhile, and the
checksums of a step are compared in one go (C-level ``map`` over ``zlib.crc32``; a mismatch is then
looked up record by record to name the key). Any other client (Redis Cluster, a client-side
cache) takes redis-py's ``hscan``, with the same checks.
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Any, Generator, Iterator

import redis as redis_py

from erlmcp_ray.errors import StaleEpochError, UnavailableError
from erlmcp_ray.storage._protocol import ShardImage, checked, crc

__all__ = ["RedisStore"]

_CRC = struct.Struct(">I")
_SCAN_COUNT = 20_000  # HSCAN COUNT of load_shard: ~20 ms of the server's time a step at 1M fields
_RECV = 1 << 20

# A chunk of a load: the keys (bytes), the records (bytes, CRC stripped) and their 4-byte stored
# CRCs (shorter when a stored value is shorter than a CRC: then its whole value, and an empty record).
_Chunk = tuple[list[bytes], list[bytes], list[bytes]]

# RESP bulk-string headers of lengths 0..99 by their first 4 bytes: (offset of the data, of its end).
# "$7\r\n" is complete in 4 bytes; "$42\r" is followed by "\n". Anything else is parsed in full.
_BULK_HEAD = {b"$%d\r\n" % n: (4, 4 + n) for n in range(10)}
_BULK_HEAD.update({b"$%d\r" % n: (5, 5 + n) for n in range(10, 100)})
_InvalidResponse = redis_py.exceptions.InvalidResponse  # a reply the fast path does not expect

# KEYS[1] epoch key, KEYS[2] records hash. ARGV[1] the writer's epoch, ARGV[2] n, then n key/value
# pairs, then the keys to delete. Refuses a lower epoch, raises the stored one to a higher.
_WRITE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = tonumber(ARGV[1])
if epoch < cur then return redis.error_reply('STALE_EPOCH ' .. cur) end
if epoch > cur then redis.call('SET', KEYS[1], ARGV[1]) end
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 3, 2 + 2 * n)) end
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[2], unpack(ARGV, 3 + 2 * n, #ARGV)) end
return epoch
"""


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "erlmcp", chunk: int = 1000, connect_timeout_s: float = 5.0,
                 timeout_s: float = 30.0, client: Any = None) -> None:
        self.location = _redact(url)
        self._prefix = prefix
        self._chunk = chunk
        try:
            self._r = client or redis_py.Redis.from_url(url, socket_connect_timeout=connect_timeout_s,
                                                         socket_timeout=timeout_s)
            self._r.ping()
        except (redis_py.exceptions.RedisError, ValueError, OSError) as exc:
            raise UnavailableError(f"cannot reach the Redis store at {self.location}: {exc}") from exc
        self._write = self._r.register_script(_WRITE)

    # ------------------------------------------------------------------ keys
    def _shard_keys(self, domain: str, shard: int) -> list[str]:
        tag = f"{self._prefix}:{{{domain}:{shard}}}"
        return [f"{tag}:epoch", f"{tag}:records"]

    # ---------------------------------------------------------------- shards
    def write_batch(self, domain: str, shard: int, epoch: int, records: list[tuple[str, bytes]],
                    deletes: list[str] = ()) -> int:
        keys = self._shard_keys(domain, shard)
        steps: list[list] = []
        for i in range(0, max(len(records), 1), self._chunk):
            part = records[i : i + self._chunk]
            args: list = [epoch, len(part)]
            for key, rec in part:
                args += [key, _CRC.pack(crc(rec)) + rec]
            steps.append(args)
        for i in range(0, len(deletes), self._chunk):
            steps.append([epoch, 0, *deletes[i : i + self._chunk]])
        try:
            pipe = self._r.pipeline(transaction=False)
            for args in steps:
                self._write(keys=keys, args=args, client=pipe)
            pipe.sadd(f"{self._prefix}:shards", f"{domain}\x00{shard}")
            results = pipe.execute(raise_on_error=False)
        except redis_py.exceptions.RedisError as exc:
            raise UnavailableError(f"Redis store {self.location}: {exc}") from exc
        for result in results:
            if isinstance(result, Exception):
                raise self._error(result, domain, shard, epoch)
        return epoch

    def fence(self, domain: str, shard: int, epoch: int) -> int:
        try:
            self._write(keys=self._shard_keys(domain, shard), args=[epoch, 0])
            self._r.sadd(f"{self._prefix}:shards", f"{domain}\x00{shard}")
        except redis_py.exceptions.RedisError as exc:
            raise self._error(exc, domain, shard, epoch) from exc
        return epoch

    def _error(self, exc: Exception, domain: str, shard: int, epoch: int) -> Exception:
        text = str(exc)
        if "STALE_EPOCH" in text:
            current = int(text.rsplit(" ", 1)[-1])
            return StaleEpochError(f"{domain}/{shard}: a write of epoch {epoch} refused by {self.location}, "
                                   f"which is fenced at epoch {current}", epoch=epoch, current=current)
        return UnavailableError(f"Redis store {self.location}: {text}")

    def epoch(self, domain: str, shard: int) -> int:
        value = self._call(self._r.get, self._shard_keys(domain, shard)[0])
        return 0 if value is None else int(value)

    def load_shard(self, domain: str, shard: int) -> ShardImage:
        records_key = self._shard_keys(domain, shard)[1]
        image = ShardImage(self.epoch(domain, shard))
        records = image.records
        chunks = self._scan_records(records_key)
        try:
            for keys, recs, crcs in chunks:
                stored = b"".join(crcs)
                if len(stored) != 4 * len(crcs) or \
                        list(map(zlib.crc32, recs)) != list(struct.unpack(f">{len(crcs)}I", stored)):
                    self._raise_corrupt(domain, shard, records_key, keys, recs, crcs)
                records.update(zip(map(bytes.decode, keys), recs))
        except redis_py.exceptions.RedisError as exc:
            raise UnavailableError(f"Redis store {self.location}: {exc}") from exc
        except OSError as exc:  # the socket of the fast path: reset, timed out, TLS error
            raise UnavailableError(f"Redis store {self.location}: {type(exc).__name__}: {exc}") from exc
        finally:
            chunks.close()  # on an error: gives back (or drops) the borrowed connection now
        return image

    def _raise_corrupt(self, domain: str, shard: int, records_key: str, keys: list[bytes], recs: list[bytes],
                       crcs: list[bytes]) -> None:
        """A chunk failed its checksums: raise ``CorruptDataError`` naming its first bad record."""
        for raw_key, rec, stored in zip(keys, recs, crcs):
            where = f"{domain}/{shard} key {raw_key.decode('utf-8')!r} ({records_key})"
            if len(stored) < 4:
                checked(stored, -1, where, self.location)  # raises CorruptDataError
            checked(rec, _CRC.unpack(stored)[0], where, self.location)
        raise AssertionError("a chunk failed its checksums but none of its records did")  # pragma: no cover

    def _scan_records(self, records_key: str) -> Iterator[_Chunk]:
        """The records hash, a chunk per HSCAN step (a field may come twice, as HSCAN allows)."""
        pool = getattr(self._r, "connection_pool", None) if type(self._r) is redis_py.Redis else None
        conn = None
        if pool is not None:
            try:
                conn = pool.get_connection()
            except TypeError:  # redis-py 5.0 wants a command name
                conn = pool.get_connection("HSCAN")
            if not isinstance(getattr(conn, "_sock", None), socket.socket):  # e.g. a client-side cache proxy
                pool.release(conn)
                conn = None
        if conn is None:
            yield from self._hscan(records_key)
            return
        clean = False
        try:
            clean = yield from _read_hscan(conn, records_key)
        finally:
            # Unread replies may be left on the socket, or redis-py missed a push message (RESP3)
            # meant for it: the connection is closed, and the pool opens a fresh one next time.
            if not clean:
                conn.disconnect()
            pool.release(conn)

    def _hscan(self, records_key: str) -> Iterator[_Chunk]:
        """With redis-py's own parser (any client)."""
        cursor = 0
        while True:
            cursor, fields = self._r.hscan(records_key, cursor, count=_SCAN_COUNT)
            keys = list(fields)
            values = list(fields.values())
            yield keys, [v[4:] for v in values], [v[:4] if len(v) >= 4 else v for v in values]
            if int(cursor) == 0:
                return

    def shards(self) -> list[tuple[str, int]]:
        members = self._call(self._r.smembers, f"{self._prefix}:shards")
        out = []
        for m in members:
            domain, _, shard = m.decode("utf-8").partition("\x00")
            out.append((domain, int(shard)))
        return sorted(out)

    # ----------------------------------------------------------------- blobs
    def put_blob(self, name: str, data: bytes) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(f"{self._prefix}:blob:{name}", _CRC.pack(crc(data)) + data)
        pipe.sadd(f"{self._prefix}:blobs", name)
        self._call(pipe.execute)

    def get_blob(self, name: str) -> bytes | None:
        value = self._call(self._r.get, f"{self._prefix}:blob:{name}")
        if value is None:
            return None
        where = f"blob {name!r}"
        if len(value) < 4:
            checked(value, -1, where, self.location)
        return checked(value[4:], _CRC.unpack_from(value)[0], where, self.location)

    def list_blobs(self, prefix: str = "") -> list[str]:
        names = (m.decode("utf-8") for m in self._call(self._r.smembers, f"{self._prefix}:blobs"))
        return sorted(n for n in names if n.startswith(prefix))

    def delete_blob(self, name: str) -> bool:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(f"{self._prefix}:blob:{name}")
        pipe.srem(f"{self._prefix}:blobs", name)
        deleted, _ = self._call(pipe.execute)
        return bool(deleted)

    # -------------------------------------------------------------- lifecycle
    def purge(self) -> None:
        """Delete every key under this store's prefix."""
        try:
            batch = []
            for key in self._r.scan_iter(match=f"{self._prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._r.unlink(*batch)
                    batch = []
            if batch:
                self._r.unlink(*batch)
        except redis_py.exceptions.RedisError as exc:
            raise UnavailableError(f"Redis store {self.location}: {exc}") from exc

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self._prefix!r})"

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis_py.exceptions.RedisError as exc:
            raise UnavailableError(f"Redis store {self.location}: {exc}") from exc


# ------------------------------------------------------------------ the fast read of load_shard
class _Socket:
    """Reads RESP2 or RESP3 replies off a connected socket, through one buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def more(self) -> None:
        data = self.sock.recv(_RECV)
        if not data:
            raise ConnectionResetError("connection closed by the server")
        self.buf = self.buf[self.pos :] + data
        self.pos = 0

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos : end]
                self.pos = end + 2
                if line[:1] == b"-":
                    raise redis_py.exceptions.ResponseError(line[1:].decode("utf-8", "replace"))
                return line
            self.more()

    def data(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n + 2:
            self.more()
        data = self.buf[self.pos : self.pos + n]
        self.pos += n + 2
        return data

    def bulk(self) -> bytes:
        head = self.line()
        if head[:1] != b"$":
            raise _InvalidResponse(f"expected a bulk string, got {head[:40]!r}")
        return self.data(int(head[1:]))

    def skip(self, head: bytes) -> None:
        """Read past the rest of the RESP2/RESP3 value whose first line is ``head``."""
        kind, n = head[:1], head[1:]
        if kind in b"$=!" and n != b"-1":  # bulk string, verbatim string, bulk error
            self.data(int(n))
        elif kind in b"*>~%|" and n != b"-1":  # array, push, set, map, attribute
            for _ in range(int(n) * (2 if kind in b"%|" else 1)):
                self.skip(self.line())
            if kind == b"|":  # an attribute precedes the value it is about
                self.skip(self.line())

    def fields(self, pairs: int) -> _Chunk:
        """``pairs`` field/value bulk strings: the keys, the values past their 4-byte CRC, the CRCs."""
        keys: list[bytes] = []
        recs: list[bytes] = []
        crcs: list[bytes] = []
        while pairs:
            self.pos, done = _parse_pairs(self.buf, self.pos, pairs, keys, recs, crcs)
            pairs -= done
            if pairs:
                self.more()
        return keys, recs, crcs


def _parse_pairs(buf: bytes, pos: int, pairs: int, keys: list, recs: list, crcs: list) -> tuple[int, int]:
    """Parse up to ``pairs`` complete field/value pairs from ``buf[pos:]``: (new position, pairs parsed).
    The hot loop of a reload (once per record), hence the table of short headers."""
    key_add, rec_add, crc_add = keys.append, recs.append, crcs.append
    find, head, n = buf.find, _BULK_HEAD.get, len(buf)
    for i in range(pairs):
        h = head(buf[pos : pos + 4])
        if h is None:
            end = find(b"\r\n", pos)
            if end < 0:
                return pos, i
            if buf[pos] != 36:  # "$"
                raise _InvalidResponse(f"expected a bulk string, got {buf[pos : pos + 40]!r}")
            ks = end + 2
            ke = ks + int(buf[pos + 1 : end])
        else:
            ks, ke = pos + h[0], pos + h[1]
        at = ke + 2
        h = head(buf[at : at + 4])
        if h is None:
            end = find(b"\r\n", at)
            if end < 0:
                return pos, i
            if buf[at] != 36:
                raise _InvalidResponse(f"expected a bulk string, got {buf[at : at + 40]!r}")
            vs = end + 2
            ve = vs + int(buf[at + 1 : end])
        else:
            vs, ve = at + h[0], at + h[1]
        if ve + 2 > n:
            return pos, i
        rs = vs + 4
        if rs > ve:
            rs = ve
        key_add(buf[ks:ke])
        rec_add(buf[rs:ve])
        crc_add(buf[vs:rs])
        pos = ve + 2
    return pos, pairs


def _read_hscan(conn: Any, records_key: str) -> Generator[_Chunk, None, bool]:
    """HSCAN the hash over ``conn``'s socket (RESP2 or RESP3), the next step requested before this
    one is parsed. Returns whether the socket was left as clean as it was found."""
    sock = conn._sock
    reader = _Socket(sock)

    def request(cursor: bytes) -> None:
        sock.sendall(b"".join(conn.pack_command("HSCAN", records_key, cursor, "COUNT", _SCAN_COUNT)))

    request(b"0")
    pushed = False
    while True:
        head = reader.line()
        while head[:1] == b">":  # a RESP3 push message (sent between replies, never within one)
            reader.skip(head)
            pushed = True
            head = reader.line()
        if head != b"*2":
            raise _InvalidResponse(f"an HSCAN reply is not a two-element array: {head[:40]!r}")
        cursor = reader.bulk()
        if cursor != b"0":
            request(cursor)
        count = reader.line()
        if count[:1] != b"*" or int(count[1:]) % 2:
            raise _InvalidResponse(f"an HSCAN reply holds {count[:40]!r} fields and values")
        yield reader.fields(int(count[1:]) // 2)
        if cursor == b"0":
            return reader.pos == len(reader.buf) and not pushed  # the connection can serve on
