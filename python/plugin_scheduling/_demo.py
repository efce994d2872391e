"""``python -m plugin_scheduling demo``: plugins queue for a simulated GPU.

A scripted machine (one 24 GB GPU, 64 GB RAM) is shared by four plugins that
each load a model (occupy VRAM) while they run. A QueueScheduler admits them
as memory frees up; a finishing plugin wakes the waiters at once, and a
SafetyScheduler shows the same checks refusing instead of waiting.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict

from . import QueueScheduler, SafetyScheduler


@dataclass
class DemoPlugin:
    """Stands in for cjm's PluginMeta: a name and a manifest."""

    name: str
    vram_mb: int
    ram_mb: int
    seconds: float
    manifest: Dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = {
            "resources": {
                "requires_gpu": True,
                "min_gpu_vram_mb": self.vram_mb,
                "min_system_ram_mb": self.ram_mb,
            }
        }


class ScriptedMachine:
    """A stats provider over scripted totals; plugins occupy and free memory."""

    def __init__(self, gpu_total_mb: int, ram_total_mb: int) -> None:
        self.gpu_total_mb = gpu_total_mb
        self.ram_total_mb = ram_total_mb
        self._used_gpu = 0
        self._used_ram = 0
        self._lock = threading.Lock()

    def __call__(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "gpu_type": "NVIDIA (simulated)",
                "gpu_total_memory_mb": self.gpu_total_mb,
                "gpu_free_memory_mb": self.gpu_total_mb - self._used_gpu,
                "memory_total_mb": self.ram_total_mb,
                "memory_available_mb": self.ram_total_mb - self._used_ram,
            }

    def occupy(self, plugin: DemoPlugin, sign: int = 1) -> None:
        with self._lock:
            self._used_gpu += sign * plugin.vram_mb
            self._used_ram += sign * plugin.ram_mb


def run(out: Any = print) -> None:
    start = time.monotonic()

    def say(text: str) -> None:
        out(f"[{time.monotonic() - start:5.2f}s] {text}")

    machine = ScriptedMachine(gpu_total_mb=24_000, ram_total_mb=64_000)
    plugins = [
        DemoPlugin("whisper-large", vram_mb=10_000, ram_mb=8_000, seconds=0.6),
        DemoPlugin("llama-8b", vram_mb=16_000, ram_mb=16_000, seconds=0.5),
        DemoPlugin("sdxl", vram_mb=12_000, ram_mb=12_000, seconds=0.4),
        DemoPlugin("embedder", vram_mb=2_000, ram_mb=2_000, seconds=0.3),
    ]
    say(f"machine: GPU {machine.gpu_total_mb} MB, RAM {machine.ram_total_mb} MB (simulated)")

    say("SafetyScheduler refuses what does not fit right now:")
    safety = SafetyScheduler()
    machine.occupy(plugins[1])
    safety.allocate(plugins[0], machine)
    machine.occupy(plugins[1], -1)

    say("QueueScheduler(timeout=10, poll_interval=5) waits instead; a finish wakes waiters at once:")
    scheduler = QueueScheduler(timeout=10.0, poll_interval=5.0)
    admit_lock = threading.Lock()  # the host's check-then-occupy step

    def host(plugin: DemoPlugin) -> None:
        # What a plugin manager does: allocate, occupy while running, finish.
        while True:
            if not scheduler.allocate(plugin, machine):
                say(f"{plugin.name}: gave up")
                return
            with admit_lock:  # the seed's schedulers check but do not reserve
                if scheduler._check_resources(plugin, machine()):
                    machine.occupy(plugin)
                    break
        say(f"{plugin.name}: admitted, loads {plugin.vram_mb} MB VRAM  {machine()['gpu_free_memory_mb']} MB free")
        scheduler.on_execution_start(plugin.name)
        time.sleep(plugin.seconds)
        machine.occupy(plugin, -1)
        scheduler.on_execution_finish(plugin.name)
        say(f"{plugin.name}: finished, frees {plugin.vram_mb} MB")

    threads = [threading.Thread(target=host, args=(p,), name=p.name) for p in plugins]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    say(f"all done in {time.monotonic() - start:.2f}s (polling alone would need a 5 s wait per queue turn)")


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("        [QueueScheduler] %(message)s"))
    logger = logging.getLogger("plugin_scheduling")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run()
    finally:
        logger.removeHandler(handler)
