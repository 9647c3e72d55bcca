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

Loading a shard reads the records hash with redis-py's ``hscan`` (``_SCAN_COUNT`` fields a step)
and compares the checksums of a step in one go (C-level ``map`` over ``zlib.crc32``; a mismatch is
then looked up record by record to name the key). redis-py parses the replies with hiredis, a
dependency it picks up by itself: its pure-Python parser costs ~2 µs per field and was most of a
1,000,000-entry reload. Any client works (plain, Redis Cluster, client-side cache), with the same
checks.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import redis as redis_py

from erlmcp_ray.errors import StaleEpochError, UnavailableError
from erlmcp_ray.storage._protocol import ShardImage, checked, crc

__all__ = ["RedisStore"]

_CRC = struct.Struct(">I")
_SCAN_COUNT = 20_000  # HSCAN COUNT of load_shard: ~20 ms of the server's time a step at 1M fields

# A step of a load: the keys (bytes), the records (bytes, CRC stripped) and their 4-byte stored
# CRCs (shorter when a stored value is shorter than a CRC: then its whole value, and an empty record).
_Chunk = tuple[list[bytes], list[bytes], list[bytes]]

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
        try:
            for keys, recs, crcs in self._hscan(records_key):
                stored = b"".join(crcs)
                if len(stored) != 4 * len(crcs) or \
                        list(map(zlib.crc32, recs)) != list(struct.unpack(f">{len(crcs)}I", stored)):
                    self._raise_corrupt(domain, shard, records_key, keys, recs, crcs)
                records.update(zip(map(bytes.decode, keys), recs))
        except redis_py.exceptions.RedisError as exc:
            raise UnavailableError(f"Redis store {self.location}: {exc}") from exc
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

    def _hscan(self, records_key: str) -> Iterator[_Chunk]:
        """The records hash, a chunk per HSCAN step (a field may come twice, as HSCAN allows)."""
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
            # SCAN MATCH is a glob: the prefix (a namespace, free text) is matched literally.
            for key in self._r.scan_iter(match=f"{_glob_escape(self._prefix)}:*", count=1000):
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


def _glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern matching only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
