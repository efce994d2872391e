"""Two plugins, one GPU: the seed's check-then-act admits both (and the second
would die of out-of-memory); ReservationScheduler admits one at a time.

Run: python examples/reservations.py
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

from plugin_scheduling import ReservationScheduler, SafetyScheduler, SimulatedSystem


def gpu_plugin(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 12_000}})


def admitted_together(scheduler) -> list[str]:
    gpu = SimulatedSystem(gpus=[20_000])  # the readings still show it free
    admitted: list[str] = []
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        barrier.wait()  # both check at the same moment
        if scheduler.allocate(gpu_plugin(name), gpu):
            admitted.append(name)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("whisper", "llama")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return admitted


if __name__ == "__main__":
    print("SafetyScheduler admits:      ", admitted_together(SafetyScheduler()))
    reservations = ReservationScheduler(timeout=0.2, poll_interval=0.1)
    print("ReservationScheduler admits: ", admitted_together(reservations))
    print(reservations.snapshot()["grants"])
