"""A Starlette app whose requests run a 10 GB plugin on one 24 GB card, for
``uvicorn --workers 4`` in ``test_shared_scheduler.py``.

Each worker process has its own ``ReservationScheduler(shared=LEDGER)`` and
its own ``SimulatedSystem`` reading. The simulated readings are not linked:
every worker sees the whole card free, as NVML shows a card while the models
the other workers just admitted are still loading. So nothing but the shared
ledger keeps the four workers from over-committing the card; the file
``TRACKER`` counts what is really "running" across the workers.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plugin_scheduling import ReservationScheduler, SimulatedSystem

from shared_ledger_worker import CARD_MB, track

LEDGER = os.environ["SHARED_LEDGER"]
TRACKER = Path(os.environ["SHARED_TRACKER"])
scheduler = ReservationScheduler(shared=LEDGER, settle_s=0, headroom=1.0, timeout=120, poll_interval=1)
machine = SimulatedSystem(gpus=[CARD_MB])
plugin = SimpleNamespace(name="llm", manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 10_000}})


async def run(request: Request) -> JSONResponse:
    async with scheduler.lease_async(plugin, machine.snapshot_async):
        held = track(TRACKER, 10_000)
        try:
            await asyncio.sleep(0.01)  # the plugin "runs"
        finally:
            track(TRACKER, -10_000)
    return JSONResponse({"pid": os.getpid(), "held": held})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = Starlette(routes=[Route("/run", run), Route("/health", health)])
