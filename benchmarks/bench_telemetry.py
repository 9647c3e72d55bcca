"""What telemetry costs on the hot path: metrics off vs on, in the same run.

Run:  python benchmarks/bench_telemetry.py [--rounds 5] [--out benchmarks/results/telemetry.txt]

A local Ray and one memory system; one client. Measured per op (median and p99 of batches of 500):
an L0 hit (`get` of a key this client holds) and the caller's cost of an eventual `put`. First with
no telemetry, then with ``Telemetry`` on an SDK ``MeterProvider`` whose periodic reader collects every
``--interval-ms`` (default 100 ms: 50x more often than a usual 5-60 s interval, so that collections
overlap the measurement) into a counting exporter, then off again; alternated for ``--rounds``. Targets (issue 12): L0 hit median
<= 1 us and within 10 % of uninstrumented; eventual put within 10 %.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, git_revision, per_op_median_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval-ms", type=int, default=100, help="the periodic reader's collection interval")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import ray
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    class CountingExporter(MetricExporter):
        """Takes every export (the collection did all the work) and counts it."""

        def __init__(self) -> None:
            super().__init__()
            self.exports = 0

        def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
            self.exports += 1
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
            pass

    import erlmcp_ray
    from erlmcp_ray.telemetry import Telemetry

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    cfg = {"durable": {"kind": "sqlite", "data_dir": tempfile.mkdtemp(prefix="bench_tel_")},
           "distributed_memory": {"checkpoint_interval": 0}, "persistence_selector": {"auto_select": False},
           "domains": {"notes": {"backend": "replicated", "max_bytes": "512MB", "shards": 2}}}
    system = erlmcp_ray.start(cfg, namespace="bench_telemetry")
    client = system.client()
    client.put("notes", "hot", {"v": 1}, consistency="strong")
    client.get("notes", "hot")
    keys = [f"k{i}" for i in range(1000)]
    n = [0]

    def l0_get() -> None:
        client.get("notes", "hot")

    def eventual_put() -> None:
        n[0] += 1
        client.put("notes", keys[n[0] % 1000], n[0])

    results: dict[str, dict[str, list]] = {"off": {"l0": [], "put": []}, "on": {"l0": [], "put": []}}
    exporter = CountingExporter()
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            telemetry = provider = None
            if mode == "on":
                provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(
                    exporter, export_interval_millis=args.interval_ms)])
                telemetry = Telemetry(client, provider, refresh_s=0.1)
                time.sleep(0.3)
            results[mode]["l0"].append(per_op_median_us(l0_get, batches=400))
            results[mode]["put"].append(per_op_median_us(eventual_put, batches=100))
            client.flush(timeout=120)
            if telemetry is not None:
                telemetry.close()
                provider.shutdown()
    client.close()
    erlmcp_ray.shutdown("bench_telemetry", purge=True)
    ray.shutdown()

    def summary(mode: str, what: str) -> tuple[float, float]:
        meds = [m for m, _ in results[mode][what]]
        p99s = [p for _, p in results[mode][what]]
        return statistics.median(meds), statistics.median(p99s)

    lines = [f"# bench_telemetry -- {_dt.datetime.now().isoformat(timespec='seconds')} -- rev {git_revision()}",
             f"# command: python benchmarks/{os.path.basename(__file__)} {shlex.join(sys.argv[1:])}",
             (f"# one local Ray on 2 cores; {args.rounds} rounds, off and on alternated; 'on': a periodic reader "
             f"collecting every {args.interval_ms} ms ({exporter.exports} exports during the 'on' rounds)"), ""]
    for what, label in (("l0", "L0 get (hit)"), ("put", "eventual put (caller)")):
        off, on = summary("off", what), summary("on", what)
        ratio = on[0] / off[0]
        target = (on[0] <= 1.0 if what == "l0" else True) and ratio <= 1.10
        lines.append(f"{label:24} off {off[0]:6.2f} us (p99 {off[1]:6.2f})   on {on[0]:6.2f} us (p99 {on[1]:6.2f})"
                     f"   on/off {ratio:4.2f}   target met: {'yes' if target else 'NO'}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
