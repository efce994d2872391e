"""Type-checked by tests/test_hardening.py (``mypy --strict``); also runs as is."""

import asyncio
from types import SimpleNamespace

from plugin_scheduling import (
    PermissiveScheduler,
    QueueScheduler,
    ReservationScheduler,
    ResourceScheduler,
    SafetyScheduler,
    SimulatedSystem,
    SystemMonitor,
)
from plugin_scheduling.types import SystemStats


def admit(scheduler: ResourceScheduler, meta: object) -> bool:
    return scheduler.allocate(meta, lambda: {"gpu_free_memory_mb": 8000.0})


schedulers: list[ResourceScheduler] = [
    PermissiveScheduler(),
    SafetyScheduler(),
    QueueScheduler(timeout=1.0, poll_interval=0.1),
    ReservationScheduler(timeout=1.0, on_missing_stats="block", policy="fifo"),
]
meta = SimpleNamespace(name="whisper", manifest={"resources": {}})
results: list[bool] = [admit(s, meta) for s in schedulers]

monitor = SystemMonitor(min_refresh=0.5)
stats: SystemStats = monitor()
free: float | None = stats["gpu_free_memory_mb"]
devices: list[int] = [gpu["index"] for gpu in stats["details"]["gpus"]]
sim = SimulatedSystem(gpus=[24_576.0], host=monitor)
ok: bool = QueueScheduler().allocate(meta, sim)


async def main() -> bool:
    return await QueueScheduler().allocate_async(meta, monitor.snapshot_async)


done: bool = asyncio.run(main())
