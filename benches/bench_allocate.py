"""Per-call time of each scheduler's pass path: ours vs cjm-plugin-system 0.0.28.

Run: python benches/bench_allocate.py   (needs `pip install '.[test]'`)
Both run in one process, interleaved, so machine noise hits both alike; the
ratio column is what to read. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import statistics
import timeit

import cjm_plugin_system.core.scheduling as ref
from cjm_plugin_system.core.metadata import PluginMeta

import plugin_scheduling as ours

logging.disable(logging.CRITICAL)  # the reference configures logging at import

META = PluginMeta(name="whisper", version="1")
META.manifest = {"resources": {"requires_gpu": True, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 8192}}
STATS = {"gpu_free_memory_mb": 16000, "memory_available_mb": 32000}


def provider() -> dict:
    return STATS


async def aprovider() -> dict:
    return STATS


def best_ns(stmt, number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def sync_case(cls_ref, cls_ours, number=200_000):
    a, b = cls_ref(), cls_ours()
    return (
        best_ns(lambda: a.allocate(META, provider), number),
        best_ns(lambda: b.allocate(META, provider), number),
    )


def async_case(cls_ref, cls_ours, number=50_000):
    a, b = cls_ref(), cls_ours()

    def drive(s):
        # Drive the coroutine by hand (as an event loop does) so the loop's
        # own scheduling cost does not drown the difference.
        def once():
            coro = s.allocate_async(META, aprovider)
            try:
                coro.send(None)
            except StopIteration:
                pass
        return once

    return best_ns(drive(a), number), best_ns(drive(b), number)


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'case':42} {'reference ns':>13} {'ours ns':>9} {'ours/ref':>9}")
    rows = []
    for name in ("PermissiveScheduler", "SafetyScheduler", "QueueScheduler"):
        r, o = getattr(ref, name), getattr(ours, name)
        rows.append((f"{name}.allocate (pass)", *sync_case(r, o)))
        rows.append((f"{name}.allocate_async (pass)", *async_case(r, o)))
    for label, ref_ns, our_ns in rows:
        print(f"{label:42} {ref_ns:13.0f} {our_ns:9.0f} {our_ns / ref_ns:9.2f}")


if __name__ == "__main__":
    main()
