"""An async web app's request handler, without a web framework.

Each "request" needs a model on the GPU. A QueueScheduler makes requests wait
(without blocking the event loop) until a simulated 24 GB GPU has room; a
finishing request wakes the waiters at once. With FastHTML or Starlette the
handler body is the same: `await scheduler.allocate_async(meta, stats)`.

Run: python examples/async_app.py
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from plugin_scheduling import QueueScheduler, SimulatedSystem

gpu = SimulatedSystem(gpus=[24_000])
scheduler = QueueScheduler(timeout=30, poll_interval=5)


def model(name: str, vram_mb: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram_mb}})


async def handle(request_id: int, meta: SimpleNamespace, started: float) -> str:
    if not await scheduler.allocate_async(meta, gpu.snapshot_async):
        return f"request {request_id}: 503 busy"
    gpu.occupy(meta.manifest["resources"]["min_gpu_vram_mb"])
    scheduler.on_execution_start(meta.name)
    try:
        await asyncio.sleep(0.2)  # inference
        return f"request {request_id}: 200 from {meta.name} at {time.monotonic() - started:.2f}s"
    finally:
        gpu.free(meta.manifest["resources"]["min_gpu_vram_mb"])
        scheduler.on_execution_finish(meta.name)


async def main() -> None:
    started = time.monotonic()
    requests = [handle(i, model(f"llm-{i}", 10_000), started) for i in range(5)]
    for line in await asyncio.gather(*requests):
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
