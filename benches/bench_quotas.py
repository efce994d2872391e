"""Quota backends: check + allocate + release cycles per second (SQLite file,
PostgreSQL server) and the time of one Slurm sync (``get_quota``: sacctmgr +
scontrol against a live cluster).

Run: python benches/bench_quotas.py [--cycles N] [--no-slurm]
(needs ``pip install '.[test]'``; starts its own PostgreSQL and single-node
Slurm through tests/services.py, installing them with apt when missing, as
the tests do). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402

from plugin_scheduling.quotas import (  # noqa: E402
    JobTypeEnum,
    LocalQuotaProvider,
    QuotaProvider,
    Resources,
    SlurmQuotaProvider,
)

JOB = Resources(cpu=1, memory=2, gpu=1)
T = JobTypeEnum.TRAINING


def cycles_per_s(provider: QuotaProvider, project: str, cycles: int, threads: int = 1) -> float:
    provider.set_quota(project, cpu_quota=10_000, memory_quota=10_000, gpu_quota=10_000)

    def work() -> None:
        for _ in range(cycles):
            provider.check_quota(project, JOB, T)
            if provider.allocate_quota(project, JOB, T):
                provider.release_quota(project, JOB, T)

    runners = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    return cycles * threads / (time.perf_counter() - start)


def best_of(fn, repeat: int = 3) -> float:
    return max(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--no-slurm", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'backend':<34}{'cycles/s':>10}   (one cycle = check + allocate + release)")
    with tempfile.TemporaryDirectory() as tmp:
        lite = LocalQuotaProvider(path=Path(tmp) / "q.db")
        print(f"{'sqlite, 1 thread':<34}{best_of(lambda: cycles_per_s(lite, 'b', args.cycles)):>10.0f}")
        print(f"{'sqlite, 4 threads':<34}{best_of(lambda: cycles_per_s(lite, 'b', args.cycles // 4, 4)):>10.0f}")
    if services.ensure_packages(services.POSTGRES_PACKAGES, services.missing_postgres) is None:
        server = services.PostgresServer().start()
        try:
            pg = LocalQuotaProvider(dsn=server.dsn)
            print(f"{'postgresql (loopback), 1 thread':<34}{best_of(lambda: cycles_per_s(pg, 'b', args.cycles)):>10.0f}")
            print(f"{'postgresql, 4 providers':<34}", end="")
            pgs = [LocalQuotaProvider(dsn=server.dsn) for _ in range(4)]
            rates: list[float] = []

            def one(p: QuotaProvider) -> None:
                rates.append(cycles_per_s(p, "b4", args.cycles // 4))

            ts = [threading.Thread(target=one, args=(p,)) for p in pgs]
            [t.start() for t in ts]
            [t.join() for t in ts]
            print(f"{sum(rates):>10.0f}")
        finally:
            server.stop()
    if args.no_slurm:
        return
    reason = services.ensure_packages(services.SLURM_PACKAGES, services.missing_slurm)
    if reason is not None:
        print(f"slurm: skipped ({reason})")
        return
    cluster = services.SlurmCluster()
    start = time.perf_counter()
    cluster.start()
    print(f"slurm stack cold start: {time.perf_counter() - start:.1f} s")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            slurm = SlurmQuotaProvider(ledger=Path(tmp) / "ledger.db")
            slurm.set_quota("bench", gpu_quota=2, cpu_quota=2)
            syncs = []
            for _ in range(20):
                t0 = time.perf_counter()
                slurm.get_quota("bench")
                syncs.append(time.perf_counter() - t0)
            cyc = []
            for _ in range(10):
                t0 = time.perf_counter()
                slurm.check_quota("bench", JOB, T)
                if slurm.allocate_quota("bench", JOB, T):
                    slurm.release_quota("bench", JOB, T)
                cyc.append(time.perf_counter() - t0)
            print(
                f"slurm sync (get_quota) median {statistics.median(syncs) * 1000:.0f} ms, "
                f"min {min(syncs) * 1000:.0f} ms; check+allocate+release median "
                f"{statistics.median(cyc) * 1000:.0f} ms ({1 / statistics.median(cyc):.1f} cycles/s)"
            )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
