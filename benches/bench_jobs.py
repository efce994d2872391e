"""Job scheduler speed and memory: submit rate (in memory, SQLite batched and sync),
RSS of 100,000 queued jobs, dispatch rate with a long queue, dispatch
latency after a release.

    python benches/bench_jobs.py            # everything
    python benches/bench_jobs.py dispatch   # only the dispatch-rate table
    python benches/bench_jobs.py dispatch sjf "deadline:deadlines 1 h"   # only those rows

Dispatch rate (issue 24 #10): a table with N jobs queued (1 CPU core each) on
a 1-core machine; each round is one admission pass (one job starts) and that
job's completion, so every job started costs a whole pass with N waiting.
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

import psutil

from plugin_scheduling import SimulatedSystem
from plugin_scheduling._core import JobTable
from plugin_scheduling.jobs import JobScheduler, ResourceRequirements

N = 100_000


def submit_rate(journal, durability: str = "batched", n: int = N) -> float:
    s = JobScheduler(
        "priority", journal=journal, cpu_cores=1, durability=durability, stats_provider=SimulatedSystem(gpus=[]).snapshot_async
    )
    req = ResourceRequirements(cpu_cores=1, memory_mb=100)
    t0 = time.perf_counter()
    for i in range(n):
        s.submit_job("batch_processor", priority=i % 10, requirements=req, estimated_duration=1.0)
    s.flush()
    rate = n / (time.perf_counter() - t0)
    s.close()
    return rate


def rss_of_queued() -> float:
    proc = psutil.Process()
    before = proc.memory_info().rss
    s = JobScheduler("fifo", journal=None, cpu_cores=1, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    for _ in range(N):
        s.submit_job("m")
    after = proc.memory_info().rss
    assert s.get_scheduler_stats()["queued_jobs"] == N
    return (after - before) / 2**20


async def dispatch_latency(samples: int = 200) -> tuple[float, float]:
    """From a job's end to the next job running, with 10,000 jobs waiting."""
    s = JobScheduler("priority", journal=None, cpu_cores=1, poll_interval=10.0, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    started: dict[int, float] = {}
    ended: dict[int, float] = {}

    async def quick(ctx):
        started[ctx.job_id] = time.perf_counter()
        await asyncio.sleep(0)
        ended[ctx.job_id] = time.perf_counter()

    ids = [s.submit_job("q", run=quick) for _ in range(10_000)]
    await s.start()
    while len(ended) < samples + 1:
        await asyncio.sleep(0.001)
    await s.stop()
    gaps = [started[b] - ended[a] for a, b in zip(ids, ids[1:]) if a in ended and b in started]
    gaps = gaps[:samples]
    return statistics.median(gaps) * 1e3, sorted(gaps)[int(len(gaps) * 0.95)] * 1e3


# Workload variants: (deadline in s or None, declared estimate or None, users).
VARIANTS = {
    "": (None, 1.0, 0),
    "no estimates": (None, None, 0),
    "deadlines 1 h": (3600.0, 1.0, 0),
    "100 users": (None, 1.0, 100),
}


def dispatch_rate(policy: str, queued: int, rounds: int = 2000, budget_s: float = 2.0, variant: str = "") -> float:
    """Jobs started per second, one per pass, with ``queued`` jobs waiting
    (``rounds`` passes, or fewer if they take longer than ``budget_s``)."""
    deadline, estimate, users = VARIANTS[variant]
    t = JobTable(policy)
    for i in range(queued + rounds):
        user = f"u{i % users}" if users else None
        # Deadlines spread over [deadline, 2·deadline): windows open as it runs.
        d = deadline * (1 + (i % 1000) / 1000) if deadline is not None else None
        t.submit("m", float(i % 100), d, estimate, None, user, None, None, 1.0, 100.0, 0, 0.0, "simulated", "", 0)

    def take(job_id: int, module: str, gpu_count: int, vram_mb: float, memory_mb: float) -> bool:
        return True

    t0 = time.perf_counter()
    done = 0
    while done < rounds and (done < 10 or time.perf_counter() - t0 < budget_s):
        started, _blocked, _skipped, _head_start, error = t.dispatch(1.0, 0, 1e6, take)
        assert error is None and len(started) == 1
        t.transition(started[0][0], "COMPLETED", "finish")
        done += 1
    return done / (time.perf_counter() - t0)


def dispatch_table() -> None:
    sizes = tuple(int(n) for n in os.environ.get("SIZES", "20000,50000,100000,200000").split(","))
    print("dispatch rate, jobs/s (one job per pass, 1-core machine, N queued):")
    print(f"  {'policy':<30}" + "".join(f"{n:>12,}" for n in sizes))
    policies = sys.argv[2:] or [
        "fifo", "priority", "best_effort_fifo", "backfill", "las",
        "round_robin", "round_robin:100 users", "fair_share", "fair_share:100 users",
        "sjf", "sjf:no estimates", "deadline", "deadline:deadlines 1 h", "multifactor", "multifactor:100 users",
    ]
    for row in policies:
        policy, _, variant = row.partition(":")
        label = f"{policy} ({variant})" if variant else policy
        rates = "".join(f"{dispatch_rate(policy, n, variant=variant):>12,.0f}" for n in sizes)
        print(f"  {label:<30}" + rates, flush=True)


def main() -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if sys.argv[1:2] == ["dispatch"]:
        dispatch_table()
        return
    print(f"submit, journal in memory: {submit_rate(None):,.0f} jobs/s")
    with tempfile.TemporaryDirectory() as d:
        print(f"submit, SQLite journal, durability='batched': {submit_rate(os.path.join(d, 'jobs.db')):,.0f} jobs/s")
        print(f"submit, SQLite journal, durability='sync': {submit_rate(os.path.join(d, 'sync.db'), 'sync', 20_000):,.0f} jobs/s")
    print(f"RSS of {N:,} queued jobs: {rss_of_queued():.1f} MB")
    p50, p95 = asyncio.run(dispatch_latency())
    print(f"dispatch after a release (10,000 waiting): median {p50:.3f} ms, p95 {p95:.3f} ms")
    dispatch_table()


if __name__ == "__main__":
    main()
