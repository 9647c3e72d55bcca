"""Durable domains against same-run baselines (issue 10's "Measure").

Run:  python benchmarks/bench_durable.py [--entries 1000000] [--out benchmarks/results/durable.txt]

Starts a Ray of its own and, in fresh namespaces, two memory systems (durable tier on SQLite in a
temporary directory, and on the local Redis at 127.0.0.1:6379 under a fresh key prefix) with
domains ``mem`` (memory, one copy), ``disk`` (disk: one copy, write-through) and ``lazy``
(replicated, write_behind). Measures:

  strong put p50/p99 on mem, on disk/SQLite and on disk/Redis, beside a bare Ray actor round trip
  and redis-py SET, in the same run (target: the durable put <= 1.5x the memory domain's)
  eventual puts to the disk domain, sustained until flush() (every write in the store), beside
  redis-py pipelined SETs of the same values (target >= 50 %)
  reloading N entries into a shard (store.load_shard + ShardCopy.load_durable, in this process):
  SQLite and Redis (target <= 5 s for 1,000,000)
  bytes per entry: SQLite file size / entries, Redis MEMORY USAGE of the shard hash / entries
  (the spec quotes ~150 B for DETS)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ray
import redis
from _common import git_revision, pct  # benchmarks/_common.py

import erlmcp_ray
from erlmcp_ray.core import record as R
from erlmcp_ray.core.shard_copy import ShardCopy, ShardSettings
from erlmcp_ray.storage import RedisStore, SQLiteStore

VALUE = {"model": "gpt-4", "tokens": 1500, "agent": "a7"}
REDIS_URL = "redis://127.0.0.1:6379/0"


def config(durable: dict) -> dict:
    return {"durable": durable, "client": {"poll_timeout_s": 0.5},
            "domains": {"mem": {"backend": "memory", "max_bytes": "512MB"},
                        "disk": {"backend": "disk", "max_bytes": "512MB"},
                        "lazy": {"backend": "replicated", "max_bytes": "512MB", "durable": "write_behind"}}}


@ray.remote(num_cpus=0)
class Bare:
    def __init__(self) -> None:
        self.d: dict = {}

    def put(self, k: str, v: object) -> None:
        self.d[k] = v


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def us(x: float) -> str:
    return f"{x * 1e6:,.0f} µs"


def reload_time(store, n: int) -> tuple[float, float]:
    """Write n records into shard ("reload", 0), then time loading them into a fresh ShardCopy."""
    batch = []
    for i in range(n):
        batch.append((f"key:{i:08d}", R.pack({0: i + 1}, i + 1, 0, b"\x83\xa5model\xa5gpt-4")))
        if len(batch) == 20_000:
            store.write_batch("reload", 0, 1, batch)
            batch = []
    if batch:
        store.write_batch("reload", 0, 1, batch)
    t = time.perf_counter()
    image = store.load_shard("reload", 0)
    t_load = time.perf_counter() - t
    copy = ShardCopy("reload", 0, 0, 1, 1, ShardSettings())
    copy.load_durable(image.records)
    assert len(copy.state) == n
    return t_load, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries for the reload figure")
    ap.add_argument("--puts", type=int, default=1000, help="strong puts per latency figure")
    ap.add_argument("--sustained", type=int, default=50_000, help="eventual puts for the sustained figure")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cmd = f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, *sys.argv])}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_durable_"))
    r = redis.Redis.from_url(REDIS_URL)
    r.ping()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    lines: list[str] = []
    try:
        bare = Bare.remote()
        ray.get(bare.put.remote("x", 1), timeout=60)
        bare_lat = timed(lambda i: ray.get(bare.put.remote(f"k{i}", VALUE), timeout=60), args.puts)
        redis_lat = timed(lambda i: r.set(f"bench_durable:set:{i}", b"x" * 32), args.puts)
        rows = []
        sustained = {}
        for kind, durable in (("sqlite", {"kind": "sqlite", "data_dir": str(tmp)}),
                              ("redis", {"kind": "redis", "redis_url": REDIS_URL})):
            ns = f"bd_{kind}_{uuid.uuid4().hex[:6]}"
            system = erlmcp_ray.start(config(durable), namespace=ns)
            try:
                with system.client() as c:
                    for domain in ("mem", "disk"):
                        for i in range(50):
                            c.put(domain, f"warm{i}", VALUE, consistency="strong")
                        lat = timed(lambda i, d=domain: c.put(d, f"p{i}", VALUE, consistency="strong"), args.puts)
                        rows.append((kind, domain, statistics.median(lat), pct(lat, 0.99)))
                    t = time.perf_counter()
                    for i in range(args.sustained):
                        c.put("disk", f"s{i}", VALUE)
                    c.flush(timeout=600)
                    sustained[kind] = args.sustained / (time.perf_counter() - t)
                    stats = c.get_domain_stats("disk")
                    assert stats["entries"] >= args.sustained
            finally:
                erlmcp_ray.shutdown(ns, purge=True)
        t = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for i in range(args.sustained):
            pipe.set(f"bench_durable:pipe:{i}", b"\x83\xa5model\xa5gpt-4\xa6tokens\xcd\x05\xdc\xa5agent\xa2a7")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        redis_pipe = args.sustained / (time.perf_counter() - t)

        sq = SQLiteStore(tmp / "reload.db")
        sq_load, sq_total = reload_time(sq, args.entries)
        sq.close()
        sq_bytes = os.path.getsize(tmp / "reload.db") / args.entries
        rs = RedisStore(REDIS_URL, prefix=f"bench_durable_{uuid.uuid4().hex[:6]}")
        rs_load, rs_total = reload_time(rs, args.entries)
        rs_bytes = r.memory_usage(rs._shard_keys("reload", 0)[1], samples=0) / args.entries
        rs.purge()
        rs.close()
    finally:
        for key in r.scan_iter("bench_durable:*", count=10_000):
            r.delete(key)
        ray.shutdown()

    mem = {k: p50 for k, d, p50, _ in rows if d == "mem"}
    lines += [
        f"# bench_durable  {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"# command: {cmd}",
        f"# erlmcp_ray (git {git_revision()}), ray {ray.__version__}, redis-py {redis.__version__}, cpus={os.cpu_count()}",
        "",
        f"baselines (same run): bare Ray actor put p50/p99 {us(statistics.median(bare_lat))} / {us(pct(bare_lat, .99))}; "
        f"redis-py SET p50/p99 {us(statistics.median(redis_lat))} / {us(pct(redis_lat, .99))}",
        "",
        "strong put (one copy), p50 / p99                    ratio to mem   target",
    ]
    for kind, domain, p50, p99 in rows:
        ratio = p50 / mem[kind]
        target = "" if domain == "mem" else f"  <= 1.5x: {'yes' if ratio <= 1.5 else 'NO'}"
        lines.append(f"  {domain:4} durable tier {kind:6}  {us(p50):>10} / {us(p99):>10}    {ratio:5.2f}x{target}")
    lines += ["", "eventual puts to the disk domain until flush() returned (every write in the store):"]
    for kind, rate in sustained.items():
        lines.append(f"  {kind:6} {rate:,.0f} puts/s = {rate / redis_pipe:.0%} of redis-py pipelined SET "
                     f"({redis_pipe:,.0f}/s)   target >= 50 %: {'yes' if rate >= redis_pipe / 2 else 'NO'}")
    lines += [
        "",
        f"reload of {args.entries:,} entries into a shard (load_shard, then ShardCopy.load_durable):",
        f"  sqlite {sq_total:.2f} s (reading {sq_load:.2f} s)   target <= 5 s: {'yes' if sq_total <= 5 else 'NO'}",
        f"  redis  {rs_total:.2f} s (reading {rs_load:.2f} s)   target <= 5 s: {'yes' if rs_total <= 5 else 'NO'}",
        "",
        f"bytes per entry ({args.entries:,} entries, ~35 B records): SQLite file {sq_bytes:.0f} B, "
        f"Redis MEMORY USAGE {rs_bytes:.0f} B (spec's DETS: ~150 B)",
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
