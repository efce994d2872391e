"""Regression tests for what a hostile tester and a new user hit in
``ReservationScheduler`` (issue: one hang, one fork deadlock, silent
admissions). Each failed before the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from types import SimpleNamespace

import pytest

from plugin_scheduling import InvalidStats, ReservationScheduler, ReservationTimeout, SimulatedSystem

LOGGER = "plugin_scheduling.ReservationScheduler"


def meta(name, vram_mb=0, ram_mb=0, gpu=True, **res):
    return SimpleNamespace(
        name=name,
        manifest={"resources": {"requires_gpu": gpu, "min_gpu_vram_mb": vram_mb, "min_system_ram_mb": ram_mb, **res}},
    )


def stats_with(gpus, **top):
    return {"memory_total_mb": 64000.0, "memory_available_mb": 64000.0, "details": {"gpus": gpus}, **top}


def device(index=0, total=24000.0, free=24000.0, **kw):
    return {"index": index, "memory_total_mb": total, "memory_free_mb": free, **kw}


class RaisingIterator:
    """An iterator whose every ``__next__`` raises (it never ends)."""

    def __init__(self, exc=ValueError):
        self.exc = exc

    def __iter__(self):
        return self

    def __next__(self):
        raise self.exc("broken iterator")


# 1 ------------------------------------------------------------------ no infinite loop


@pytest.mark.timeout(20)
def test_a_raising_gpus_iterator_raises_instead_of_spinning():
    s = ReservationScheduler(timeout=0)
    bad = {"details": {"gpus": RaisingIterator()}}
    with pytest.raises(ValueError, match="broken iterator"):
        s.observe(bad)
    with pytest.raises(ValueError, match="broken iterator"):
        s.allocate(meta("p", 1), lambda: bad)
    with pytest.raises(ValueError, match="broken iterator"):
        with s.lease(meta("p", 1), lambda: bad):
            pass

    async def provider():
        return bad

    with pytest.raises(ValueError, match="broken iterator"):
        asyncio.run(s.allocate_async(meta("p", 1), provider))
    assert s.snapshot()["waiters"] == []


@pytest.mark.timeout(20)
def test_a_raising_processes_iterator_raises_instead_of_spinning():
    s = ReservationScheduler(timeout=0, settle_s=0)
    ok = stats_with([device()])
    with s.lease(meta("holder", 1000), lambda: ok) as g:
        s.attach_pid(g.id, os.getpid())
        bad = stats_with([device(processes=RaisingIterator())])
        with pytest.raises(ValueError, match="broken iterator"):
            s.observe(bad)
        with pytest.raises(ValueError, match="broken iterator"):
            s.allocate(meta("p", 1), lambda: bad)


# 2 ------------------------------------------------------------------ nothing swallowed


@pytest.mark.parametrize("exc", [KeyboardInterrupt, MemoryError])
def test_interrupts_and_memory_errors_from_input_reach_the_caller(exc):
    s = ReservationScheduler(timeout=0, settle_s=0)
    ok = stats_with([device()])
    with s.lease(meta("holder", 1000), lambda: ok) as g:
        s.attach_pid(g.id, os.getpid())

        def processes():
            yield {"pid": 1, "used_gpu_mb": 10.0}
            raise exc("from the provider")

        bad = stats_with([device(processes=processes())])
        with pytest.raises(exc):
            s.allocate(meta("p", 1), lambda: bad)
    assert s.snapshot()["waiters"] == []


# 4, 5 --------------------------------------------------------------- peaks persistence


def test_an_unwritable_peaks_path_never_breaks_admission(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "peaks.json"  # its parent is a file: every save fails
    caplog.set_level(logging.WARNING, logger=LOGGER)
    s = ReservationScheduler(timeout=0, settle_s=0, peaks_path=path)
    ok = stats_with([device(processes=[{"pid": os.getpid(), "used_gpu_mb": 3000.0}])])
    with s.lease(meta("a", 1000), lambda: ok) as g:
        s.attach_pid(g.id, os.getpid())
        assert s.observe(ok) == 1
        assert s.allocate(meta("unrelated", 1000), lambda: ok) is True
    assert s.record_peak("b", vram_mb=5000) == {"vram_mb": 5000.0, "ram_mb": None}
    assert s.peaks()["b"]["vram_mb"] == 5000.0
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "peaks" in r.getMessage()]
    saves = [w for w in warnings_ if "retried" in w]
    assert len(saves) == 1  # logged once, not at every observation or record
    assert not list(tmp_path.rglob("*.tmp.*"))


def test_concurrent_processes_merge_their_peaks(tmp_path):
    path = tmp_path / "peaks.json"
    code = textwrap.dedent(
        f"""
        import sys
        from plugin_scheduling import ReservationScheduler
        w = int(sys.argv[1])
        s = ReservationScheduler(peaks_path={str(path)!r})
        for i in range(50):
            s.record_peak(f"w{{w}}-p{{i}}", vram_mb=float(i + 1))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    saved = json.loads(path.read_text())
    assert len(saved) == 200
    assert saved["w3-p49"]["vram_mb"] == 50.0
    assert not list(tmp_path.glob("*.tmp.*"))


# 6 ------------------------------------------------------------------ re-entrancy


@pytest.mark.timeout(20)
def test_allocate_from_inside_the_stats_provider_raises_at_once():
    s = ReservationScheduler(timeout=300)
    ok = stats_with([device()])

    def provider():
        s.allocate(meta("inner", 1), lambda: ok)
        return ok

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="inside this scheduler's own stats provider"):
        s.allocate(meta("outer", 1), provider)
    assert time.monotonic() - t0 < 5
    assert s.snapshot()["waiters"] == []


# 7, 9 --------------------------------------------------------------- bad readings


def test_duplicate_device_indices_are_rejected_naming_the_index():
    s = ReservationScheduler(timeout=0)
    dup = stats_with([device(0, 24000, 24000), device(0, 24000, 24000)])
    with pytest.raises(InvalidStats, match="device index 0 appears more than once"):
        s.allocate(meta("p", 20000, gpu_count=2), lambda: dup)
    assert s.snapshot()["grants"] == []


def test_a_zero_gpu_total_is_no_capacity_not_unknown():
    s = ReservationScheduler(timeout=0)
    stats = {"gpu_total_memory_mb": 0, "gpu_free_memory_mb": 8000, "memory_total_mb": 64000.0, "memory_available_mb": 64000.0}
    assert [s.allocate(meta(f"p{i}", 20000), lambda: stats) for i in range(3)] == [False] * 3
    assert s.snapshot()["grants"] == []


# 8 ------------------------------------------------------------------ dead waiters


def _full_gpu():
    sim = SimulatedSystem(gpus=[10000.0])
    return sim


@pytest.mark.timeout(30)
def test_a_waiter_whose_loop_was_closed_does_not_hold_the_line():
    s = ReservationScheduler(timeout=20, poll_interval=30, settle_s=0, headroom=1.0, claim_timeout=0.2)
    sim = _full_gpu()
    assert s.allocate(meta("holder", 10000), sim)
    s.on_execution_start("holder")
    loop = asyncio.new_event_loop()
    task = loop.create_task(s.allocate_async(meta("dead", 10000), sim.snapshot_async))
    loop.run_until_complete(asyncio.sleep(0.05))  # the task is now waiting in line
    assert [w["plugin"] for w in s.snapshot()["waiters"]] == ["dead"]
    loop.stop()
    loop.close()  # the task is still referenced, its loop is gone
    s.on_execution_finish("holder")
    t0 = time.monotonic()
    assert s.allocate(meta("live", 10000), sim) is True
    assert time.monotonic() - t0 < 5  # not its 20 s timeout
    del task


@pytest.mark.timeout(30)
def test_a_waiter_on_a_loop_that_is_not_running_does_not_hold_the_line():
    s = ReservationScheduler(timeout=20, poll_interval=30, settle_s=0, headroom=1.0, claim_timeout=0.2)
    sim = _full_gpu()
    assert s.allocate(meta("holder", 10000), sim)
    s.on_execution_start("holder")
    loop = asyncio.new_event_loop()
    task = loop.create_task(s.allocate_async(meta("stuck", 10000), sim.snapshot_async))
    loop.run_until_complete(asyncio.sleep(0.05))
    # The loop is idle (not running) from here on.
    s.on_execution_finish("holder")
    t0 = time.monotonic()
    assert s.allocate(meta("live", 10000), sim) is True
    assert time.monotonic() - t0 < 5
    snap = s.snapshot()
    assert [w["plugin"] for w in snap["waiters"]] == ["stuck"] and snap["waiters"][0]["passed_over"] is True
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()
    assert s.snapshot()["waiters"] == []


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_after_fork_has_no_inherited_waiters():
    s = ReservationScheduler(timeout=30, poll_interval=30, settle_s=0, headroom=1.0)
    sim = _full_gpu()
    assert s.allocate(meta("holder", 10000), sim)
    s.on_execution_start("holder")
    waiter = threading.Thread(target=lambda: s.allocate(meta("parent-waiter", 10000), sim))
    waiter.start()
    deadline = time.monotonic() + 10
    while not s.snapshot()["waiters"]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # the child: its copy of the holder is released, then it allocates
        code = 1
        try:
            s.on_execution_finish("holder")
            t0 = time.monotonic()
            ok = ReservationScheduler.allocate(s, meta("child", 10000), sim)
            code = 0 if ok and time.monotonic() - t0 < 5 and s.snapshot()["waiters"] == [] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    s.on_execution_finish("holder")
    waiter.join(10)


# 10 ----------------------------------------------------------------- bad numbers


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"headroom": 10**400}, "headroom"),
        ({"settle_s": 10**400}, "settle_s"),
        ({"start_timeout": -1}, "start_timeout"),
        ({"peak_margin": "x"}, "peak_margin"),
        ({"peaks_path": "a\0b"}, "peaks_path"),
        ({"claim_timeout": float("nan")}, "claim_timeout"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises((TypeError, ValueError), match=field):
        ReservationScheduler(**kwargs)


def test_bad_call_arguments_name_the_field():
    s = ReservationScheduler(timeout=0)
    with pytest.raises(ValueError, match="grant_id"):
        s.attach_pid(-1, 5)
    with pytest.raises(ValueError, match="pid"):
        s.attach_pid(0, 2**32)
    with pytest.raises(ValueError, match="pid"):
        s.attach_pid(0, -1)
    with pytest.raises(ValueError, match="at most 65536"):
        s.allocate(meta("p", 1, gpu_count=2**40), lambda: stats_with([device()]))
    with pytest.raises(InvalidStats, match="stats must be a mapping"):
        s.observe(None)
    with pytest.raises(TypeError, match="gpu_count"):
        s.allocate(meta("p", 1, gpu_count=True), lambda: stats_with([device()]))


# 12, 13 ------------------------------------------------------------- logs a user can act on


def test_no_gpu_figures_is_logged_per_plugin_and_marked_on_the_grant(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    s = ReservationScheduler(timeout=0)
    no_gpu = {"memory_total_mb": 64000.0, "memory_available_mb": 64000.0}
    with s.lease(meta("whisper", 4000), lambda: no_gpu) as g:
        assert g.devices == [] and g.cuda_visible_devices == "" and g.without_gpu_figures is True
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("whisper" in line and "no GPU figures" in line for line in lines)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(line.startswith("granted whisper") for line in debug)
    assert any(line.startswith("released whisper") for line in debug)


def test_expiry_and_a_late_start_are_logged(caplog):
    from plugin_scheduling import ManualClock

    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = ManualClock()
    s = ReservationScheduler(timeout=0, start_timeout=5, clock=clock)
    ok = stats_with([device()])
    assert s.allocate(meta("slow", 1000), lambda: ok)
    clock.advance(6)
    assert s.allocate(meta("other", 1000), lambda: ok)  # any decision expires stale grants
    s.on_execution_start("slow")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("slow" in line and "expired" in line for line in lines)
    assert any("on_execution_start('slow')" in line or 'on_execution_start("slow")' in line for line in lines)


def test_a_need_that_can_never_fit_says_so_at_once(caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    s = ReservationScheduler(timeout=60)
    ok = stats_with([device(total=24000)])
    t0 = time.monotonic()
    with pytest.raises(ReservationTimeout, match="can never fit"):
        with s.lease(meta("huge", 80000), lambda: ok):
            pass
    assert s.allocate(meta("huge", 80000), lambda: ok) is False
    assert time.monotonic() - t0 < 5
    assert all("can never fit" in r.getMessage() for r in caplog.records)


def test_waiting_is_logged_with_who_and_why_in_rounded_mb(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    s = ReservationScheduler(timeout=0.05, poll_interval=0.01, settle_s=0)
    ok = stats_with([device(total=24000, free=6118.4000000000015)])
    assert s.allocate(meta("llm", 7000), lambda: ok) is False
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info and info[0].startswith("llm waits:") and "6118 MB available" in info[0]
    assert "6118.4000000000015" not in " ".join(r.getMessage() for r in caplog.records)


# 15 ----------------------------------------------------------------- async misuse


def test_a_blocking_wait_inside_a_running_loop_warns_once():
    s = ReservationScheduler(timeout=0.05, poll_interval=0.01, settle_s=0)
    full = stats_with([device(free=0)])

    async def main():
        with pytest.warns(RuntimeWarning, match="allocate_async"):
            s.allocate(meta("p", 1000), lambda: full)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s.allocate(meta("p", 1000), lambda: full)  # only once

    asyncio.run(main())


def test_a_sync_provider_given_to_allocate_async_gets_a_clear_error():
    s = ReservationScheduler(timeout=0)
    ok = stats_with([device()])
    with pytest.raises(TypeError, match="stats_provider returned a dict; allocate_async needs an async provider"):
        asyncio.run(s.allocate_async(meta("p", 1), lambda: ok))
    assert s.snapshot()["waiters"] == []
