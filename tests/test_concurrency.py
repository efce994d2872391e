"""Concurrency behaviour of ``plugin_scheduling.QueueScheduler``.

What is checked here, beyond the single-threaded parity suite:

* blocking ``allocate`` waiters in many threads are woken by ``on_execution_finish``
  (called from any thread) long before ``poll_interval`` elapses, and no release is
  lost between "check failed" and "go to sleep";
* ``allocate_async`` waiters (many tasks, or a loop in another thread) are woken the
  same way, never block their event loop, and leave no registered waker behind after
  completion, cancellation or ``asyncio.wait_for`` timeouts (``_pending_wakers()``);
* timeouts return ``False`` and log what the reference logs;
* an exception raised by the stats provider in the middle of a wait reaches the caller
  unchanged (same object);
* Ctrl-C interrupts a blocking / async wait promptly (child processes);
* re-checks happen on release, not on a timer;
* processes that use the scheduler exit cleanly (also with waiters still blocked).

Timing assertions are deliberately loose: a "prompt" wake-up must beat a
``poll_interval`` of 30 s by a wide margin (< 5 s), never a tight bound.

Run:  python3 -m pytest tests/test_concurrency.py -q -p no:cacheprovider
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

import plugin_scheduling
from plugin_scheduling import PermissiveScheduler, QueueScheduler, SafetyScheduler
from cjm_plugin_system.core import scheduling as ref

META = SimpleNamespace(
    name="p", manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 4000}}
)
BUSY = {"gpu_free_memory_mb": 1000, "memory_available_mb": 64000}
FREE = {"gpu_free_memory_mb": 8000, "memory_available_mb": 64000}
NEEDED_VRAM = 4000

OURS_LOGGER = "plugin_scheduling.QueueScheduler"
REF_LOGGER = "cjm_plugin_system.core.scheduling.QueueScheduler"

LONG_POLL = 30.0  # a wake-up that beats this by far cannot have come from the timer
PROMPT = 5.0  # generous bound for "promptly"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        time.sleep(interval)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(0.001)


class SharedVram:
    """A host's view of free VRAM, shared by threads; counts provider calls."""

    def __init__(self, free_mb: int) -> None:
        self.lock = threading.Lock()
        self.free_mb = free_mb
        self.calls = 0

    def set(self, free_mb: int) -> None:
        with self.lock:
            self.free_mb = free_mb

    def stats(self):
        with self.lock:
            self.calls += 1
            return {"gpu_free_memory_mb": self.free_mb, "memory_available_mb": 64000}

    async def stats_async(self):
        return self.stats()

    def call_count(self) -> int:
        with self.lock:
            return self.calls


# ---------------------------------------------------------------------------
# 1. threads
# ---------------------------------------------------------------------------

N_THREADS = 8


def test_threads_all_woken_by_one_finish():
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    vram = SharedVram(1000)
    results = [None] * N_THREADS
    done_at = [None] * N_THREADS

    def worker(i):
        results[i] = sched.allocate(META, vram.stats)
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    # Every thread has read stats once (busy) and is now sleeping or about to sleep.
    wait_until(lambda: vram.call_count() >= N_THREADS)
    time.sleep(0.05)
    assert all(t.is_alive() for t in threads), "a waiter returned while resources were busy"
    assert results == [None] * N_THREADS

    released = time.monotonic()
    vram.set(8000)
    sched.on_execution_finish("x")
    for t in threads:
        t.join(timeout=LONG_POLL / 2)
    assert not any(t.is_alive() for t in threads), "a waiter was not woken by on_execution_finish"
    assert results == [True] * N_THREADS
    latency = max(done_at) - released
    assert latency < PROMPT, f"waiters took {latency:.2f}s to wake (poll_interval={LONG_POLL})"
    # One check before the release and exactly one after it, per thread: no timer polls.
    assert vram.call_count() == 2 * N_THREADS


def test_threads_one_slot_host_emulation():
    """Eight jobs compete for one slot; each finished job wakes the others.

    The provider claims the slot atomically when it reports "fits" (``allocate``
    itself reserves nothing), the job runs briefly, frees the slot and calls
    ``on_execution_finish``. With poll_interval=30 s the whole run can only finish
    quickly if every hand-over is a wake-up and none is lost.
    """
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    lock = threading.Lock()
    state = {"running": 0, "max_running": 0, "completed": 0, "calls": 0}
    results = [None] * N_THREADS
    barrier = threading.Barrier(N_THREADS)

    def provider():
        with lock:
            state["calls"] += 1
            if state["running"] == 0:
                state["running"] = 1  # claim the slot in the same step as "fits"
                state["max_running"] = max(state["max_running"], state["running"])
                return dict(FREE)
            return dict(BUSY)

    def worker(i):
        barrier.wait()
        ok = sched.allocate(META, provider)
        results[i] = ok
        if not ok:
            return
        name = f"job{i}"
        sched.on_execution_start(name)
        assert name in sched.get_active_plugins()
        time.sleep(0.01)  # work
        with lock:
            state["running"] -= 1
            state["completed"] += 1
        sched.on_execution_finish(name)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=LONG_POLL / 2)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "a waiter missed a release (lost wake-up)"
    assert results == [True] * N_THREADS
    assert state["completed"] == N_THREADS
    assert state["max_running"] == 1
    assert state["running"] == 0
    assert elapsed < PROMPT, f"one-slot hand-over took {elapsed:.2f}s: wake-ups came from the timer"
    assert sched.get_active_plugins() == set()


def test_get_active_plugins_returns_new_set():
    sched = QueueScheduler(timeout=1, poll_interval=0.01)
    sched.on_execution_start("a")
    snapshot = sched.get_active_plugins()
    assert snapshot == {"a"}
    snapshot.add("b")
    assert sched.get_active_plugins() == {"a"}
    sched.on_execution_start("b")
    assert snapshot is not sched.get_active_plugins()
    assert sched.get_active_plugins() == {"a", "b"}
    sched.on_execution_finish("a")
    assert sched.get_active_plugins() == {"b"}


# ---------------------------------------------------------------------------
# 2. asyncio
# ---------------------------------------------------------------------------


def test_async_fifty_tasks_woken_by_finish():
    n = 50

    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        vram = SharedVram(1000)
        tasks = [asyncio.create_task(sched.allocate_async(META, vram.stats_async)) for _ in range(n)]
        await until(lambda: sched._pending_wakers() == n)
        assert not any(t.done() for t in tasks)

        async def releaser():
            vram.set(8000)
            sched.on_execution_finish("x")

        released = time.monotonic()
        await asyncio.create_task(releaser())
        results = await asyncio.wait_for(asyncio.gather(*tasks), LONG_POLL / 2)
        return results, time.monotonic() - released, vram.call_count(), sched._pending_wakers()

    results, latency, calls, pending = asyncio.run(main())
    assert results == [True] * n
    assert latency < PROMPT
    assert calls == 2 * n  # one check before the release, one after, per task
    assert pending == 0


def test_async_waiter_in_other_threads_loop_woken_from_main_thread():
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    vram = SharedVram(1000)
    out = {}

    def thread_main():
        async def run():
            return await sched.allocate_async(META, vram.stats_async)

        out["value"] = asyncio.run(run())
        out["done_at"] = time.monotonic()

    t = threading.Thread(target=thread_main, daemon=True)
    t.start()
    wait_until(lambda: sched._pending_wakers() == 1)
    released = time.monotonic()
    vram.set(8000)
    sched.on_execution_finish("x")  # main thread, no running loop here
    t.join(timeout=LONG_POLL / 2)
    assert not t.is_alive(), "waiter in another thread's loop was not woken"
    assert out["value"] is True
    assert out["done_at"] - released < PROMPT
    assert sched._pending_wakers() == 0


def test_async_waiter_woken_from_a_different_running_loop():
    """finish() is called from inside a running loop that is not the waiter's."""
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    vram = SharedVram(1000)
    out = {}

    def thread_main():
        async def run():
            return await sched.allocate_async(META, vram.stats_async)

        out["value"] = asyncio.run(run())
        out["done_at"] = time.monotonic()

    t = threading.Thread(target=thread_main, daemon=True)
    t.start()
    wait_until(lambda: sched._pending_wakers() == 1)

    async def release_from_main_loop():
        vram.set(8000)
        sched.on_execution_finish("x")
        return time.monotonic()

    released = asyncio.run(release_from_main_loop())
    t.join(timeout=LONG_POLL / 2)
    assert not t.is_alive()
    assert out["value"] is True
    assert out["done_at"] - released < PROMPT
    assert sched._pending_wakers() == 0


def test_mixed_sync_and_async_waiters_one_finish():
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    vram = SharedVram(1000)
    sync_results = []

    def sync_worker():
        sync_results.append(sched.allocate(META, vram.stats))

    async def main():
        threads = [threading.Thread(target=sync_worker, daemon=True) for _ in range(4)]
        for th in threads:
            th.start()
        tasks = [asyncio.create_task(sched.allocate_async(META, vram.stats_async)) for _ in range(4)]
        await until(lambda: sched._pending_wakers() == 4 and vram.call_count() >= 8)
        vram.set(8000)
        threading.Thread(target=sched.on_execution_finish, args=("x",)).start()
        res = await asyncio.wait_for(asyncio.gather(*tasks), PROMPT)
        for th in threads:
            await asyncio.to_thread(th.join, PROMPT)
        return res

    t0 = time.monotonic()
    assert asyncio.run(main()) == [True] * 4
    assert sync_results == [True] * 4
    assert time.monotonic() - t0 < PROMPT * 2
    assert sched._pending_wakers() == 0


# ---------------------------------------------------------------------------
# 3. cancellation
# ---------------------------------------------------------------------------


def test_cancel_waiters_leaves_nothing_and_scheduler_still_works():
    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        vram = SharedVram(1000)
        tasks = [asyncio.create_task(sched.allocate_async(META, vram.stats_async)) for _ in range(5)]
        await until(lambda: sched._pending_wakers() == 5)
        t0 = time.monotonic()
        for t in tasks:
            t.cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), PROMPT)
        cancel_latency = time.monotonic() - t0
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        assert all(t.cancelled() for t in tasks)
        assert cancel_latency < PROMPT
        assert sched._pending_wakers() == 0

        # The scheduler is still usable: a new waiter is woken by finish.
        calls_before = vram.call_count()
        waiter = asyncio.create_task(sched.allocate_async(META, vram.stats_async))
        await until(lambda: sched._pending_wakers() == 1)
        released = time.monotonic()
        vram.set(8000)
        sched.on_execution_finish("x")
        assert await asyncio.wait_for(waiter, PROMPT) is True
        assert time.monotonic() - released < PROMPT
        assert vram.call_count() - calls_before == 2
        assert sched._pending_wakers() == 0

    asyncio.run(main())


def test_wait_for_timeout_leaves_no_waker():
    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sched.allocate_async(META, SharedVram(1000).stats_async), timeout=0.1)
        elapsed = time.monotonic() - t0
        assert sched._pending_wakers() == 0
        return elapsed

    elapsed = asyncio.run(main())
    assert 0.1 <= elapsed < PROMPT


def test_cancel_random_half_of_200_waiters():
    n = 200
    rng = random.Random(1234)

    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        vram = SharedVram(1000)
        tasks = [asyncio.create_task(sched.allocate_async(META, vram.stats_async)) for _ in range(n)]
        await until(lambda: sched._pending_wakers() == n)
        doomed = set(rng.sample(range(n), n // 2))
        for i in doomed:
            tasks[i].cancel()
        cancelled = await asyncio.wait_for(
            asyncio.gather(*(tasks[i] for i in sorted(doomed)), return_exceptions=True), PROMPT
        )
        assert all(isinstance(o, asyncio.CancelledError) for o in cancelled)
        assert sched._pending_wakers() == n - len(doomed)
        survivors = [tasks[i] for i in range(n) if i not in doomed]
        assert not any(t.done() for t in survivors)

        vram.set(8000)
        sched.on_execution_finish("x")
        results = await asyncio.wait_for(asyncio.gather(*survivors), PROMPT)
        assert results == [True] * len(survivors)
        assert sched._pending_wakers() == 0

    asyncio.run(main())


def test_cancel_under_release_churn_from_another_thread():
    """Cancellations racing with wake-ups from another thread (resources stay busy
    while the churn runs, so every woken waiter re-subscribes)."""
    n = 100
    rng = random.Random(99)

    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        vram = SharedVram(1000)
        tasks = [asyncio.create_task(sched.allocate_async(META, vram.stats_async)) for _ in range(n)]
        await until(lambda: sched._pending_wakers() == n)
        stop = threading.Event()
        finishes = [0]

        def churn():
            while not stop.is_set():
                sched.on_execution_finish("other")
                finishes[0] += 1
                time.sleep(0.0005)

        th = threading.Thread(target=churn, daemon=True)
        th.start()
        doomed = set(rng.sample(range(n), n // 2))
        for i in sorted(doomed):
            tasks[i].cancel()
            if rng.random() < 0.5:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.to_thread(th.join, PROMPT)
        assert finishes[0] > 0
        cancelled = await asyncio.wait_for(
            asyncio.gather(*(tasks[i] for i in sorted(doomed)), return_exceptions=True), PROMPT
        )
        assert all(isinstance(o, asyncio.CancelledError) for o in cancelled)
        survivors = [tasks[i] for i in range(n) if i not in doomed]
        # After the churn stops, every survivor settles back into one registered waker.
        await until(lambda: sched._pending_wakers() == len(survivors), timeout=PROMPT)
        assert not any(t.done() for t in survivors)
        vram.set(8000)
        sched.on_execution_finish("x")
        results = await asyncio.wait_for(asyncio.gather(*survivors), PROMPT)
        assert results == [True] * len(survivors)
        assert sched._pending_wakers() == 0

    asyncio.run(main())


def test_waiter_abandoned_in_closed_loop_is_garbage_collected():
    import gc
    import weakref

    async def never():
        return dict(BUSY)

    def abandon():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        loop = asyncio.new_event_loop()
        loop.create_task(sched.allocate_async(META, never))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert sched._pending_wakers() == 1
        loop.close()  # closed without cancelling the waiter
        return weakref.ref(sched), weakref.ref(loop)

    sched_ref, loop_ref = abandon()
    gc.collect()
    assert loop_ref() is None, "closed event loop kept alive by the scheduler's waker"
    assert sched_ref() is None, "scheduler kept alive by its own waker (uncollectable cycle)"


@pytest.mark.parametrize("cls", [QueueScheduler, SafetyScheduler, PermissiveScheduler])
def test_cycles_through_a_scheduler_are_collected(cls):
    import gc
    import weakref

    sched = cls()
    sched.me = sched  # through the instance __dict__
    if cls is QueueScheduler:
        sched._active_plugins.add(sched)  # through the active set
    ref = weakref.ref(sched)
    del sched
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------
# 4. the event loop is not blocked
# ---------------------------------------------------------------------------


def test_event_loop_keeps_running_while_waiting():
    async def main():
        sched = QueueScheduler(timeout=0.5, poll_interval=0.05)
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        result = await sched.allocate_async(META, SharedVram(0).stats_async)
        elapsed = time.monotonic() - t0
        done = True
        await tick_task
        return result, elapsed, ticks, sched._pending_wakers()

    result, elapsed, ticks, pending = asyncio.run(main())
    assert result is False
    assert 0.5 <= elapsed < PROMPT
    assert ticks > 10, f"event loop starved: ticker ran {ticks} times in {elapsed:.2f}s"
    assert pending == 0


# ---------------------------------------------------------------------------
# 5. timeouts and their log records (compared with the reference)
# ---------------------------------------------------------------------------


def _records(caplog, logger_name):
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger_name]


def _check_timeout_log(records, verb):
    assert records, "nothing logged"
    *infos, last = records
    assert last == ("ERROR", "Timeout waiting for resources for p")
    assert 1 <= len(infos) <= 5, infos  # timeout / poll_interval = 4 sleeps (+1 at the boundary)
    assert set(infos) == {("INFO", f"Resources busy. {verb} 0.05s...")}, infos
    return len(infos)


def test_sync_timeout_logs_like_reference(caplog):
    caplog.set_level(logging.INFO, logger=OURS_LOGGER)
    caplog.set_level(logging.INFO, logger=REF_LOGGER)
    counts = {}
    for label, cls, logger_name in (
        ("ours", QueueScheduler, OURS_LOGGER),
        ("ref", ref.QueueScheduler, REF_LOGGER),
    ):
        caplog.clear()
        sched = cls(timeout=0.2, poll_interval=0.05)
        t0 = time.monotonic()
        assert sched.allocate(META, lambda: dict(BUSY)) is False
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed < 3.0, (label, elapsed)
        counts[label] = _check_timeout_log(_records(caplog, logger_name), "Waiting")
    assert abs(counts["ours"] - counts["ref"]) <= 1, counts


def test_async_timeout_logs_like_reference(caplog):
    caplog.set_level(logging.INFO, logger=OURS_LOGGER)
    caplog.set_level(logging.INFO, logger=REF_LOGGER)

    async def busy():
        return dict(BUSY)

    counts = {}
    for label, cls, logger_name in (
        ("ours", QueueScheduler, OURS_LOGGER),
        ("ref", ref.QueueScheduler, REF_LOGGER),
    ):
        caplog.clear()
        sched = cls(timeout=0.2, poll_interval=0.05)
        t0 = time.monotonic()
        assert asyncio.run(sched.allocate_async(META, busy)) is False
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed < 3.0, (label, elapsed)
        counts[label] = _check_timeout_log(_records(caplog, logger_name), "Yielding")
        if label == "ours":
            assert sched._pending_wakers() == 0
    assert abs(counts["ours"] - counts["ref"]) <= 1, counts


# ---------------------------------------------------------------------------
# 6. a provider raising in the middle of a wait
# ---------------------------------------------------------------------------


def _raising_provider(err):
    calls = [0]

    def provider():
        calls[0] += 1
        if calls[0] == 1:
            return dict(BUSY)
        raise err

    return provider, calls


@pytest.mark.parametrize("woken_by", ["timer", "finish"])
def test_provider_error_propagates_from_sync_wait(woken_by):
    err = ValueError("stats backend down")
    provider, calls = _raising_provider(err)
    poll = 0.01 if woken_by == "timer" else LONG_POLL
    sched = QueueScheduler(timeout=60, poll_interval=poll)
    if woken_by == "finish":
        def release():
            wait_until(lambda: calls[0] >= 1)
            sched.on_execution_finish("x")
        threading.Thread(target=release, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(ValueError) as excinfo:
        sched.allocate(META, provider)
    assert excinfo.value is err
    assert calls[0] == 2
    assert time.monotonic() - t0 < PROMPT
    assert sched._pending_wakers() == 0


@pytest.mark.parametrize("woken_by", ["timer", "finish"])
def test_provider_error_propagates_from_async_wait(woken_by):
    err = ValueError("stats backend down")
    sync_provider, calls = _raising_provider(err)

    async def provider():
        return sync_provider()

    poll = 0.01 if woken_by == "timer" else LONG_POLL

    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=poll)
        task = asyncio.create_task(sched.allocate_async(META, provider))
        if woken_by == "finish":
            await until(lambda: sched._pending_wakers() == 1)
            sched.on_execution_finish("x")
        with pytest.raises(ValueError) as excinfo:
            await asyncio.wait_for(task, PROMPT)
        assert excinfo.value is err
        assert calls[0] == 2
        assert sched._pending_wakers() == 0

    asyncio.run(main())


# ---------------------------------------------------------------------------
# 7. Ctrl-C
# ---------------------------------------------------------------------------

_CHILD_PRELUDE = """
import asyncio, sys, types
import plugin_scheduling
META = types.SimpleNamespace(name='p', manifest={'resources': {'requires_gpu': True, 'min_gpu_vram_mb': 4000}})
sched = plugin_scheduling.QueueScheduler(timeout=60, poll_interval=30)
_first = [True]
def busy():
    if _first[0]:
        _first[0] = False
        print('ready', flush=True)
    return {'gpu_free_memory_mb': 0, 'memory_available_mb': 64000}
async def busy_async():
    return busy()
"""

_CHILD_SYNC = _CHILD_PRELUDE + """
result = sched.allocate(META, busy)
print('returned', result, flush=True)
"""

_CHILD_ASYNC = _CHILD_PRELUDE + """
async def main():
    try:
        return await sched.allocate_async(META, busy_async)
    finally:
        print('pending', sched._pending_wakers(), flush=True)
result = asyncio.run(main())
print('returned', result, flush=True)
"""


def _read_line(proc, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"child printed no line in {timeout}s (so far {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ctrl_c_interrupts_wait_promptly(mode):
    script = _CHILD_SYNC if mode == "sync" else _CHILD_ASYNC
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _read_line(proc, 30)
        assert line.strip() == "ready", line
        time.sleep(0.2)
        assert proc.poll() is None, "child stopped waiting before SIGINT"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("child did not exit within 10 s of SIGINT")
        latency = time.monotonic() - sent
        out = proc.stdout.read().decode()
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    print(f"\nCtrl-C latency ({mode}): {latency * 1000:.1f} ms")
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err, err
    assert "returned" not in out, out
    if mode == "async":
        assert "pending 0" in out, out
    assert latency < 2.0, f"Ctrl-C took {latency:.2f}s to interrupt the {mode} wait"


# ---------------------------------------------------------------------------
# 8. re-checks happen on release, not on a timer
# ---------------------------------------------------------------------------


def test_sync_rechecks_once_per_finish():
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    vram = SharedVram(1000)
    out = {}

    def worker():
        out["result"] = sched.allocate(META, vram.stats)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    wait_until(lambda: vram.call_count() == 1)
    time.sleep(0.3)
    assert vram.call_count() == 1, "provider re-polled without a release"
    for k in range(1, 4):  # three releases that do not free enough
        sched.on_execution_finish("x")
        wait_until(lambda: vram.call_count() == 1 + k, timeout=PROMPT)
        time.sleep(0.1)
        assert vram.call_count() == 1 + k, "more than one re-check per release"
        assert th.is_alive()
    vram.set(8000)
    sched.on_execution_finish("x")
    th.join(timeout=PROMPT)
    assert not th.is_alive()
    assert out["result"] is True
    assert vram.call_count() == 5


def test_async_rechecks_once_per_finish():
    async def main():
        sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        vram = SharedVram(1000)
        task = asyncio.create_task(sched.allocate_async(META, vram.stats_async))
        await until(lambda: sched._pending_wakers() == 1)
        await asyncio.sleep(0.3)
        assert vram.call_count() == 1
        for k in range(1, 4):
            sched.on_execution_finish("x")
            await until(lambda: vram.call_count() == 1 + k and sched._pending_wakers() == 1, PROMPT)
            await asyncio.sleep(0.05)
            assert vram.call_count() == 1 + k
            assert not task.done()
        vram.set(8000)
        sched.on_execution_finish("x")
        assert await asyncio.wait_for(task, PROMPT) is True
        assert vram.call_count() == 5
        assert sched._pending_wakers() == 0

    asyncio.run(main())


def test_release_between_check_and_sleep_is_not_lost():
    """The provider itself triggers a release right after reading busy stats (the
    window between "check failed" and "go to sleep"): the waiter must re-check at
    once instead of sleeping poll_interval."""
    sched = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
    calls = [0]

    def provider():
        calls[0] += 1
        if calls[0] == 1:
            threading.Thread(target=sched.on_execution_finish, args=("x",)).start()
            time.sleep(0.05)  # the release lands before allocate goes to sleep
            return dict(BUSY)
        return dict(FREE)

    t0 = time.monotonic()
    assert sched.allocate(META, provider) is True
    assert time.monotonic() - t0 < PROMPT
    assert calls[0] == 2

    async def main():
        sched2 = QueueScheduler(timeout=60, poll_interval=LONG_POLL)
        acalls = [0]

        async def aprovider():
            acalls[0] += 1
            if acalls[0] == 1:
                th = threading.Thread(target=sched2.on_execution_finish, args=("x",))
                th.start()
                th.join()
                return dict(BUSY)
            return dict(FREE)

        t1 = time.monotonic()
        assert await asyncio.wait_for(sched2.allocate_async(META, aprovider), PROMPT) is True
        assert time.monotonic() - t1 < PROMPT
        assert acalls[0] == 2
        assert sched2._pending_wakers() == 0

    asyncio.run(main())


# ---------------------------------------------------------------------------
# 9. many processes start, wait, get woken and exit cleanly
# ---------------------------------------------------------------------------

_CHILD_EXIT = """
import asyncio, sys, threading, types
import plugin_scheduling
mode = int(sys.argv[1])
META = types.SimpleNamespace(name='p', manifest={'resources': {'requires_gpu': True, 'min_gpu_vram_mb': 4000}})
sched = plugin_scheduling.QueueScheduler(timeout=60, poll_interval=30)
state = {'free': False}
def stats():
    return {'gpu_free_memory_mb': 8000 if state['free'] else 0}
async def astats():
    return stats()

if mode == 1:
    # A blocking waiter on another scheduler is still waiting at exit.
    other = plugin_scheduling.QueueScheduler(timeout=60, poll_interval=30)
    started = threading.Event()
    def never():
        started.set()
        return {'gpu_free_memory_mb': 0}
    threading.Thread(target=other.allocate, args=(META, never), daemon=True).start()
    started.wait()
if mode == 2:
    # An async waiter whose loop is closed while it waits; a later release must not fail.
    other = plugin_scheduling.QueueScheduler(timeout=60, poll_interval=30)
    async def never():
        return {'gpu_free_memory_mb': 0}
    loop = asyncio.new_event_loop()
    orphan = loop.create_task(other.allocate_async(META, never))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert other._pending_wakers() == 1
    loop.close()
    other.on_execution_finish('x')

async def main():
    task = asyncio.create_task(sched.allocate_async(META, astats))
    while sched._pending_wakers() == 0:
        await asyncio.sleep(0.001)
    def release():
        state['free'] = True
        sched.on_execution_finish('x')
    th = threading.Thread(target=release)
    th.start()
    result = await asyncio.wait_for(task, 10)
    th.join()
    assert result is True, result
    assert sched._pending_wakers() == 0
    print('ok', flush=True)

asyncio.run(main())
"""


def test_many_processes_wait_and_exit_cleanly():
    n = 30
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_EXIT, str(i % 3)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(n)
    ]
    failures = []
    for i, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=max(1.0, 30 - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            failures.append((i, "timeout", err.decode()[-500:]))
            continue
        text = err.decode()
        if (
            proc.returncode != 0
            or out.decode().strip() != "ok"
            or "panicked" in text
            or "Fatal Python error" in text
        ):
            failures.append((i, proc.returncode, out.decode()[-200:], text[-800:]))
    elapsed = time.monotonic() - t0
    assert not failures, failures
    assert elapsed < 30, elapsed


def test_garbage_collection_during_construction_does_not_crash():
    """A collection can run while a Python subclass instance is half built
    (CPython allocates its __dict__ first); __traverse__ must cope. Run in a
    subprocess: the failure mode is a segfault."""
    code = (
        "import gc, plugin_scheduling as ps\n"
        "gc.set_threshold(1, 1, 1)\n"
        "class Q(ps.QueueScheduler): pass\n"
        "class R(ps.ReservationScheduler): pass\n"
        "for _ in range(300):\n"
        "    ps.QueueScheduler(); Q(); ps.ReservationScheduler(); R()\n"
        "    ps.SafetyScheduler(); ps.PermissiveScheduler()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
