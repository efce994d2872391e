"""Wake latency: from ``on_execution_finish`` to the waiter's ``allocate`` returning.

Run: python benches/bench_wake.py
The reference QueueScheduler cannot be woken; it notices freed memory on its
next poll, so its latency is spread over [0, poll_interval] (measured here with
poll_interval=0.05 s to keep the run short). Not a test: nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from types import SimpleNamespace

import cjm_plugin_system.core.scheduling as ref

import plugin_scheduling as ours

logging.disable(logging.CRITICAL)

META = SimpleNamespace(name="p", manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 100}})
BUSY = {"gpu_free_memory_mb": 0}
FREE = {"gpu_free_memory_mb": 1000}


def sync_latency(scheduler, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        state = {"stats": BUSY}
        done = threading.Event()
        returned = [0.0]

        def waiter() -> None:
            scheduler.allocate(META, lambda: state["stats"])
            returned[0] = time.perf_counter()
            done.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.002)  # let it block
        state["stats"] = FREE
        released = time.perf_counter()
        scheduler.on_execution_finish("other")
        done.wait()
        thread.join()
        samples.append(returned[0] - released)
    return samples


def async_latency(scheduler, rounds: int) -> list[float]:
    async def run() -> list[float]:
        samples = []
        for _ in range(rounds):
            state = {"stats": BUSY}

            async def provider():
                return state["stats"]

            task = asyncio.ensure_future(scheduler.allocate_async(META, provider))
            await asyncio.sleep(0.001)
            state["stats"] = FREE
            released = time.perf_counter()
            scheduler.on_execution_finish("other")
            await task
            samples.append(time.perf_counter() - released)
        return samples

    return asyncio.run(run())


def show(label: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e6
    p90 = samples[int(len(samples) * 0.9)] * 1e6
    print(f"{label:55} median {p50:9.1f} us   p90 {p90:9.1f} us")


def main() -> None:
    show("ours QueueScheduler.allocate (poll 30 s), thread", sync_latency(ours.QueueScheduler(60, 30), 300))
    show("ours QueueScheduler.allocate_async (poll 30 s), same loop", async_latency(ours.QueueScheduler(60, 30), 300))
    show("reference QueueScheduler.allocate (poll 0.05 s)", sync_latency(ref.QueueScheduler(60, 0.05), 40))
    show("reference QueueScheduler.allocate_async (poll 0.05 s)", async_latency(ref.QueueScheduler(60, 0.05), 40))


if __name__ == "__main__":
    main()
