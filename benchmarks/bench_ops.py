"""Benchmarks of MemoryClient operations on a real local Ray, against bare baselines.

Run:  python benchmarks/bench_ops.py [--quick] [--out benchmarks/results/ops.txt]

Starts a Ray of its own (never attaches to another cluster) and, in a fresh
namespace, the memory system with the default config except one shard for
``shared`` (replicated: owner + 1 replica, RF 2). Measures, in the same run:

  baselines   a bare Ray actor holding a dict (put/get round trips, a sequential
              put loop, and a put chained into a second actor the way a strong
              put reaches its replica), at the start and again at the end since
              the machine is noisy; redis-py GET/SET against 127.0.0.1:6379
              (skipped with a note if Redis is unreachable)
  erlmcp_ray  get from L0 and from L1, the caller's cost of an eventual put,
              sustained eventual puts up to flush(), strong put/get latency,
              strong put throughput with 16 callers vs 1

and prints a table (figure | result | baseline | ratio | target) with the
exact command, versions and date, then the baselines, the checks (cache tier
counters) and the CPU each process used in each phase; the same text goes to
``--out`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import os
import platform
import shlex
import statistics
import sys
import threading
import time
import uuid

import ray
from _common import git_revision, pct  # benchmarks/_common.py

import erlmcp_ray
from erlmcp_ray.core.codec import encode_value

VALUE = {"model": "gpt-4", "tokens": 1500, "agent": "a7"}
DOMAIN = "shared"
CONFIG = {"domains": {DOMAIN: {"shards": 1}}}
RAY_TIMEOUT = 30.0  # every ray.get below waits at most this long
OWNER, REPLICA, COORD = f"erlmcp:shard:{DOMAIN}:0:0", f"erlmcp:shard:{DOMAIN}:0:1", "erlmcp:coordinator"


# --------------------------------------------------------------------------- helpers


def lat_stats_us(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in µs of per-call latencies given in seconds."""
    return pct(samples_s, 0.50) * 1e6, pct(samples_s, 0.99) * 1e6


def batched_us(fn_batch, samples: int, per_batch: int) -> dict:
    """µs per call over batches (one call is too short for the timer): median, p99, best and
    mean batch; ``fn_batch(i)`` makes ``per_batch`` calls (batch number i)."""
    out = []
    for i in range(samples):
        t0 = time.perf_counter_ns()
        fn_batch(i)
        out.append((time.perf_counter_ns() - t0) / per_batch / 1000.0)
    return {"median": statistics.median(out), "p99": pct(out, 0.99), "min": min(out),
            "mean": statistics.fmean(out), "calls": samples * per_batch}


def loop_overhead_us(per_batch: int, keys: list[str]) -> float:
    """µs per iteration of an empty loop indexing ``keys`` like the timed L1 loop does."""
    n = len(keys)

    def batch(i: int) -> None:
        base = i * per_batch
        for j in range(base, base + per_batch):
            keys[j % n]

    return batched_us(batch, 50, per_batch)["median"]


def fmt_us(x: float) -> str:
    return f"{x:.2f} µs" if x < 100 else f"{x:.0f} µs"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} ops/s"


def loadavg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


class CpuMeter:
    """CPU seconds used per phase by this driver (per thread) and by the processes of our own Ray
    (children of this driver), labelled by the named actor they host. Linux + psutil; off otherwise."""

    GROUPS = ("driver", "owner", "replica", "coordinator", "bare actors", "raylet+gcs", "other ray")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.phases: list[tuple[str, float, dict[str, float], dict[str, float]]] = []
        self.labels: dict[int, str] = {}
        try:
            import psutil

            self.psutil = psutil
            self.me = psutil.Process()
        except Exception:  # noqa: BLE001
            self.psutil = None

    # -- garbage collector pauses in the driver (gen 2 walks every cached entry)
    def _gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            dt = time.perf_counter() - self._gc_t0
            self._gc_t0 = None
            gen = info.get("generation", 0)
            self.gc[gen][0] += 1
            self.gc[gen][1] += dt
            self.gc[gen][2] = max(self.gc[gen][2], dt)

    def start_gc_watch(self) -> None:
        self._gc_t0 = None
        self.gc = [[0, 0.0, 0.0] for _ in range(3)]
        gc.callbacks.append(self._gc_callback)

    def stop_gc_watch(self) -> None:
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)

    def _gc_snapshot(self) -> list[list]:
        return [list(x) for x in getattr(self, "gc", [[0, 0.0, 0.0]] * 3)]

    def label_actors(self) -> None:
        try:
            from ray._private import state  # private, but the only pid source without a dashboard

            names = {OWNER: "owner", REPLICA: "replica", COORD: "coordinator"}
            for a in state.actors().values():
                if a.get("State") != "ALIVE" or not a.get("Pid"):
                    continue
                if a.get("Name") in names and a.get("RayNamespace", self.namespace) == self.namespace:
                    self.labels[a["Pid"]] = names[a["Name"]]
                elif a.get("ActorClassName") == "BareDict":
                    self.labels[a["Pid"]] = "bare actors"
        except Exception as exc:  # noqa: BLE001 - CPU accounting is a diagnostic, never fatal
            print(f"CPU accounting: cannot label actors: {exc}", file=sys.stderr)

    def _snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        groups = dict.fromkeys(self.GROUPS, 0.0)
        threads: dict[str, float] = {}
        if self.psutil is None:
            return groups, threads
        t = self.me.cpu_times()
        groups["driver"] = t.user + t.system
        names = {th.native_id: th.name for th in threading.enumerate()}
        with contextlib.suppress(self.psutil.Error):
            for th in self.me.threads():
                name = names.get(th.id, "ray/C++ threads")
                if name.startswith("bench-caller"):
                    name = "bench callers"
                threads[name] = threads.get(name, 0.0) + th.user_time + th.system_time
        for p in self.me.children(recursive=True):
            with contextlib.suppress(self.psutil.Error):  # the process ended
                t = p.cpu_times()
                label = self.labels.get(p.pid)
                if label is None:
                    label = "raylet+gcs" if p.name() in ("raylet", "gcs_server") else "other ray"
                groups[label] += t.user + t.system
        return groups, threads

    def phase(self, name: str):
        meter = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()
                self.g0, self.th0 = meter._snapshot()
                self.gc0 = meter._gc_snapshot()
                if hasattr(meter, "gc"):
                    for x in meter.gc:
                        x[2] = 0.0  # max pause within this phase
                return self

            def __exit__(self, *exc):
                wall = time.perf_counter() - self.t0
                g1, th1 = meter._snapshot()
                gc1 = meter._gc_snapshot()
                gcd = [(b[0] - a[0], b[1] - a[1], b[2]) for a, b in zip(self.gc0, gc1)]
                meter.phases.append((name, wall, {k: g1[k] - self.g0.get(k, 0.0) for k in g1},
                                     {k: th1[k] - self.th0.get(k, 0.0) for k in th1}, gcd))
                return False

        return _Phase()

    def report(self) -> list[str]:
        if self.psutil is None or not self.phases:
            return ["  (psutil unavailable: no CPU accounting)"]
        head = ["phase", "wall s", *self.GROUPS, "total"]
        rows = []
        for name, wall, g, _, _ in self.phases:
            cores = [g[k] / wall for k in self.GROUPS]
            rows.append([name, f"{wall:.1f}", *(f"{c:.2f}" for c in cores), f"{sum(cores):.2f}"])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        out = ["  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        for r in rows:
            out.append("  " + "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths))))
        out.append("  driver threads (cores) | driver GC pauses per generation (count, total ms, longest ms):")
        for name, wall, _, th, gcd in self.phases:
            parts = ", ".join(f"{k} {v / wall:.2f}" for k, v in sorted(th.items(), key=lambda kv: -kv[1])
                              if v / wall >= 0.01)
            gcs = "  ".join(f"gen{i} {n}/{t * 1000:.0f}/{m * 1000:.1f}" for i, (n, t, m) in enumerate(gcd))
            out.append(f"    {name}: {parts} | {gcs}")
        return out


# --------------------------------------------------------------------------- baselines


@ray.remote(num_cpus=0)
class BareDict:
    def __init__(self) -> None:
        self.d: dict = {}

    def put(self, k, v):
        self.d[k] = v
        return True

    def get(self, k):
        return self.d.get(k)

    def put_answer(self, k, v):
        self.d[k] = v
        return (k, v)

    def apply(self, answer):
        self.d[answer[0]] = answer[1]
        return True


def bare_baseline(actor, peer, tag: str, iters: int, loop_n: int) -> dict:
    for i in range(200):  # warm-up
        ray.get(actor.put.remote(f"w{tag}{i}", VALUE), timeout=RAY_TIMEOUT)
        ray.get(actor.get.remote(f"w{tag}{i}"), timeout=RAY_TIMEOUT)
        ray.get(peer.apply.remote(actor.put_answer.remote(f"w{tag}{i}", VALUE)), timeout=RAY_TIMEOUT)
    gc.collect()
    put_s, get_s, chain_s = [], [], []
    pc = time.perf_counter
    for i in range(iters):
        t0 = pc()
        ray.get(actor.put.remote(f"p{tag}{i}", VALUE), timeout=RAY_TIMEOUT)
        put_s.append(pc() - t0)
    for i in range(iters):
        t0 = pc()
        ray.get(actor.get.remote(f"p{tag}{i}"), timeout=RAY_TIMEOUT)
        get_s.append(pc() - t0)
    for i in range(iters):  # the shape of a strong put: owner's answer passed as a ref to the replica
        t0 = pc()
        answer = actor.put_answer.remote(f"c{tag}{i}", VALUE)
        ray.get([answer, peer.apply.remote(answer)], timeout=RAY_TIMEOUT)
        chain_s.append(pc() - t0)
    t0 = pc()
    for i in range(loop_n):
        ray.get(actor.put.remote(f"l{tag}{i}", VALUE), timeout=RAY_TIMEOUT)
    loop_rate = loop_n / (pc() - t0)
    put50, put99 = lat_stats_us(put_s)
    get50, get99 = lat_stats_us(get_s)
    ch50, ch99 = lat_stats_us(chain_s)
    return {"put_p50": put50, "put_p99": put99, "get_p50": get50, "get_p99": get99,
            "chain_p50": ch50, "chain_p99": ch99, "loop_rate": loop_rate}


def redis_baseline(iters: int) -> dict | str:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed"
    try:
        r = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1.0, socket_timeout=5.0)
        r.ping()
        server = r.info("server").get("redis_version", "?")
    except Exception as exc:  # noqa: BLE001 - any failure means: no Redis to compare with
        return f"Redis at 127.0.0.1:6379 unreachable ({type(exc).__name__}: {exc})"
    prefix = f"bench_ops:{uuid.uuid4().hex[:8]}:"
    data = encode_value(VALUE)
    keys = [f"{prefix}{i}" for i in range(iters)]
    try:
        for k in keys[:200]:
            r.set(k, data)
            r.get(k)
        pc = time.perf_counter
        set_s, get_s = [], []
        for k in keys:
            t0 = pc()
            r.set(k, data)
            set_s.append(pc() - t0)
        for k in keys:
            t0 = pc()
            r.get(k)
            get_s.append(pc() - t0)
    finally:
        for i in range(0, len(keys), 500):  # only our own keys: never FLUSHDB a shared Redis
            r.delete(*keys[i:i + 500])
        r.close()
    s50, s99 = lat_stats_us(set_s)
    g50, g99 = lat_stats_us(get_s)
    return {"set_p50": s50, "set_p99": s99, "get_p50": g50, "get_p99": g99, "server": server,
            "client": redis.__version__}


# --------------------------------------------------------------------------- erlmcp_ray


def _cache_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in ("l0_hits", "l1_hits", "misses")}


def bench_l0_get(client, samples: int, per_batch: int, explicit: bool = False) -> dict:
    """L0 hits of one key; ``explicit``: the caller passes ``consistency="eventual"``."""
    key = "hot:l0"
    client.put(DOMAIN, key, VALUE, consistency="strong")
    assert client.get(DOMAIN, key) == VALUE
    get = client.get
    for _ in range(5000):
        get(DOMAIN, key)
    before = client.stats()["cache"]

    if explicit:
        def batch(_i: int) -> None:
            for _ in range(per_batch):
                get(DOMAIN, key, consistency="eventual")
    else:
        def batch(_i: int) -> None:
            for _ in range(per_batch):
                get(DOMAIN, key)

    out = batched_us(batch, samples, per_batch)
    out.update(_cache_delta(before, client.stats()["cache"]))
    return out


def bench_l1_get(client, nkeys: int, samples: int, per_batch: int) -> dict:
    keys = [f"l1:{i:06d}" for i in range(nkeys)]
    for k in keys:
        client.put(DOMAIN, k, VALUE, consistency="eventual")
    client.flush(timeout=60)
    get = client.get
    for k in keys:  # warm: every key is in L1 (our own writes, acknowledged by the owner)
        get(DOMAIN, k)
    before = client.stats()["cache"]
    n = nkeys

    def batch(i: int) -> None:
        base = i * per_batch
        for j in range(base, base + per_batch):
            get(DOMAIN, keys[j % n])

    out = batched_us(batch, samples, per_batch)
    out.update(_cache_delta(before, client.stats()["cache"]))
    out["overhead"] = loop_overhead_us(per_batch, keys)
    return out


def bench_eventual_caller(client, samples: int, per_batch: int) -> dict:
    keys = [f"ev:{i:07d}" for i in range(samples * per_batch)]
    put = client.put

    def batch(i: int) -> None:
        for k in keys[i * per_batch:(i + 1) * per_batch]:
            put(DOMAIN, k, VALUE, consistency="eventual")

    out = batched_us(batch, samples, per_batch)
    t0 = time.perf_counter()
    client.flush(timeout=120)
    out["flush_s"] = time.perf_counter() - t0
    return out


def bench_eventual_sustained(client, n: int) -> dict:
    keys = [f"sus:{i:07d}" for i in range(n)]
    put = client.put
    before = client.stats()["tiers"]
    gc.collect()
    t0 = time.perf_counter()
    for k in keys:
        put(DOMAIN, k, VALUE, consistency="eventual")
    t_puts = time.perf_counter()
    client.flush(timeout=120)
    t1 = time.perf_counter()
    after = client.stats()["tiers"]
    return {"n": n, "rate": n / (t1 - t0), "puts_s": t_puts - t0, "flush_s": t1 - t_puts,
            "batches": after["batches_sent"] - before["batches_sent"], "errors": after["write_errors"],
            "polls": after["polls"] - before["polls"]}


def bench_strong_latency(client, iters: int) -> dict:
    for i in range(100):  # warm-up
        client.put(DOMAIN, f"sw:{i}", VALUE, consistency="strong")
        client.get(DOMAIN, f"sw:{i}", consistency="strong")
    gc.collect()
    pc = time.perf_counter
    put_s, get_s = [], []
    polls0 = client.stats()["tiers"]["polls"]
    for i in range(iters):
        k = f"s:{i:06d}"
        t0 = pc()
        client.put(DOMAIN, k, VALUE, consistency="strong")
        put_s.append(pc() - t0)
    polls1 = client.stats()["tiers"]["polls"]
    for i in range(iters):
        k = f"s:{i:06d}"
        t0 = pc()
        v = client.get(DOMAIN, k, consistency="strong")
        get_s.append(pc() - t0)
        if v != VALUE:
            raise AssertionError(f"strong get of {k} returned {v!r}")
    polls2 = client.stats()["tiers"]["polls"]
    p50, p99 = lat_stats_us(put_s)
    g50, g99 = lat_stats_us(get_s)
    return {"put_p50": p50, "put_p99": p99, "get_p50": g50, "get_p99": g99, "iters": iters,
            "put_polls": polls1 - polls0, "get_polls": polls2 - polls1}


def bench_strong_concurrency(client, callers: int, seconds: float) -> dict:
    stop = threading.Event()
    start = threading.Barrier(callers + 1)
    counts = [0] * callers
    errors: list[BaseException] = []
    tag = uuid.uuid4().hex[:6]

    def caller(c: int) -> None:
        start.wait()
        i = 0
        try:
            while not stop.is_set():
                client.put(DOMAIN, f"c{tag}:{c}:{i}", VALUE, consistency="strong")
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        counts[c] = i

    g0 = client.stats()["write_behind"]
    threads = [threading.Thread(target=caller, args=(c,), name=f"bench-caller-{c}", daemon=True)
               for c in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(RAY_TIMEOUT + 5)
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    g1 = client.stats()["write_behind"]
    batches = g1["group_commit_batches"] - g0["group_commit_batches"]
    ops = g1["group_commit_ops"] - g0["group_commit_ops"]
    total = sum(counts)
    return {"rate": total / elapsed, "ops": total, "batches": batches,
            "per_batch": ops / batches if batches else 0.0}


# --------------------------------------------------------------------------- report


def build_report(cmd: str, r: dict, meter: CpuMeter, quick: bool) -> str:
    b0, b1 = r["bare_start"], r["bare_end"]

    def mean(k: str) -> float:
        return (b0[k] + b1[k]) / 2

    bare_put50, bare_get50, bare_loop, bare_chain50 = mean("put_p50"), mean("get_p50"), mean("loop_rate"), \
        mean("chain_p50")
    rows: list[tuple[str, str, str, str, str, bool]] = []
    l0, l1, ev, sus, st = r["l0"], r["l1"], r["ev"], r["sus"], r["strong"]
    c1, c16 = r["c1"], r["c16"]

    rows.append(("get, L0 hit (median per call)", fmt_us(l0["median"]), "-", "-", "<= 1 µs", l0["median"] <= 1.0))
    if "l0x" in r:
        l0x = r["l0x"]
        rows.append(('get, L0 hit, consistency="eventual" passed', fmt_us(l0x["median"]), "-", "-", "<= 1 µs",
                     l0x["median"] <= 1.0))
    rows.append(("get, L1 hit (median per call)", fmt_us(l1["median"]), "-", "-", "<= 2 µs", l1["median"] <= 2.0))
    rows.append(("eventual put, caller's cost (median per call)", fmt_us(ev["median"]), "-", "-", "<= 10 µs",
                 ev["median"] <= 10.0))
    ratio = sus["rate"] / bare_loop
    rows.append((f"eventual puts to owner+replica, sustained (N={sus['n']:,})", fmt_rate(sus["rate"]),
                 f"bare put loop {fmt_rate(bare_loop)}", f"{ratio:.1f}x", ">= 100,000 ops/s and >= 25x",
                 sus["rate"] >= 100_000 and ratio >= 25))
    ratio = st["put_p50"] / bare_put50
    rows.append(("strong put RF 2, p50 / p99", f"{fmt_us(st['put_p50'])} / {fmt_us(st['put_p99'])}",
                 f"bare put p50 {fmt_us(bare_put50)}", f"{ratio:.3f}x", "p50 <= 2.0x bare", ratio <= 2.0))
    ratio = st["get_p50"] / bare_get50
    rows.append(("strong get, p50 / p99", f"{fmt_us(st['get_p50'])} / {fmt_us(st['get_p99'])}",
                 f"bare get p50 {fmt_us(bare_get50)}", f"{ratio:.3f}x", "p50 <= 1.2x bare", ratio <= 1.2))
    ratio = c16["rate"] / c1["rate"]
    rows.append(("strong put throughput, 16 callers vs 1", f"{fmt_rate(c16['rate'])} vs {fmt_rate(c1['rate'])}",
                 "1 caller", f"{ratio:.1f}x", ">= 5x", ratio >= 5))

    head = ("figure", "result", "baseline", "ratio", "target", "met")
    cells = [head] + [(f, res, base, rat, tgt, "yes" if ok else "NO") for f, res, base, rat, tgt, ok in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [
        f"# bench_ops  {r['date']}",
        f"# command: {cmd}",
        (f"# python {platform.python_version()}  ray {ray.__version__}  erlmcp_ray {erlmcp_ray.__version__} "
         f"(git {r['git']})  {platform.machine()}  cpus={os.cpu_count()}  "
         f"loadavg 1/5/15 min at start {r['load_start']}, at end {r['load_end']}{'  (--quick)' if quick else ''}"),
        (f"# system: default config + {CONFIG}: '{DOMAIN}' = 1 shard x 2 copies (RF 2, min_insync "
         f"{r['min_insync']}); value {VALUE} ({len(encode_value(VALUE))} B encoded)"),
        "",
        " | ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
        "-+-".join("-" * w for w in widths),
    ]
    for c in cells[1:]:
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())

    lines += ["", "baselines (same run; ratios above use the mean of start and end):"]
    for name, b in (("start", b0), ("end", b1)):
        lines.append(f"  bare Ray actor ({name}): put p50/p99 {fmt_us(b['put_p50'])} / {fmt_us(b['put_p99'])}, "
                     f"get p50/p99 {fmt_us(b['get_p50'])} / {fmt_us(b['get_p99'])}, "
                     f"sequential put loop {fmt_rate(b['loop_rate'])}, put chained into a 2nd actor "
                     f"(a strong put's shape) p50/p99 {fmt_us(b['chain_p50'])} / {fmt_us(b['chain_p99'])}")
    rb = r["redis"]
    if isinstance(rb, dict):
        lines.append(f"  redis-py {rb['client']} -> redis {rb['server']} @127.0.0.1:6379: "
                     f"SET p50/p99 {fmt_us(rb['set_p50'])} / {fmt_us(rb['set_p99'])}, "
                     f"GET p50/p99 {fmt_us(rb['get_p50'])} / {fmt_us(rb['get_p99'])}")
    else:
        lines.append(f"  redis: skipped ({rb})")

    def tiers(x: dict, want: str) -> str:
        ok = x[want] == x["calls"]
        return (f"l0_hits +{x['l0_hits']:,}, l1_hits +{x['l1_hits']:,}, misses +{x['misses']:,} "
                f"({'all ' + want[:2].upper() if ok else 'CHECK FAILED'})")

    def spread(x: dict) -> str:
        return f"best batch {fmt_us(x['min'])}, mean {fmt_us(x['mean'])}, p99 batch {fmt_us(x['p99'])}"

    lines += ["", "details and checks:"]
    lines.append(f"  L0 get: {l0['calls']:,} calls of one key -> {tiers(l0, 'l0_hits')}; {spread(l0)}")
    if "l0x" in r:
        lines.append(f"  L0 get with consistency=\"eventual\": {r['l0x']['calls']:,} calls -> "
                     f"{tiers(r['l0x'], 'l0_hits')}; {spread(r['l0x'])}")
    lines.append(f"  L1 get: {l1['calls']:,} calls cycling over {r['l1_keys']:,} keys (l0_entries 256) -> "
                 f"{tiers(l1, 'l1_hits')}; {spread(l1)}; loop+indexing overhead {fmt_us(l1['overhead'])}/call "
                 f"(included)")
    lines.append(f"  eventual put caller cost: {ev['calls']:,} distinct keys; {spread(ev)}; flush after "
                 f"{ev['flush_s']:.2f} s")
    lines.append(f"  eventual sustained: the put loop took {sus['puts_s']:.2f} s ({fmt_rate(sus['n'] / sus['puts_s'])}"
                 f" at the caller), then flush() {sus['flush_s']:.2f} s; {sus['batches']:,} write-behind batches,"
                 f" {sus['polls']} coherence polls, write_errors {sus['errors']}")
    lines.append(f"  strong put vs the chained bare baseline (the floor for owner -> replica): p50 "
                 f"{st['put_p50'] / bare_chain50:.2f}x of {fmt_us(bare_chain50)}; coherence polls answered during "
                 f"{st['iters']:,} strong puts: {st['put_polls']:,}, during {st['iters']:,} strong gets: "
                 f"{st['get_polls']:,}")
    lines.append(f"  strong put 1 caller: {c1['ops']:,} puts in {c1['batches']:,} group commits "
                 f"({c1['per_batch']:.1f} ops each); 16 callers: {c16['ops']:,} puts in {c16['batches']:,} "
                 f"group commits ({c16['per_batch']:.1f} ops each); {r['conc_seconds']:.1f} s each")
    lines += ["", "CPU used per phase, in cores (2 available; processes of this run's Ray only):", *meter.report()]
    lines.append(f"\ntotal run {r['total_s']:.0f} s")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    args = ap.parse_args(argv)
    q = args.quick
    cmd = f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, *sys.argv])}"

    iters = 300 if q else 2000
    loop_n = 500 if q else 3000
    samples, per_batch = (50, 500) if q else (200, 1000)
    ev_samples = 50 if q else 100
    sustained_n = 50_000 if q else 200_000
    l1_keys = 5000
    conc_seconds = 1.5 if q else 4.0

    r: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "l1_keys": l1_keys,
               "conc_seconds": conc_seconds, "git": git_revision(), "load_start": loadavg()}
    t_start = time.perf_counter()

    def step(s: str) -> None:
        print(f"  [{time.perf_counter() - t_start:6.1f} s] {s}", file=sys.stderr, flush=True)

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    namespace = f"bench_ops_{uuid.uuid4().hex[:8]}"
    meter = CpuMeter(namespace)
    system = client = None
    bare: list = []
    try:
        bare = [BareDict.remote(), BareDict.remote()]
        ray.get([b.put.remote("ready", 1) for b in bare], timeout=RAY_TIMEOUT)
        step("starting the memory system")
        system = erlmcp_ray.start(CONFIG, namespace=namespace)
        r["min_insync"] = system.config.min_insync_for(DOMAIN)
        client = system.client()
        meter.label_actors()
        meter.start_gc_watch()

        phases = [
            ("bare_start", "bare actor (start)", lambda: bare_baseline(bare[0], bare[1], "a", iters, loop_n)),
            ("redis", "redis", lambda: redis_baseline(iters)),
            ("l0", "L0 get", lambda: bench_l0_get(client, samples, per_batch)),
            ("l0x", "L0 get, explicit level", lambda: bench_l0_get(client, samples, per_batch, explicit=True)),
            ("l1", "L1 get", lambda: bench_l1_get(client, l1_keys, samples, per_batch)),
            ("ev", "eventual caller", lambda: bench_eventual_caller(client, ev_samples, per_batch)),
            ("sus", "eventual sustained", lambda: bench_eventual_sustained(client, sustained_n)),
            ("strong", "strong put+get", lambda: bench_strong_latency(client, iters)),
            ("c1", "strong x1 caller", lambda: bench_strong_concurrency(client, 1, conc_seconds)),
            ("c16", "strong x16 callers", lambda: bench_strong_concurrency(client, 16, conc_seconds)),
            ("bare_end", "bare actor (end)", lambda: bare_baseline(bare[0], bare[1], "b", iters, loop_n)),
        ]
        for key, label, fn in phases:
            step(label)
            with meter.phase(label):
                r[key] = fn()
        r["total_s"] = time.perf_counter() - t_start
        r["load_end"] = loadavg()
        step("done")
    finally:
        meter.stop_gc_watch()
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001
                print(f"client.close failed: {exc}", file=sys.stderr)
        if system is not None:
            erlmcp_ray.shutdown(namespace)
        for b in bare:
            ray.kill(b)
        ray.shutdown()

    report = build_report(cmd, r, meter, q)
    print(report, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
