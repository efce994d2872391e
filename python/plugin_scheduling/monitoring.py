"""Monitoring history (GRANGER's Resource Optimization Scheduler): ``MonitorHistory`` (a bounded ring buffer
of samples with disk and network I/O rates, ``history()``, ``trend()`` and a
least-squares ``predict(metric, seconds_ahead)``) and an optional sampler.

    history = MonitorHistory(capacity=600)
    task = asyncio.create_task(sample(history, SystemMonitor().snapshot_async, interval=1.0))
    ...
    history.predict("memory_used_mb", 60)   # MB expected in a minute
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Mapping

from ._core import METRICS_NAMES as METRICS
from ._core import MonitorHistory

__all__ = ["METRICS", "MonitorHistory", "sample"]


async def sample(
    history: MonitorHistory,
    stats_provider: Callable[[], Awaitable[Mapping[str, Any]]],
    interval: float = 1.0,
    *,
    count: int | None = None,
) -> int:
    """Records a sample every ``interval`` seconds (``count`` times, or until
    cancelled); the number recorded."""
    if not (interval > 0):
        raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
    done = 0
    while count is None or done < count:
        history.record(await stats_provider())
        done += 1
        if count is None or done < count:
            await asyncio.sleep(interval)
    return done
