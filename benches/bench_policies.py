"""Speed of the reservation queue and its policies (issue: policies on a real seam).

    python benches/bench_policies.py

Measures, in one run:
1. an ordering decision (whose turn is it, ``ReservationWait.my_turn``) with
   1,000 and 10,000 waiting, per policy;
2. one allocate+release with 0 and with 100,000 grants held (settle_s=0);
3. 8 threads doing grant+release, fifo and priority;
4. filling 100,000 grants.

Numbers are per call from Python (the call's own overhead included).
"""

from __future__ import annotations

import statistics
import threading
import time
from types import SimpleNamespace

from plugin_scheduling import ReservationScheduler

BIG = {
    "memory_total_mb": 1e12,
    "memory_available_mb": 1e12,
    "details": {"gpus": [{"index": i, "memory_total_mb": 1e12, "memory_free_mb": 1e12} for i in range(8)]},
}
FULL = {
    "memory_total_mb": 1e12,
    "memory_available_mb": 1e12,
    "details": {"gpus": [{"index": 0, "memory_total_mb": 1000.0, "memory_free_mb": 0.0}]},
}


def meta(name, vram=1.0, priority=50):
    return SimpleNamespace(
        name=name,
        manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram}, "scheduling": {"priority": priority}},
    )


def per_call(fn, n):
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n)
    return min(best), statistics.median(best)


def decisions(policy, waiting):
    s = ReservationScheduler(timeout=60, policy=policy, settle_s=0)
    waits = [s._begin_wait(meta(f"w{i}", 10.0, priority=i % 101)) for i in range(waiting)]
    probe = waits[-1]
    best, med = per_call(probe.my_turn, 2000 if waiting <= 1000 else 500)
    for w in waits:
        w.leave()
    return best, med


def allocate_release(held):
    s = ReservationScheduler(timeout=60, settle_s=0, start_timeout=3e7, headroom=1.0)
    provider = lambda: BIG  # noqa: E731
    t0 = time.perf_counter()
    grants = [s._reserve(meta("filler"), provider) for _ in range(held)]
    fill = time.perf_counter() - t0
    m = meta("probe")

    def once():
        g = s._reserve(m, provider)
        s._release_grant(g.id)

    best, med = per_call(once, 2000)
    for g in grants:
        s._release_grant(g.id)
    return best, med, fill


def threads(policy, n_threads=8, per_thread=5000):
    s = ReservationScheduler(timeout=60, settle_s=0, policy=policy, headroom=1.0)
    provider = lambda: BIG  # noqa: E731

    def work(i):
        m = meta(f"t{i}", priority=(i * 13) % 101)
        for _ in range(per_thread):
            g = s._reserve(m, provider)
            s._release_grant(g.id)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n_threads * per_thread / (time.perf_counter() - t0)


def main():
    print("ordering decision (my_turn), per call:")
    for policy in ["fifo", "priority", "fair_share", "sjf", "deadline", "multifactor"]:
        for waiting in (1000, 10_000):
            best, med = decisions(policy, waiting)
            print(f"  {policy:12s} {waiting:>6} waiting: {best * 1e6:7.2f} µs (median {med * 1e6:.2f}) = {1 / best / 1e6:.2f}M decisions/s")
    print("allocate+release, per call:")
    base, base_med, _ = allocate_release(0)
    loaded, loaded_med, fill = allocate_release(100_000)
    print(f"  0 grants held:       {base * 1e6:6.2f} µs (median {base_med * 1e6:.2f})")
    print(f"  100,000 grants held: {loaded * 1e6:6.2f} µs (median {loaded_med * 1e6:.2f}) = {loaded / base:.2f}x")
    print(f"  filling 100,000 grants: {fill:.2f} s")
    for policy in ["fifo", "priority"]:
        print(f"8 threads grant+release, {policy}: {threads(policy) / 1000:.0f}k/s")


if __name__ == "__main__":
    main()
