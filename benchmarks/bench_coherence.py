"""Benchmarks of cross-client cache coherence on a real local Ray, against a bare baseline.

Run:  python benchmarks/bench_coherence.py [--quick] [--out benchmarks/results/coherence.txt]

Starts a Ray of its own (never attaches to another cluster) and, in a fresh namespace, the
memory system with the default config except one shard for ``shared`` (replicated: owner + 1
replica, RF 2). Every client lives in this driver process, each with its own coherence
(long-poll) thread; that is what a process hosting several agents looks like, but all those
threads share one GIL (32 of them in figure 3), so what they can process together is bounded by
one core of Python. Measures, in the same run:

  baseline    a bare Ray actor round trip (get on an actor holding a dict), p50/p99, at the
              start and again at the end since the machine is noisy; ratios use their mean
  drop        client A writes a key that 8 reader clients cache; the driver polls every
              reader's ``get(..., local_only=True)`` (L0/L1 only) until it stops returning the
              old value: time from A's ``put`` return (consistency="strong") or from
              ``A.flush()`` return (consistency="eventual") to each reader's drop
  invalidate  ``client.coordinator.invalidate`` from a 9th client while 8 clients cache the
              key: latency, and every result must have ``missing == ()`` and every holder must
              have dropped the key when it returns
  fan-out     32 clients; N explicit invalidations of the ``cache`` domain published in
              batches through the coordinator actor (``invalidate.remote(items, False, 0.0)``):
              deliveries (sum of every client's ``invalidations_received`` delta) per second
              until every client processed all N; its baseline is the same-run ceiling of one
              Python thread unpickling and applying such messages to a LocalCache (the GIL
              bound of clients sharing a process). A smaller run goes through the public
              ``invalidate_pattern`` instead.

and prints a table (figure | result | baseline | ratio | target | met) with the exact command,
versions, date and load, then details, checks and the CPU each process used per phase; the same
text goes to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import pickle
import platform
import shlex
import statistics
import sys
import threading
import time
import uuid

import ray

import erlmcp_ray
from erlmcp_ray.actors.options import COORDINATOR
from erlmcp_ray.client._cache import LocalCache
from erlmcp_ray.core.invalidation import INVALIDATE, MAX_POLL_MESSAGES, RELAXED

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# shared bench helpers: the bare actor, CPU/GC accounting, percentiles, git revision, load
from _common import git_revision, pct
from bench_ops import BareDict, CpuMeter, loadavg

DOMAIN = "shared"  # replicated, RF 2; one shard
FAN_DOMAIN = "cache"  # memory backend, one copy; invalidate_source on
CONFIG = {"domains": {DOMAIN: {"shards": 1}}}
RAY_TIMEOUT = 30.0  # every ray.get below waits at most this long
READERS = 8
FAN_CLIENTS = 32
POLL_SLEEP_S = 20e-6  # the drop-detection loop sleeps this long between sweeps: the GIL must reach
#                        the coherence threads it is timing (a bare spin holds it for 5 ms slices)
DROP_DEADLINE_S = 15.0  # a reader that still serves the old value after this long is a failure


# --------------------------------------------------------------------------- helpers


def ms(x_s: float) -> str:
    return f"{x_s * 1000:.2f} ms" if x_s < 0.1 else f"{x_s * 1000:.0f} ms"


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return pct(samples, 0.50), pct(samples, 0.99)


def ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 1 else f"{x:.1f}x"


def fmt_rate(x: float, unit: str = "/s") -> str:
    return f"{x:,.0f}{unit}"


def close_all(clients: list) -> None:
    """Close clients in parallel: each close waits for its coherence thread's current long poll."""
    errors: list[BaseException] = []

    def close(c) -> None:
        try:
            c.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=close, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RAY_TIMEOUT + 5)
    if errors:
        print(f"client.close failed: {errors[0]!r}", file=sys.stderr)


def received(c) -> int:
    return c.counters["invalidations_received"]  # what stats()["tiers"] copies; cheap to read


def wait_quiet(clients: list, settle_s: float = 0.3, limit_s: float = 20.0) -> None:
    """Wait until no client's invalidations_received changed for ``settle_s`` (earlier phases'
    write notifications, published lazily by the owners, must not count in the next phase)."""
    deadline = time.monotonic() + limit_s
    last = [received(c) for c in clients]
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = [received(c) for c in clients]
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= settle_s:
            return


# --------------------------------------------------------------------------- baselines


def bare_rtt(actor, iters: int) -> dict:
    for i in range(200):  # warm-up
        ray.get(actor.put.remote(f"w{i}", i), timeout=RAY_TIMEOUT)
        ray.get(actor.get.remote(f"w{i}"), timeout=RAY_TIMEOUT)
    gc.collect()
    pc = time.perf_counter
    out = []
    for i in range(iters):
        t0 = pc()
        ray.get(actor.get.remote(f"w{i % 200}"), timeout=RAY_TIMEOUT)
        out.append(pc() - t0)
    p50, p99 = p50_p99(out)
    return {"p50": p50, "p99": p99, "iters": iters}


def apply_ceiling(n_msgs: int, batch: int) -> dict:
    """Per-message cost of what a coherence thread does with a poll answer: unpickle the message
    list and, per message, ``LocalCache.invalidate`` plus the counter (client._poll_loop's body)."""
    msgs = [(i + 1, FAN_DOMAIN, f"fan:{i:07d}", 0, False, None, INVALIDATE) for i in range(n_msgs)]
    blobs = [pickle.dumps(msgs[i:i + batch], protocol=5) for i in range(0, n_msgs, batch)]
    cache = LocalCache(256, 64 * 1024 * 1024)
    cache.store(FAN_DOMAIN, "fan:seed", b"x", 1)
    counters = {"invalidations_received": 0}
    pc = time.perf_counter
    best = float("inf")
    for _ in range(3):
        t0 = pc()
        for blob in blobs:
            for _seq, domain, key, hlc, _deleted, record, reason in pickle.loads(blob):
                if reason != RELAXED:
                    cache.invalidate(domain, key, hlc)
                    counters["invalidations_received"] += 1
        best = min(best, pc() - t0)
    return {"per_msg_s": best / n_msgs, "rate": n_msgs / best, "n": n_msgs, "batch": batch}


# --------------------------------------------------------------------------- figure 1: write -> drop


def bench_drop(writer, readers: list, mode: str, rounds: int, tag: str) -> dict:
    """``mode``: "strong" (consistency=strong), "eventual" (eventual + flush), or "coh-strong"
    (consistency=strong, coherence=strong: every reader must have dropped when put returns)."""
    pc = time.perf_counter
    from_ret: list[float] = []  # from put return (strong) / flush return (eventual)
    from_call: list[float] = []  # from the start of the put: the whole write-to-drop path
    write_s: list[float] = []  # the writer's put (+ flush) time
    at_first, timeouts, not_cached, stale_after, sweeps, sweep_time = 0, 0, 0, 0, 0, 0.0
    for i in range(rounds):
        key = f"drop:{tag}:{i:05d}"
        old, new = {"round": i, "v": "old"}, {"round": i, "v": "new"}
        writer.put(DOMAIN, key, old, consistency="strong")
        for r in readers:  # each reader fetches the key (from the replica) and caches it
            if r.get(DOMAIN, key) != old:
                not_cached += 1
        for r in readers:
            if r.get(DOMAIN, key, local_only=True) != old:
                not_cached += 1
        t_call = pc()
        if mode == "eventual":
            writer.put(DOMAIN, key, new, consistency="eventual")
            writer.flush(timeout=RAY_TIMEOUT)
        elif mode == "strong":
            writer.put(DOMAIN, key, new, consistency="strong")
        else:
            writer.put(DOMAIN, key, new, consistency="strong", coherence="strong")
        t0 = pc()
        write_s.append(t0 - t_call)
        pending = list(readers)
        first = True
        while pending:
            still = []
            for r in pending:
                if r.get(DOMAIN, key, local_only=True) == old:
                    still.append(r)
                else:
                    t = pc()
                    from_ret.append(t - t0)
                    from_call.append(t - t_call)
                    at_first += first
            pending = still
            sweeps += 1
            if not pending:
                break
            first = False
            if pc() - t0 > DROP_DEADLINE_S:
                timeouts += len(pending)
                break
            time.sleep(POLL_SLEEP_S)
        sweep_time += pc() - t0
        for r in readers:  # after the drop a read must find the new value, not a stale copy
            if r.get(DOMAIN, key) != new:
                stale_after += 1
    p50, p99 = p50_p99(from_ret) if from_ret else (float("nan"),) * 2
    c50, c99 = p50_p99(from_call) if from_call else (float("nan"),) * 2
    w50, w99 = p50_p99(write_s)
    return {"p50": p50, "p99": p99, "call_p50": c50, "call_p99": c99, "write_p50": w50, "write_p99": w99,
            "max": max(from_ret, default=float("nan")), "n": len(from_ret), "rounds": rounds,
            "at_first": at_first, "timeouts": timeouts, "not_cached": not_cached, "stale_after": stale_after,
            "sweep_us": sweep_time / sweeps * 1e6 if sweeps else 0.0}


# --------------------------------------------------------------------------- figure 2: invalidate


def bench_invalidate(inv_client, holders: list, iters: int, warmup: int) -> dict:
    key = "inv:hot"
    inv_client.put(DOMAIN, key, {"hot": True}, consistency="strong")
    # The owner publishes that write lazily; a holder whose fetch overlaps its notification does
    # not cache the answer (the cache's fetch token), which would count as "not cached" below.
    wait_quiet([inv_client, *holders])
    pc = time.perf_counter
    lat, acked, incomplete, not_cached, not_dropped, bad = [], [], 0, 0, 0, []
    for i in range(warmup + iters):
        for h in holders:
            h.get(DOMAIN, key)
            if h.get(DOMAIN, key, local_only=True) is None:
                not_cached += 1
        t0 = pc()
        res = inv_client.coordinator.invalidate(DOMAIN, key)
        dt = pc() - t0
        if i < warmup:
            continue
        lat.append(dt)
        acked.append(len(res.acked))
        if res.missing != ():
            incomplete += 1
            bad.append(res)
        for h in holders:  # synchronous: every holder dropped its copy before invalidate returned
            if h.get(DOMAIN, key, local_only=True) is not None:
                not_dropped += 1
    p50, p99 = p50_p99(lat)
    return {"p50": p50, "p99": p99, "max": max(lat), "iters": iters, "incomplete": incomplete,
            "acked_min": min(acked), "acked_max": max(acked), "not_cached": not_cached,
            "not_dropped": not_dropped, "bad": bad[:3]}


# --------------------------------------------------------------------------- figure 3: fan-out


def _watch(clients: list, base: list[int], want: int, t0: float, limit_s: float) -> tuple[float, list[float]]:
    """Until every client's invalidations_received rose by ``want``: (time the last got there,
    per-client completion times), both from ``t0``; None entries for clients that never did."""
    pc = time.perf_counter
    done: list[float | None] = [None] * len(clients)
    left = len(clients)
    while left:
        now = pc()
        for i, c in enumerate(clients):
            if done[i] is None and received(c) - base[i] >= want:
                done[i] = now - t0
                left -= 1
        if left and now - t0 > limit_s:
            break
        time.sleep(0.001)
    return max((d for d in done if d is not None), default=float("nan")), done


def bench_fanout(clients: list, coord, n: int, batch: int) -> dict:
    seed = f"fanseed:{uuid.uuid4().hex[:6]}"
    clients[0].put(FAN_DOMAIN, seed, {"seed": 1}, consistency="strong")
    for c in clients:  # every client caches an entry of the domain
        c.get(FAN_DOMAIN, seed)
    wait_quiet(clients)
    gc.collect()
    before = [c.stats()["tiers"] for c in clients]
    base = [b["invalidations_received"] for b in before]
    batches = [[(FAN_DOMAIN, f"fan:{j:07d}", None, INVALIDATE) for j in range(i, min(n, i + batch))]
               for i in range(0, n, batch)]
    pc = time.perf_counter
    t0 = pc()
    refs = [coord.invalidate.remote(b, False, 0.0) for b in batches]
    seqs = ray.get(refs, timeout=RAY_TIMEOUT)
    t_pub = pc() - t0
    t_end, done = _watch(clients, base, n, t0, 120.0)
    after = [c.stats()["tiers"] for c in clients]
    deltas = [a["invalidations_received"] - b["invalidations_received"] for a, b in zip(after, before)]
    gaps = sum(a["gaps"] - b["gaps"] for a, b in zip(after, before))
    polls = sum(a["polls"] - b["polls"] for a, b in zip(after, before))
    finished = [d for d in done if d is not None]
    total = sum(deltas)
    return {"n": n, "batch": batch, "clients": len(clients), "rate": total / t_end, "total": total,
            "expected": n * len(clients), "t_end": t_end, "t_pub": t_pub, "first_done": min(finished, default=0.0),
            "median_done": statistics.median(finished) if finished else 0.0, "unfinished": done.count(None),
            "gaps": gaps, "polls": polls, "last_seq": seqs[-1][0],
            "seed_hit": sum(1 for c in clients if c.get(FAN_DOMAIN, seed, local_only=True) is not None)}


def bench_pattern(clients: list, n: int) -> dict:
    """The public path: ``invalidate_pattern`` over ``n`` keys of the cache domain. For a domain that
    caches a source it also deletes the keys from the shard, whose delete notifications reach
    every client as well; we wait for both (2 n per client) and report them apart."""
    writer = clients[0]
    prefix = f"pat{uuid.uuid4().hex[:4]}"
    for j in range(n):
        writer.put(FAN_DOMAIN, f"{prefix}:{j:06d}", {"j": j}, consistency="eventual")
    writer.flush(timeout=120)
    wait_quiet(clients, settle_s=0.5, limit_s=60.0)
    gc.collect()
    before = [c.stats()["tiers"] for c in clients]
    base = [b["invalidations_received"] for b in before]
    pc = time.perf_counter
    t0 = pc()
    count = writer.coordinator.invalidate_pattern(f"{prefix}:*", domain=FAN_DOMAIN)
    t_call = pc() - t0
    t_end, done = _watch(clients, base, 2 * n, t0, 120.0)
    wait_quiet(clients, settle_s=0.3, limit_s=10.0)  # anything beyond 2 n (there should be none)
    after = [c.stats()["tiers"] for c in clients]
    deltas = [a["invalidations_received"] - b["invalidations_received"] for a, b in zip(after, before)]
    total = sum(deltas)
    return {"n": n, "count": count, "t_call": t_call, "t_end": t_end, "total": total, "clients": len(clients),
            "per_client_min": min(deltas), "per_client_max": max(deltas), "unfinished": done.count(None),
            "rate": total / t_end, "gaps": sum(a["gaps"] - b["gaps"] for a, b in zip(after, before))}


# --------------------------------------------------------------------------- report


def build_report(cmd: str, r: dict, meter: CpuMeter, quick: bool) -> str:
    b0, b1 = r["bare_start"], r["bare_end"]
    rtt = (b0["p50"] + b1["p50"]) / 2
    base = f"bare RTT p50 {ms(rtt)}"
    rows: list[tuple[str, str, str, str, str, bool]] = []
    for key, label in (("drop_strong", "strong put return"), ("drop_eventual", "eventual put, flush return")):
        d = r[key]
        ok = d["timeouts"] == 0 and d["stale_after"] == 0 and d["p50"] / rtt <= 2 and d["p99"] / rtt <= 10
        rows.append((f"A's {label} -> dropped from B's L1, p50 / p99 ({READERS} readers)",
                     f"{ms(d['p50'])} / {ms(d['p99'])}", base, f"{ratio(d['p50'] / rtt)} / {ratio(d['p99'] / rtt)}",
                     "<= 2x / <= 10x bare", ok))
    inv = r["invalidate"]
    ok = inv["incomplete"] == 0 and inv["not_dropped"] == 0 and inv["p50"] / rtt <= 3
    rows.append((f"coordinator.invalidate, {READERS} holders, p50 / p99", f"{ms(inv['p50'])} / {ms(inv['p99'])}",
                 base, f"{ratio(inv['p50'] / rtt)} / {ratio(inv['p99'] / rtt)}", "p50 <= 3x bare, missing == ()", ok))
    fan, ceil = r["fanout"], r["ceiling"]
    ok = fan["rate"] >= 50_000 and fan["total"] == fan["expected"] and fan["unfinished"] == 0
    rows.append((f"invalidations delivered to {fan['clients']} clients, batched (N={fan['n']:,})",
                 fmt_rate(fan["rate"]), f"1-thread apply ceiling {fmt_rate(ceil['rate'])}",
                 ratio(fan["rate"] / ceil["rate"]), ">= 50,000/s", ok))

    head = ("figure", "result", "baseline", "ratio", "target", "met")
    cells = [head] + [(f, res, b, rat, tgt, "yes" if ok else "NO") for f, res, b, rat, tgt, ok in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [
        f"# bench_coherence  {r['date']}",
        f"# command: {cmd}",
        (f"# python {platform.python_version()}  ray {ray.__version__}  erlmcp_ray {erlmcp_ray.__version__} "
         f"(git {r['git']})  {platform.machine()}  cpus={os.cpu_count()}  "
         f"loadavg 1/5/15 min at start {r['load_start']}, at end {r['load_end']}{'  (--quick)' if quick else ''}"),
        (f"# system: default config + {CONFIG}: '{DOMAIN}' = 1 shard x 2 copies (RF 2), '{FAN_DOMAIN}' = 1 shard "
         f"x 1 copy; cache_coordinator: coherence {r['coherence']}, invalidation_timeout {r['inv_timeout']} ms, "
         f"lease {r['lease']} ms; client poll_timeout_s {r['poll_timeout']}"),
        (f"# every client runs in this driver process with its own coherence thread (fine for measuring the "
         f"protocol; a real deployment has one per agent process): the {READERS} readers' and, in the last "
         f"row, {FAN_CLIENTS} clients' threads share one GIL"),
        "",
        " | ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
        "-+-".join("-" * w for w in widths),
    ]
    for c in cells[1:]:
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())

    lines += ["", "baselines (same run; ratios above use the mean of start and end):"]
    for name, b in (("start", b0), ("end", b1)):
        lines.append(f"  bare Ray actor round trip ({name}): get p50/p99 {ms(b['p50'])} / {ms(b['p99'])} "
                     f"({b['iters']:,} calls)")
    lines.append(f"  1-thread apply ceiling: unpickling {ceil['batch']:,}-message poll answers and applying them "
                 f"to a LocalCache as a coherence thread does: {ceil['per_msg_s'] * 1e6:.2f} µs/message = "
                 f"{fmt_rate(ceil['rate'])} ({ceil['n']:,} messages, best of 3); all clients of one process "
                 f"share this one core")

    lines += ["", "details and checks:"]
    for key, label, t0name in (("drop_strong", "strong put", "put return"),
                               ("drop_eventual", "eventual put + flush", "flush return"),
                               ("drop_coh", "strong put, coherence=strong", "put return")):
        d = r[key]
        lines.append(
            f"  {label}: {d['rounds']} rounds x {READERS} readers = {d['n']:,} drops (+{d['timeouts']} not dropped "
            f"within {DROP_DEADLINE_S:.0f} s); from {t0name}: p50/p99/max {ms(d['p50'])} / {ms(d['p99'])} / "
            f"{ms(d['max'])}; from the start of the put: p50/p99 {ms(d['call_p50'])} / {ms(d['call_p99'])}; "
            f"the writer's put{' + flush' if 'eventual' in key else ''} p50/p99 {ms(d['write_p50'])} / "
            f"{ms(d['write_p99'])}; already dropped at the first check: {d['at_first']:,}; checks: reader did not "
            f"cache the old value {d['not_cached']}, read a stale value after the drop {d['stale_after']}; "
            f"detection loop sweep every {d['sweep_us']:.0f} µs")
    lines.append(
        f"  invalidate: {inv['iters']} calls (after warm-up); results with missing != (): {inv['incomplete']}; "
        f"acked clients per call {inv['acked_min']}..{inv['acked_max']} (the {READERS} holders + the invalidating "
        f"client, whose coherence thread must poll past the message too); holders still serving the key when "
        f"invalidate returned: {inv['not_dropped']}; holders that had not cached it: {inv['not_cached']}; "
        f"max {ms(inv['max'])}" + (f"; first bad results: {inv['bad']}" if inv["bad"] else ""))
    alone = r["invalidate_alone"]
    lines.append(
        f"  invalidate while the invalidating client is the only one registered (before the readers existed): "
        f"p50/p99 {ms(alone['p50'])} / {ms(alone['p99'])} ({ratio(alone['p50'] / rtt)} bare), {alone['iters']} "
        f"calls, incomplete {alone['incomplete']}: each further registered client adds its poll answer and "
        f"re-poll to the path (~{(inv['p50'] - alone['p50']) / READERS * 1000:.2f} ms per client here)")
    lines.append(
        f"  fan-out: {fan['n']:,} invalidations in {fan['n'] // fan['batch']} batches of {fan['batch']:,}, "
        f"published in {ms(fan['t_pub'])}; every client done after {fan['t_end']:.2f} s (first {fan['first_done']:.2f}"
        f" s, median {fan['median_done']:.2f} s); delivered {fan['total']:,} of {fan['expected']:,}; "
        f"unfinished clients {fan['unfinished']}; gaps {fan['gaps']}; {fan['polls']:,} polls "
        f"({fan['total'] / max(1, fan['polls']):,.0f} messages each, at most {MAX_POLL_MESSAGES:,}); "
        f"the seed entry every client cached was dropped by none of them (still cached in "
        f"{fan['seed_hit']}/{fan['clients']}, as it should be: its key was not invalidated)")
    pat = r["pattern"]
    lines.append(
        f"  invalidate_pattern (public API, coherence {r['coherence']}: broadcast) over {pat['n']:,} cached keys "
        f"of '{FAN_DOMAIN}', {pat['clients']} clients: returned {pat['count']:,} after {ms(pat['t_call'])}; every "
        f"client processed {pat['per_client_min']:,}..{pat['per_client_max']:,} messages (the pattern's {pat['n']:,} "
        f"+ the source deletes' write notifications) after {pat['t_end']:.2f} s = {fmt_rate(pat['rate'])} "
        f"deliveries; unfinished {pat['unfinished']}; gaps {pat['gaps']}")
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

    rtt_iters = 300 if q else 1000
    rounds = 30 if q else 200
    coh_rounds = 20 if q else 100
    inv_iters, inv_warmup = (50, 10) if q else (300, 30)
    fan_n, fan_batch = (10_000, 1000) if q else (50_000, 1000)
    pat_n = 2000 if q else 10_000

    r: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "git": git_revision(),
               "load_start": loadavg()}
    t_start = time.perf_counter()

    def step(s: str) -> None:
        print(f"  [{time.perf_counter() - t_start:6.1f} s] {s}", file=sys.stderr, flush=True)

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    namespace = f"bench_coh_{uuid.uuid4().hex[:8]}"
    meter = CpuMeter(namespace)
    system = None
    clients: list = []
    bare = None
    try:
        bare = BareDict.remote()
        ray.get(bare.put.remote("ready", 1), timeout=RAY_TIMEOUT)
        step("starting the memory system")
        system = erlmcp_ray.start(CONFIG, namespace=namespace)
        cfg = system.config
        r.update(coherence=cfg.cache_coordinator.coherence_level.value, inv_timeout=cfg.cache_coordinator.
                 invalidation_timeout, lease=cfg.cache_coordinator.lease_ms, poll_timeout=cfg.client.poll_timeout_s)
        writer = system.client()
        clients = [writer]
        coord = ray.get_actor(COORDINATOR, namespace=namespace)
        meter.label_actors()
        meter.start_gc_watch()
        for key, label, fn in (
            ("bare_start", "bare actor (start)", lambda: bare_rtt(bare, rtt_iters)),
            ("invalidate_alone", "sync invalidate, 1 client",
             lambda: bench_invalidate(writer, [], inv_iters // 3, inv_warmup)),
        ):
            step(label)
            with meter.phase(label):
                r[key] = fn()
        readers = [system.client() for _ in range(READERS)]
        clients += readers

        phases = [
            ("drop_strong", "drop after strong put", lambda: bench_drop(writer, readers, "strong", rounds, "s")),
            ("drop_eventual", "drop after eventual+flush",
             lambda: bench_drop(writer, readers, "eventual", rounds, "e")),
            ("drop_coh", "drop, coherence=strong", lambda: bench_drop(writer, readers, "coh-strong", coh_rounds, "c")),
            ("invalidate", "sync invalidate", lambda: bench_invalidate(writer, readers, inv_iters, inv_warmup)),
        ]
        for key, label, fn in phases:
            step(label)
            with meter.phase(label):
                r[key] = fn()
        step(f"{FAN_CLIENTS} clients")
        clients += [system.client() for _ in range(FAN_CLIENTS - len(clients))]
        for key, label, fn in (
            ("fanout", f"fan-out to {FAN_CLIENTS}", lambda: bench_fanout(clients, coord, fan_n, fan_batch)),
            ("pattern", "invalidate_pattern", lambda: bench_pattern(clients, pat_n)),
            ("ceiling", "1-thread apply ceiling", lambda: apply_ceiling(fan_n, fan_batch)),
            ("bare_end", "bare actor (end)", lambda: bare_rtt(bare, rtt_iters)),
        ):
            step(label)
            with meter.phase(label):
                r[key] = fn()
        r["total_s"] = time.perf_counter() - t_start
        r["load_end"] = loadavg()
        step("done")
    finally:
        meter.stop_gc_watch()
        close_all(clients)
        if system is not None:
            erlmcp_ray.shutdown(namespace)
        if bare is not None:
            ray.kill(bare)
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
