"""``python -m plugin_scheduling demo``: plugins queue for a GPU.

This machine's real RAM and CPU (SystemMonitor) plus a simulated 24 GB GPU
(SimulatedSystem) are shared by four plugins that each load a model (occupy
VRAM and RAM) while they run. A SafetyScheduler refuses what does not fit now;
a QueueScheduler waits instead and is woken at once by a finish; a
ReservationScheduler admits all four as memory frees up, reserving what each
declares so that two plugins are never admitted on the same free memory.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict

from . import QueueScheduler, ReservationScheduler, SafetyScheduler, SimulatedSystem, SystemMonitor
from ._cli_util import quiet_stdout
from .types import SystemStats


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


class DemoMachine:
    """Real host stats with a simulated GPU; plugins occupy what they load."""

    def __init__(self, gpu_total_mb: int) -> None:
        self.real = SystemMonitor()
        self.sim = SimulatedSystem(gpus=[gpu_total_mb], host=self.real)

    def __call__(self) -> SystemStats:
        return self.sim()

    def occupy(self, plugin: DemoPlugin, sign: int = 1) -> None:
        if sign > 0:
            self.sim.occupy(plugin.vram_mb)
            self.sim.occupy_ram(plugin.ram_mb)
        else:
            self.sim.free(plugin.vram_mb)
            self.sim.free_ram(plugin.ram_mb)


def run(out: Any = print) -> None:
    start = time.monotonic()

    def say(text: str) -> None:
        out(f"[{time.monotonic() - start:5.2f}s] {text}")

    machine = DemoMachine(gpu_total_mb=24_000)
    plugins = [
        DemoPlugin("whisper-large", vram_mb=10_000, ram_mb=1_000, seconds=0.6),
        DemoPlugin("llama-8b", vram_mb=16_000, ram_mb=1_500, seconds=0.5),
        DemoPlugin("sdxl", vram_mb=12_000, ram_mb=1_200, seconds=0.4),
        DemoPlugin("embedder", vram_mb=2_000, ram_mb=200, seconds=0.3),
    ]
    real = machine.real()
    gpus = real["details"]["gpus"]
    this_gpu = ", ".join(g["name"] for g in gpus) if gpus else "none"
    say(
        f"this machine: CPU {real['cpu_percent']:.0f} %, RAM {real['memory_available_mb']:,.0f} MB available"
        f" of {real['memory_total_mb']:,.0f} MB (real); GPU: {this_gpu}"
    )
    say("plugins share a simulated 24,000 MB GPU (SimulatedSystem over the real RAM and CPU)")

    say("SafetyScheduler refuses what does not fit right now:")
    safety = SafetyScheduler()
    machine.occupy(plugins[1])
    safety.allocate(plugins[0], machine)
    machine.occupy(plugins[1], -1)

    say("QueueScheduler(timeout=10, poll_interval=5) waits instead; a finish wakes the waiter at once:")
    queue = QueueScheduler(timeout=10.0, poll_interval=5.0)
    whisper, llama = plugins[0], plugins[1]
    queue.on_execution_start(llama.name)
    machine.occupy(llama)
    say(f"{llama.name}: running, {machine()['gpu_free_memory_mb']:,.0f} MB free")

    def finish_llama() -> None:
        time.sleep(llama.seconds)
        machine.occupy(llama, -1)
        queue.on_execution_finish(llama.name)
        say(f"{llama.name}: finished, frees {llama.vram_mb} MB")

    finisher = threading.Thread(target=finish_llama, name=llama.name, daemon=True)
    finisher.start()
    if queue.allocate(whisper, machine):  # one waiter: nothing else can take its memory
        say(f"{whisper.name}: admitted (QueueScheduler checks; it does not reserve)")
    finisher.join()

    say(
        "ReservationScheduler(timeout=10, poll_interval=5, settle_s=0) reserves what each plugin declares,"
        " atomically: four plugins at once, never double-booked:"
    )
    # settle_s=0: the simulated GPU shows each load at once (a real model takes
    # a moment to appear in the readings; the default 2 s covers that).
    scheduler = ReservationScheduler(timeout=10.0, poll_interval=5.0, settle_s=0.0)

    def host(plugin: DemoPlugin) -> None:
        # What a plugin manager does: allocate (reserves), run, finish (releases).
        if not scheduler.allocate(plugin, machine):
            say(f"{plugin.name}: gave up")
            return
        scheduler.on_execution_start(plugin.name)
        machine.occupy(plugin)
        say(f"{plugin.name}: admitted, loads {plugin.vram_mb} MB VRAM, {machine()['gpu_free_memory_mb']:,.0f} MB free")
        try:
            time.sleep(plugin.seconds)
        finally:
            machine.occupy(plugin, -1)
            scheduler.on_execution_finish(plugin.name)
        say(f"{plugin.name}: finished, frees {plugin.vram_mb} MB")

    threads = [threading.Thread(target=host, args=(p,), name=p.name, daemon=True) for p in plugins]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    say(f"all done in {time.monotonic() - start:.2f}s (polling alone would need a 5 s wait per queue turn)")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to stdout; a closed pipe (``demo | head``) silences it instead of
    printing logging's error report."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            quiet_stdout()
            return
        super().handleError(record)


def _print(text: str) -> None:
    """``print`` that stops quietly when the reader of stdout went away (the
    plugin threads print too, so this cannot wait for ``__main__``'s handler)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        quiet_stdout()


def main() -> None:
    handler = _Handler(sys.stdout)
    handler.setFormatter(logging.Formatter("        [%(name)s] %(message)s"))
    logger = logging.getLogger("plugin_scheduling")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run(_print)
    finally:
        logger.removeHandler(handler)
