"""Snapshot cost: SystemMonitor vs psutil for the same figures (RAM + CPU %).

Run: python benches/bench_stats.py
Both in one process, interleaved. `SystemMonitor(min_refresh=0)` reads the
machine on every call (no cache); the cached case is what concurrent callers
within `min_refresh` get. On a machine with an NVIDIA GPU the GPU part is
included in ours (NVML); compare with `nvidia-ml-py` there (see README).
"""

from __future__ import annotations

import platform
import timeit

import psutil

import plugin_scheduling as ps


def per_call_us(fn, number: int = 2000, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def psutil_same_figures() -> dict:
    vm = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used_mb": vm.used / 2**20,
        "memory_total_mb": vm.total / 2**20,
        "memory_available_mb": vm.available / 2**20,
    }


def main() -> None:
    print(f"# {platform.machine()}, Python {platform.python_version()}, {psutil.cpu_count()} CPUs")
    uncached = ps.SystemMonitor(min_refresh=0)
    cached = ps.SystemMonitor()
    uncached()
    cached()
    psutil_same_figures()
    rows = [
        ("psutil virtual_memory + cpu_percent", per_call_us(psutil_same_figures)),
        ("SystemMonitor(min_refresh=0)() full dict", per_call_us(uncached)),
        ("SystemMonitor() within min_refresh (cached)", per_call_us(cached, number=20000)),
        ("SimulatedSystem() full dict", per_call_us(ps.SimulatedSystem(gpus=[24576, 24576]), number=20000)),
    ]
    base = rows[0][1]
    for label, us in rows:
        print(f"{label:48} {us:8.2f} us   {us / base:5.2f}x psutil")


if __name__ == "__main__":
    main()
