"""The shared ledger from Python: ``ReservationScheduler(shared=...)``.

Run: python benches/bench_shared_ledger.py [--seconds 2] [--procs 4]
Not a test: nothing here asserts on time. All numbers come from one run, so
their ratios are comparable on a noisy machine:

* grant+release per second, one process: ``_reserve`` + ``_release_grant``
  (a grant and its release, the ``lease`` path) and the cjm cycle
  ``allocate`` + ``on_execution_start`` + ``on_execution_finish``; the same
  on a private ``ReservationScheduler`` for scale;
* grant+release per second, N processes contending on one ledger (each
  process its own scheduler, all needs fit at once: the cost is the lock);
* wake latency across processes: a release in this process -> the waiter's
  ``allocate`` returns in another (its poll interval is 60 s, so only the
  wake-up can end the wait), median and p90 of 50;
* bytes per grant in the ledger file, with 1,000 grants held.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import plugin_scheduling as ps

logging.disable(logging.CRITICAL)

CARD = 1_000_000.0
STATS = ps.SimulatedSystem(gpus=[CARD]).snapshot()  # one reading, reused: the cost is the ledger's


def stats() -> dict:
    return STATS


def meta(name: str, vram: float = 100.0) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram}})


def scheduler(ledger: str | None) -> ps.ReservationScheduler:
    kw = {"settle_s": 0, "headroom": 1.0, "timeout": 60, "poll_interval": 60}
    return ps.ReservationScheduler(shared=ledger, **kw) if ledger else ps.ReservationScheduler(**kw)


def rate(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def grant_release(s: ps.ReservationScheduler):
    m = meta("p")

    def cycle() -> None:
        s._release_grant(s._reserve(m, stats).id)

    return cycle


def cjm_cycle(s: ps.ReservationScheduler):
    m = meta("p")

    def cycle() -> None:
        s.allocate(m, stats)
        s.on_execution_start("p")
        s.on_execution_finish("p")

    return cycle


def child_contend(ledger: str, seconds: float, start_at: float) -> None:
    s = scheduler(ledger)
    cycle = grant_release(s)
    while time.time() < start_at:
        time.sleep(0.001)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cycle()
        n += 1
    print(n, flush=True)


def child_wait(ledger: str, rounds: int) -> None:
    s = scheduler(ledger)
    for _ in range(rounds):
        sys.stdin.readline()  # the parent holds the card now
        assert s.allocate(meta("waiter", CARD * 0.8), stats)
        woke = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        print(woke, flush=True)
        s.on_execution_finish("waiter")


def contend(ledger: str, procs: int, seconds: float) -> float:
    start_at = time.time() + 1.0
    children = [
        subprocess.Popen([sys.executable, __file__, "--child-contend", ledger, str(seconds), str(start_at)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    total = sum(int(c.communicate()[0]) for c in children)
    return total / seconds


def wake_latency(ledger: str, rounds: int) -> list[float]:
    s = scheduler(ledger)
    child = subprocess.Popen([sys.executable, __file__, "--child-wait", ledger, str(rounds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    lat = []
    for _ in range(rounds):
        holder = s._reserve(meta("holder", CARD * 0.8), stats)
        child.stdin.write("go\n")
        child.stdin.flush()
        while not ps._core._shared_ledger_view(ledger)["waiters"]:
            time.sleep(0.0005)
        time.sleep(0.002)  # let the waiter go to sleep
        released = time.monotonic()
        s._release_grant(holder.id)
        woke = float(child.stdout.readline())
        lat.append(woke - released)
        while ps._core._shared_ledger_view(ledger)["grants"]:  # the waiter has finished
            time.sleep(0.0005)
    child.wait()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--child-contend", nargs=3)
    ap.add_argument("--child-wait", nargs=2)
    args = ap.parse_args()
    if args.child_contend:
        ledger, seconds, start_at = args.child_contend
        return child_contend(ledger, float(seconds), float(start_at))
    if args.child_wait:
        return child_wait(args.child_wait[0], int(args.child_wait[1]))

    tmp = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    print(f"plugin-scheduling {ps.__version__}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    local, shared = scheduler(None), scheduler(str(tmp / "one"))
    for label, s in [("private", local), ("shared", shared)]:
        gr = rate(grant_release(s), args.seconds)
        cj = rate(cjm_cycle(s), args.seconds)
        print(f"{label:>8}: grant+release {gr:10,.0f}/s   allocate+start+finish {cj:10,.0f}/s")
    for procs in (1, args.procs):
        r = contend(str(tmp / f"contended-{procs}"), procs, args.seconds)
        print(f"{procs} process(es) contending on one ledger: grant+release {r:10,.0f}/s in all")
    lat = sorted(wake_latency(str(tmp / "wake"), 50))
    print(f"wake latency across processes (release -> other process's allocate returns): "
          f"median {statistics.median(lat) * 1e6:,.0f} us, p90 {lat[int(len(lat) * 0.9)] * 1e6:,.0f} us")
    many = scheduler(str(tmp / "many"))
    for i in range(1000):
        many._reserve(meta(f"p{i}"), stats)
    size = (tmp / "many").stat().st_size
    print(f"ledger file with 1,000 grants: {size:,} bytes ({size / 1000:,.0f} B per grant)")
    many_rate = rate(grant_release(many), args.seconds / 2)
    print(f"grant+release with 1,000 grants held: {many_rate:10,.0f}/s")


if __name__ == "__main__":
    main()
