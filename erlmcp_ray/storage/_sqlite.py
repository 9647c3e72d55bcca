"""``SQLiteStore``: the embedded durable tier (one machine needs nothing else).

One database file in WAL mode (readers do not block the writer; ``synchronous=NORMAL`` is
durable against a process crash, and ``FULL`` — the ``synchronous`` argument — against power
loss). A batch is one ``BEGIN IMMEDIATE`` transaction: the epoch check and the writes are one
atomic step, and concurrent writers of one file (other processes too) are serialised by
SQLite's own lock, waited for up to ``busy_timeout_s``.

Tables: ``shards(domain, shard, epoch)``, ``records(domain, shard, key, record, crc)`` and
``blobs(name, data, crc)``, each keyed by its identity (``WITHOUT ROWID``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from erlmcp_ray.errors import CorruptDataError, StaleEpochError, UnavailableError
from erlmcp_ray.storage._protocol import ShardImage, checked, crc

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    domain TEXT NOT NULL, shard INTEGER NOT NULL, epoch INTEGER NOT NULL,
    PRIMARY KEY (domain, shard)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    domain TEXT NOT NULL, shard INTEGER NOT NULL, key TEXT NOT NULL, record BLOB NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (domain, shard, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    name TEXT PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID;
"""


class SQLiteStore:
    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL", busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.location = f"sqlite:{self.path}"
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise UnavailableError(f"cannot open the SQLite store {self.path}: {exc}") from exc
        self._lock = threading.Lock()  # one connection: calls from several threads take turns

    # ------------------------------------------------------------------ shards
    def write_batch(self, domain: str, shard: int, epoch: int, records: list[tuple[str, bytes]],
                    deletes: list[str] = ()) -> int:
        with self._transaction() as db:
            current = self._fence(db, domain, shard, epoch)
            if records:
                db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
                               [(domain, shard, key, rec, crc(rec)) for key, rec in records])
            if deletes:
                db.executemany("DELETE FROM records WHERE domain = ? AND shard = ? AND key = ?",
                               [(domain, shard, key) for key in deletes])
            return current

    def fence(self, domain: str, shard: int, epoch: int) -> int:
        with self._transaction() as db:
            return self._fence(db, domain, shard, epoch)

    def _fence(self, db: sqlite3.Connection, domain: str, shard: int, epoch: int) -> int:
        row = db.execute("SELECT epoch FROM shards WHERE domain = ? AND shard = ?", (domain, shard)).fetchone()
        current = 0 if row is None else row[0]
        if epoch < current:
            raise StaleEpochError(f"{domain}/{shard}: a write of epoch {epoch} refused by {self.location}, "
                                  f"which is fenced at epoch {current}", epoch=epoch, current=current)
        if epoch > current:
            db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)", (domain, shard, epoch))
        return epoch

    def epoch(self, domain: str, shard: int) -> int:
        with self._lock:
            row = self._query("SELECT epoch FROM shards WHERE domain = ? AND shard = ?", (domain, shard)).fetchone()
        return 0 if row is None else row[0]

    def load_shard(self, domain: str, shard: int) -> ShardImage:
        with self._lock:
            row = self._query("SELECT epoch FROM shards WHERE domain = ? AND shard = ?", (domain, shard)).fetchone()
            rows = self._query("SELECT key, record, crc FROM records WHERE domain = ? AND shard = ?",
                               (domain, shard)).fetchall()
        image = ShardImage(0 if row is None else row[0])
        for key, rec, stored in rows:
            image.records[key] = checked(bytes(rec), stored, f"{domain}/{shard} key {key!r}", self.location)
        return image

    def shards(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._query("SELECT domain, shard FROM shards UNION SELECT DISTINCT domain, shard FROM records "
                               "ORDER BY 1, 2").fetchall()
        return [(d, s) for d, s in rows]

    # ------------------------------------------------------------------- blobs
    def put_blob(self, name: str, data: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (name, data, crc(data)))

    def get_blob(self, name: str) -> bytes | None:
        with self._lock:
            row = self._query("SELECT data, crc FROM blobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else checked(bytes(row[0]), row[1], f"blob {name!r}", self.location)

    def list_blobs(self, prefix: str = "") -> list[str]:
        with self._lock:
            rows = self._query("SELECT name FROM blobs WHERE substr(name, 1, ?) = ? ORDER BY name",
                               (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows]

    def delete_blob(self, name: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM blobs WHERE name = ?", (name,)).rowcount > 0

    # ---------------------------------------------------------------- lifecycle
    def purge(self) -> None:
        with self._transaction() as db:
            for table in ("records", "shards", "blobs"):
                db.execute(f"DELETE FROM {table}")  # fixed table names, no user input

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # ---------------------------------------------------------------- plumbing
    def _query(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.location) from exc

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under the store's lock; rolled back on any error."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        try:
            self._store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._store._lock.release()
            raise _translate(exc, self._store.location) from exc
        return self._store._db

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        db = self._store._db
        try:
            if exc is None:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as err:
                    db.execute("ROLLBACK")
                    raise _translate(err, self._store.location) from err
            else:
                db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc, self._store.location) from exc
        finally:
            self._store._lock.release()


def _translate(exc: sqlite3.Error, location: str) -> Exception:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return CorruptDataError(f"the SQLite file {location} is corrupt: {text}", where=location)
    # locked past busy_timeout, disk full, read-only file, I/O error: the store cannot take writes now
    return UnavailableError(f"SQLite store {location}: {type(exc).__name__}: {text}")
