"""ReservationScheduler: grant+release throughput, wake latency, memory per entry.

Run: python benches/bench_reservation.py [--grants 100000] [--waiters 10000] [--quick]
Not a test: nothing here asserts on time. Sections:

* throughput, one thread: allocate + on_execution_start + on_execution_finish
  per cycle (stats: a cached dict), and the same with ``lease``; the reference
  QueueScheduler's pass path (allocate + start + finish) for scale;
* throughput, 8 threads: every need fits at once / only 2 fit at a time;
* wake latency: release -> the waiter's allocate returns (median / p90), a
  blocked thread and an async task, alone and with K more waiters in line
  behind it (every release wakes every waiter: the cost grows with K);
* memory: RSS (from /proc/self/statm; tracemalloc cannot see Rust memory)
  before/after holding N grants and N waiting entries; bytes per entry. Also
  how long filling took: each allocate scans every held grant.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import cjm_plugin_system.core.scheduling as ref

import plugin_scheduling as ps

logging.disable(logging.CRITICAL)  # the reference configures logging at import

PAGE = os.sysconf("SC_PAGE_SIZE")


def stats_dict(total_mb: float, free_mb: float | None = None, gpus: int = 1) -> dict:
    free_mb = total_mb if free_mb is None else free_mb
    return {
        "memory_total_mb": 1e9,
        "memory_available_mb": 1e9,
        "gpu_free_memory_mb": free_mb * gpus,
        "gpu_total_memory_mb": total_mb * gpus,
        "details": {
            "gpus": [{"index": i, "memory_total_mb": total_mb, "memory_free_mb": free_mb} for i in range(gpus)]
        },
    }


def meta(name: str, vram: float, ram: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram, "min_system_ram_mb": ram}}
    )


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


rows: list[tuple[str, str, str]] = []


def row(section: str, what: str, value: str) -> None:
    rows.append((section, what, value))
    print(f"{section:12} {what:62} {value}", flush=True)


# --------------------------------------------------------------------------- throughput


def single_thread(cycles: int) -> None:
    stats = stats_dict(24000)
    provider = lambda: stats  # noqa: E731
    m = meta("p", 4000, 1000)

    s = ps.ReservationScheduler()
    for _ in range(1000):  # warm up
        s.allocate(m, provider)
        s.on_execution_start("p")
        s.on_execution_finish("p")
    t0 = time.perf_counter()
    for _ in range(cycles):
        s.allocate(m, provider)
        s.on_execution_start("p")
        s.on_execution_finish("p")
    dt = time.perf_counter() - t0
    row("throughput", "1 thread: allocate+start+finish", f"{cycles / dt:10,.0f} cycles/s  ({dt / cycles * 1e6:.2f} us/cycle)")

    t0 = time.perf_counter()
    for _ in range(cycles):
        with s.lease(m, provider):
            pass
    dt = time.perf_counter() - t0
    row("throughput", "1 thread: with lease(...)", f"{cycles / dt:10,.0f} cycles/s  ({dt / cycles * 1e6:.2f} us/cycle)")

    r = ref.QueueScheduler()
    t0 = time.perf_counter()
    for _ in range(cycles):
        r.allocate(m, provider)
        r.on_execution_start("p")
        r.on_execution_finish("p")
    dt = time.perf_counter() - t0
    row("throughput", "1 thread: reference QueueScheduler (check only, no reservation)",
        f"{cycles / dt:10,.0f} cycles/s  ({dt / cycles * 1e6:.2f} us/cycle)")


def threaded(cycles_per_thread: int, n_threads: int, fits_at_once: int | None) -> None:
    # fits_at_once=None: a huge GPU, nobody waits; else the GPU holds that many needs.
    need = 4000.0
    total = 1e9 if fits_at_once is None else need * fits_at_once / 0.9 + 1
    stats = stats_dict(total)
    provider = lambda: stats  # noqa: E731
    s = ps.ReservationScheduler(timeout=60, poll_interval=30, settle_s=0)
    barrier = threading.Barrier(n_threads + 1)
    failures = []

    def worker(t: int) -> None:
        name = f"t{t}"
        m = meta(name, need)
        barrier.wait()
        for _ in range(cycles_per_thread):
            if not s.allocate(m, provider):
                failures.append(name)
                continue
            s.on_execution_start(name)
            s.on_execution_finish(name)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    total_cycles = cycles_per_thread * n_threads
    label = "all fit" if fits_at_once is None else f"{fits_at_once} fit at once"
    left = len(s.snapshot()["grants"]) + len(s.snapshot()["waiters"])
    row("throughput", f"{n_threads} threads, {label}",
        f"{total_cycles / dt:10,.0f} cycles/s  ({dt / total_cycles * 1e6:.2f} us/cycle; timeouts {len(failures)}, left {left})")


# --------------------------------------------------------------------------- wake latency


def pct(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e6
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))] * 1e6
    return f"median {p50:9.1f} us   p90 {p90:9.1f} us  (n={len(samples)})"


def sync_wake(rounds: int, behind: int) -> None:
    stats = stats_dict(10000)
    provider = lambda: stats  # noqa: E731
    samples = []
    for _ in range(rounds):
        s = ps.ReservationScheduler(timeout=60, poll_interval=30, headroom=1.0, settle_s=0)
        s.allocate(meta("holder", 10000), provider)
        s.on_execution_start("holder")
        returned = [0.0]

        def head() -> None:
            s.allocate(meta("head", 10000), provider)
            returned[0] = time.perf_counter()

        def other() -> None:
            if s.allocate(meta("other", 10000), provider):
                s.on_execution_finish("other")  # hand over to the next one

        h = threading.Thread(target=head)
        h.start()
        while len(s.snapshot()["waiters"]) < 1:
            time.sleep(0.0005)
        others = [threading.Thread(target=other, daemon=True) for _ in range(behind)]
        for o in others:
            o.start()
        while len(s.snapshot()["waiters"]) < 1 + behind:
            time.sleep(0.0005)
        time.sleep(0.002)
        released = time.perf_counter()
        s.on_execution_finish("holder")
        h.join()
        samples.append(returned[0] - released)
        s.on_execution_finish("head")  # the others then pass it on one by one
        for o in others:
            o.join(10)
    row("wake", f"thread waiter, {behind} more threads waiting behind", pct(samples))


def async_wake(rounds: int, behind: int) -> None:
    stats = stats_dict(10000)

    async def provider():
        return stats

    async def run() -> tuple[list[float], list[float]]:
        samples, settle = [], []
        for _ in range(rounds):
            s = ps.ReservationScheduler(timeout=60, poll_interval=30, headroom=1.0, settle_s=0)
            s.allocate(meta("holder", 10000), lambda: stats)
            s.on_execution_start("holder")
            returned = [0.0]

            async def head_waiter() -> None:
                await s.allocate_async(meta("head", 10000), provider)
                returned[0] = time.perf_counter()  # in the task itself: not after the others' steps

            head = asyncio.ensure_future(head_waiter())
            while s._pending_wakers() < 1:
                await asyncio.sleep(0)
            others = [asyncio.ensure_future(s.allocate_async(meta("other", 10000), provider)) for _ in range(behind)]
            while s._pending_wakers() < 1 + behind:
                await asyncio.sleep(0.0005)
            released = time.perf_counter()
            s.on_execution_finish("holder")
            await head
            samples.append(returned[0] - released)
            while s._pending_wakers() < behind:  # the rest are back asleep
                await asyncio.sleep(0)
            settle.append(time.perf_counter() - released)
            for o in others:
                o.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        return samples, settle

    samples, settle = asyncio.run(run())
    row("wake", f"async waiter, {behind} more tasks waiting behind", pct(samples))
    if behind:
        row("wake", f"  ... until all {behind} behind it are asleep again", pct(settle))


# --------------------------------------------------------------------------- memory


def memory_grants(n: int, gpu: bool) -> None:
    stats = stats_dict(1e12)
    provider = lambda: stats  # noqa: E731
    # gpu=False: a plugin with no declared needs (the cheapest grant to make).
    m = meta("plugin", 1, 1) if gpu else SimpleNamespace(name="plugin")
    s = ps.ReservationScheduler(start_timeout=1e7)
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    for _ in range(n):
        s.allocate(m, provider)
    fill = time.perf_counter() - t0
    gc.collect()
    after = rss()
    assert len(s.snapshot()["grants"]) == n
    kind = "GPU+RAM grants" if gpu else "grants without needs"
    row("memory", f"{n:,} {kind} held", f"{(after - before) / n:8.0f} B/entry   (RSS +{(after - before) / 2**20:.1f} MiB; filled in {fill:.1f} s)")
    t0 = time.perf_counter()
    s.allocate(m, provider)
    row("memory", f"  one more allocate with {n:,} held", f"{(time.perf_counter() - t0) * 1e3:8.2f} ms")
    del s
    gc.collect()


def memory_waiters(n: int) -> None:
    full = stats_dict(1000, 0)
    s = ps.ReservationScheduler(timeout=1e6, poll_interval=30)
    m = meta("w", 500)
    gc.collect()
    before = rss()
    first = s._begin_wait(m)
    assert first.offer(full) is None  # refused: now in line, so every later one joins
    waits = [first] + [s._begin_wait(m) for _ in range(n - 1)]
    gc.collect()
    after = rss()
    t0 = time.perf_counter()
    snap = s.snapshot()
    snap_s = time.perf_counter() - t0
    assert len(snap["waiters"]) == n
    row("memory", f"{n:,} waiting entries (incl. their ReservationWait objects)",
        f"{(after - before) / n:8.0f} B/entry   (RSS +{(after - before) / 2**20:.1f} MiB)")
    row("memory", f"  snapshot() with {n:,} waiting", f"{snap_s * 1e3:8.1f} ms")
    t0 = time.perf_counter()
    for w in waits[-100:]:
        w.my_turn()
    row("memory", f"  my_turn() with {n:,} waiting", f"{(time.perf_counter() - t0) / 100 * 1e6:8.1f} us/call")
    for w in waits:
        w.leave()
    assert s.snapshot()["waiters"] == []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grants", type=int, default=100_000)
    ap.add_argument("--gpu-grants", type=int, default=20_000)
    ap.add_argument("--waiters", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # one memory measurement, in a fresh process
    a = ap.parse_args()
    if a.quick:
        a.grants, a.gpu_grants, a.waiters = 5_000, 2_000, 1_000
    if a.section == "waiters":
        return memory_waiters(a.waiters)
    if a.section == "gpu-grants":
        return memory_grants(a.gpu_grants, gpu=True)
    if a.section == "grants":
        return memory_grants(a.grants, gpu=False)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"plugin_scheduling {ps.__version__}")
    single_thread(20_000 if a.quick else 100_000)
    threaded(500 if a.quick else 2_000, 8, None)
    threaded(500 if a.quick else 2_000, 8, 2)
    sync_wake(50 if a.quick else 200, 0)
    sync_wake(10 if a.quick else 30, 50)
    async_wake(50 if a.quick else 200, 0)
    async_wake(10 if a.quick else 30, 100)
    async_wake(3 if a.quick else 10, 1000)
    # Memory: each in a fresh process, so freed memory from above is not reused.
    for section in ("waiters", "gpu-grants", "grants"):
        subprocess.run(
            [sys.executable, __file__, "--section", section, "--waiters", str(a.waiters),
             "--gpu-grants", str(a.gpu_grants), "--grants", str(a.grants)],
            check=True,
        )


if __name__ == "__main__":
    main()
