"""The awaiting half of the async paths; every decision is made in Rust.

A Python ``async def`` is the cheapest way to await the caller's coroutine
(measured faster than a Rust awaitable that returns via ``StopIteration``), and
it runs entirely in the caller's event loop: no thread, no tokio.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def allocate_after_stats(scheduler: Any, plugin_meta: Any, stats_provider: Any) -> Any:
    """The reference's default ``allocate_async``: await stats once, then allocate."""
    stats = await stats_provider()
    return scheduler._allocate_with_stats(plugin_meta, stats)


async def queue_allocate(scheduler: Any, plugin_meta: Any, stats_provider: Any) -> bool:
    """``QueueScheduler.allocate_async``: check, then sleep until a release or
    ``poll_interval``, until admitted or timed out."""
    wait = scheduler._begin_wait()
    while True:
        stats = await stats_provider()
        step = wait.after_stats(plugin_meta, stats)
        if step is True or step is False:
            return step
        await _sleep_or_wake(wait, step)


async def _sleep_or_wake(wait: Any, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    token = wait.subscribe(wake, loop, woken)
    if token is None:  # a release happened since the stats were read
        wait.unsubscribe(None)
        return
    timer = loop.call_later(seconds, _resolve, woken)
    try:
        await woken
    finally:
        # Runs on wake, timer and cancellation alike: nothing is left behind.
        timer.cancel()
        wait.unsubscribe(token)


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def wake(loop: asyncio.AbstractEventLoop, future: "asyncio.Future[None]") -> None:
    """Called by the scheduler on a release, from whatever thread released."""
    if asyncio._get_running_loop() is loop:
        _resolve(future)
        return
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:  # the loop is closed: its waiter is gone
        pass
