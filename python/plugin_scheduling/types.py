"""Types of the stats dicts and string options, for annotations::

    from plugin_scheduling.types import SystemStats

    def free_vram(stats: SystemStats) -> float:
        return stats["gpu_free_memory_mb"] or 0.0

``SystemStats`` is what ``SystemMonitor`` and ``SimulatedSystem`` return (the cjm
``SystemStats`` keys plus ``details``). At run time these are plain ``dict``s.
"""

from __future__ import annotations

from typing import List, Literal, Optional, TypedDict

__all__ = [
    "GpuDeviceStats",
    "GpuProcessStats",
    "OnMissingStats",
    "PolicyName",
    "StatsDetails",
    "SystemStats",
]


class GpuProcessStats(TypedDict):
    """A compute process on a GPU (``used_gpu_mb`` is ``None`` when the driver
    cannot attribute memory; ``name``/``command`` when the process is visible)."""

    pid: int
    used_gpu_mb: Optional[float]
    name: Optional[str]
    command: Optional[str]


class GpuDeviceStats(TypedDict):
    """One device of ``details['gpus']``."""

    index: int
    uuid: str
    name: str
    memory_total_mb: float
    memory_free_mb: float
    memory_used_mb: float
    utilization_gpu_percent: Optional[float]
    utilization_memory_percent: Optional[float]
    temperature_c: Optional[float]
    power_w: Optional[float]
    processes: List[GpuProcessStats]


class StatsDetails(TypedDict):
    """``details``: the per-device breakdown and where it comes from."""

    gpus: List[GpuDeviceStats]
    gpu_source: Literal["nvml", "simulated"]
    gpu_unavailable: Optional[str]


class SystemStats(TypedDict):
    """The stats dict: GPU totals summed over devices, load the maximum, GPU
    figures ``None`` without a GPU."""

    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    memory_available_mb: float
    gpu_type: Literal["NVIDIA", "None"]
    gpu_free_memory_mb: Optional[float]
    gpu_total_memory_mb: Optional[float]
    gpu_used_memory_mb: Optional[float]
    gpu_load_percent: Optional[float]
    details: StatsDetails


#: ``ReservationScheduler(on_missing_stats=...)``.
OnMissingStats = Literal["allow", "block"]

#: ``ReservationScheduler(policy=...)`` by name (see ``plugin_scheduling.policies``).
PolicyName = Literal[
    "fifo",
    "best_effort_fifo",
    "priority",
    "fair_share",
    "deadline",
    "sjf",
    "round_robin",
    "backfill",
    "multifactor",
    "las",
]
