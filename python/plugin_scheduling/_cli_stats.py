"""``python -m plugin_scheduling stats``: this machine's RAM, CPU and GPUs."""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any, Mapping, TextIO

from ._core import SystemMonitor


def _mb(value: float) -> str:
    return f"{value:,.0f} MB"


def render(stats: Mapping[str, Any]) -> str:
    """A gpustat-like table of one snapshot."""
    lines = [
        f"{socket.gethostname()}  {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"CPU   {stats['cpu_percent']:5.1f} %",
        f"RAM   {_mb(stats['memory_used_mb'])} used / {_mb(stats['memory_total_mb'])}"
        f"  ({_mb(stats['memory_available_mb'])} available)",
    ]
    details = stats.get("details", {})
    gpus = details.get("gpus", [])
    if not gpus:
        reason = details.get("gpu_unavailable") or "no device"
        lines.append(f"GPU   none ({reason})")
    for gpu in gpus:
        temp = f"{gpu['temperature_c']:.0f}°C" if gpu.get("temperature_c") is not None else "--°C"
        load = gpu.get("utilization_gpu_percent")
        load_text = f"{load:3.0f} %" if load is not None else " -- %"
        power = f"{gpu['power_w']:.0f} W" if gpu.get("power_w") is not None else ""
        procs = " ".join(
            f"{p.get('name') or p['pid']}({p['used_gpu_mb']:.0f}M)" if p.get("used_gpu_mb") is not None
            else f"{p.get('name') or p['pid']}"
            for p in gpu.get("processes", [])
        )
        lines.append(
            f"[{gpu['index']}] {gpu['name']:<22} | {temp:>5}, {load_text} {power:>6} | "
            f"{_mb(gpu['memory_used_mb'])} / {_mb(gpu['memory_total_mb'])} | {procs}".rstrip()
        )
    return "\n".join(lines)


def run(as_json: bool, watch: float | None, out: TextIO = sys.stdout) -> int:
    monitor = SystemMonitor()
    try:
        while True:
            stats = monitor.snapshot()
            if as_json:
                out.write(json.dumps(stats) + "\n")
            else:
                if watch is not None and out.isatty():
                    out.write("\x1b[H\x1b[2J")  # clear the screen between refreshes
                out.write(render(stats) + "\n")
            out.flush()
            if watch is None:
                return 0
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0
    # A closed pipe (`| head`) goes up to __main__.main, which ends quietly.
