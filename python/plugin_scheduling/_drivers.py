"""The async methods of the built-in schedulers: thin coroutines over Rust.

Awaiting the caller's coroutine is cheapest in a Python ``async def`` (a Rust
awaitable returning through ``StopIteration`` measured slower), and it runs
entirely in the caller's event loop: no thread, no tokio. Every decision is
made in Rust; these functions only await. ``__init__`` installs them as the
classes' ``allocate_async`` methods.
"""

from __future__ import annotations

import asyncio
import inspect
from time import monotonic as _monotonic
from typing import Any, Awaitable, Callable, Mapping

from ._core import ReservationTimeout

StatsProvider = Callable[[], Awaitable[Mapping[str, Any]]]


async def allocate_async(self: Any, plugin_meta: Any, stats_provider: StatsProvider) -> Any:
    """Await the stats once, then decide (the reference's default ``allocate_async``;
    a subclass's ``allocate`` is honoured)."""
    # Written out here and in queue_allocate_async (not a helper coroutine):
    # one more await on the pass path costs ~70 ns of a ~650 ns call.
    pending = stats_provider()
    try:
        stats = await pending
    except TypeError as error:
        if inspect.isawaitable(pending):
            raise  # the provider's own error
        raise sync_provider_error(pending) from error
    return self._allocate_with_stats(plugin_meta, stats)


async def queue_allocate_async(self: Any, plugin_meta: Any, stats_provider: StatsProvider) -> bool:
    """Wait for resources without blocking the loop: re-check when the scheduler
    releases a plugin, else every ``poll_interval``; give up after ``timeout``."""
    started = _monotonic()
    pending = stats_provider()
    try:
        stats = await pending
    except TypeError as error:
        if inspect.isawaitable(pending):
            raise  # the provider's own error
        raise sync_provider_error(pending) from error
    first = self._first_turn(plugin_meta, stats, started)  # the pass path: one Rust call
    if first is True:
        return True
    wait, step = first  # step: seconds to sleep, or False once it gave up
    while step is not False:
        await _sleep_or_wake(wait, step)
        stats = await stats_provider()
        step = wait.after_stats(plugin_meta, stats)
        if step is True:
            return True
    return False


async def reserve_async(self: Any, plugin_meta: Any, stats_provider: StatsProvider, **job: Any) -> Any:
    """``ReservationScheduler``: wait for a reservation without blocking the loop;
    the ``Grant``, or ``ReservationTimeout`` after ``timeout`` (or at once when it
    can never fit). Only the waiter whose turn it is reads stats (or any waiter
    when that one has gone silent); a cancelled waiter leaves the line at once,
    and so does one whose event loop is found closed."""
    wait = self._begin_wait(plugin_meta, asyncio.get_running_loop(), **job)
    try:
        while True:
            grant = wait.claim()  # granted by someone else's reading
            if grant is not None:
                return grant
            if wait.my_turn():
                stats = await _awaited_stats(stats_provider)
                grant = wait.offer(stats)
                if grant is not None:
                    return grant
            step = wait.after_refusal()
            if step is False:
                raise wait.failure_error()
            await _sleep_or_wake(wait, step)
    finally:
        wait.leave()  # no-op after a grant


async def _awaited_stats(stats_provider: StatsProvider) -> Any:
    pending = stats_provider()
    if not inspect.isawaitable(pending):
        raise sync_provider_error(pending)
    return await pending


async def reservation_allocate_async(
    self: Any, plugin_meta: Any, stats_provider: StatsProvider, **job: Any
) -> bool:
    """``ReservationScheduler.allocate_async``: reserve, or ``False`` after ``timeout``
    (or when it can never fit). Keywords override ``manifest["scheduling"]``."""
    try:
        await self._reserve_async(plugin_meta, stats_provider, **job)
    except ReservationTimeout:
        return False
    return True


def sync_provider_error(returned: Any) -> TypeError:
    """What ``allocate_async`` raises when the stats provider returned
    something that cannot be awaited (a sync provider such as ``monitor``)."""
    return TypeError(
        f"stats_provider returned a {type(returned).__name__}; allocate_async needs an "
        "async provider such as monitor.snapshot_async"
    )


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


async def snapshot_async(self: Any) -> Any:
    """The stats dict without blocking the event loop: the cached reading when
    fresh (no thread hop), else the blocking read in the loop's default executor."""
    fresh = self._fresh()
    if fresh is not None:
        return fresh
    return await asyncio.get_running_loop().run_in_executor(None, self.snapshot)


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def wake(loop: asyncio.AbstractEventLoop, future: "asyncio.Future[None]") -> bool:
    """Called by the scheduler on a release, from whatever thread released;
    ``False`` when the loop is closed (its waiter can never run again)."""
    if asyncio._get_running_loop() is loop:
        _resolve(future)
        return True
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:  # the loop is closed: its waiter is gone
        return False
    return True
