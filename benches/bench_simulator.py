"""Simulator speed: a 1,000,000-job Gavel-like trace on 1,024 GPUs.

Run: python benches/bench_simulator.py [--jobs N] [--policies fifo,best_effort_fifo,backfill]

The trace (default generator: Poisson arrivals at 30 jobs/hour, 1/2/4/8
GPUs at 70/10/15/5 %, Gavel's log-uniform durations; offered load ≈ 0.94 of
1,024 GPUs) is written to a temporary CSV once. Each policy then runs in its
own process (so peak RSS is that policy's alone): read the CSV, simulate,
compute metrics. Reported: seconds to simulate (excluding the CSV read),
jobs per second, the read time, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from plugin_scheduling import simulator
path, policy = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
trace = simulator.load_trace(path)
t1 = time.perf_counter()
r = simulator.simulate(trace, gpus=1024, policy=policy)
t2 = time.perf_counter()
print(json.dumps({
    "policy": policy, "jobs": len(trace), "read_s": t1 - t0, "simulate_s": t2 - t1,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "gpu_utilization": r.metrics["gpu_utilization"], "avg_wait_s": r.metrics["avg_wait_s"],
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--policies", default="fifo,best_effort_fifo,backfill")
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.csv")
        subprocess.run(
            [sys.executable, "-m", "plugin_scheduling", "trace", "generate",
             "--jobs", str(args.jobs), "--seed", "1", "-o", path],
            check=True,
        )
        print(f"{'policy':<18}{'simulate s':>11}{'jobs/s':>12}{'read s':>8}{'peak RSS MB':>13}{'util':>7}{'avg wait s':>12}")
        for policy in args.policies.split(","):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, path, policy],
                check=True, capture_output=True, text=True,
            ).stdout
            r = json.loads(out)
            print(
                f"{r['policy']:<18}{r['simulate_s']:>11.2f}{r['jobs'] / r['simulate_s']:>12,.0f}"
                f"{r['read_s']:>8.2f}{r['peak_rss_mb']:>13.0f}{r['gpu_utilization']:>7.3f}{r['avg_wait_s']:>12,.0f}"
            )


if __name__ == "__main__":
    main()
