"""``plugin_scheduling.ReservationScheduler``: atomic per-GPU reservations.

What is checked here:

1. basics: grant, placement (best fit, physical indices, CUDA_VISIBLE_DEVICES),
   multi-GPU all-or-nothing, gpu_count validation, RAM, headroom, the settle
   window, expiry of unstarted grants, on_missing_stats, counted executions,
   and clear exceptions for bad inputs;
2. side by side with the reference ``QueueScheduler``: N threads emulating the
   host on one 24 GB simulated GPU -- the reference double-books, ours never;
3. stress: 8 threads x 1,000 allocate/finish cycles on two simulated GPUs, and
   1,000 asyncio lease waiters with seeded random cancellation -- nothing
   over-reserved, nothing leaked (grants, waiters, async wakers);
4. FIFO order and no starvation;
5. Ctrl-C during a blocking allocate (child process);
6. the real cjm ``PluginManager`` with a worker subprocess;
7. explain / snapshot / repr / _repr_html_, measured peaks and their file.

Timing assertions are loose on purpose: "prompt" means well under a
``poll_interval`` of 30 s (< 5 s), never a tight bound.

Run:  python3 -m pytest tests/test_reservation.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import plugin_scheduling as ps
from plugin_scheduling import (
    InvalidManifest,
    InvalidStats,
    ReservationScheduler,
    ReservationTimeout,
    SimulatedOutOfMemory,
    SimulatedSystem,
)
from cjm_plugin_system.core import scheduling as ref
from conftest import PROBE_PLUGIN_SOURCE, probe_manifest, running_cjm_host

LONG_POLL = 30.0  # a wake-up that beats this by far cannot have come from the timer
PROMPT = 5.0  # generous bound for "promptly"
OURS_LOGGER = "plugin_scheduling.ReservationScheduler"


# --------------------------------------------------------------------------- helpers


def gpu_meta(name, vram_mb, **extra):
    return SimpleNamespace(
        name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram_mb, **extra}}
    )


def ram_meta(name, ram_mb):
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": False, "min_system_ram_mb": ram_mb}})


def gpus_stats(*devices, ram_total=64000.0, ram_free=64000.0):
    """Stats with per-device figures: ``devices`` are (index, total, free)."""
    return {
        "memory_total_mb": ram_total,
        "memory_available_mb": ram_free,
        "details": {
            "gpus": [
                {"index": i, "memory_total_mb": total, "memory_free_mb": free} for i, total, free in devices
            ]
        },
    }


def fixed(stats):
    return lambda: stats


def wait_until(predicate, timeout=10.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def n_waiters(s):
    return len(s.snapshot()["waiters"])


def grants_of(s, plugin=None):
    return [g for g in s.snapshot()["grants"] if plugin is None or g["plugin"] == plugin]


def assert_idle(s):
    snap = s.snapshot()
    assert snap["grants"] == []
    assert snap["waiters"] == []
    assert snap["reserved_vram_mb"] == {}
    assert snap["reserved_ram_mb"] == 0
    assert s._pending_wakers() == 0


@pytest.fixture
def quiet():
    """The reference configures the root logger at INFO on import; every wait of ours
    logs an INFO line. Stress tests silence that (it only costs time there)."""
    logger = logging.getLogger("plugin_scheduling")
    old = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(old)


class Waiter(threading.Thread):
    """A blocking allocate in a thread; records the result and when it returned."""

    def __init__(self, s, meta, provider, order=None):
        super().__init__(daemon=True)
        self.s, self.meta, self.provider, self.order = s, meta, provider, order
        self.result = None
        self.error = None
        self.returned_at = None

    def run(self):
        try:
            self.result = self.s.allocate(self.meta, self.provider)
            if self.result and self.order is not None:
                self.order.append(self.meta.name)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.returned_at = time.monotonic()


# =========================================================================== 1. basics


def test_grant_reserves_and_release_returns_to_zero():
    s = ReservationScheduler(timeout=1, poll_interval=0.05)
    sim = SimulatedSystem(gpus=[24000.0])
    assert s.allocate(gpu_meta("a", 4000, min_system_ram_mb=1000), sim) is True
    (g,) = s.snapshot()["grants"]
    assert (g["plugin"], g["devices"], g["vram_mb"], g["ram_mb"], g["started"]) == ("a", [0], 4000.0, 1000.0, False)
    assert s.snapshot()["reserved_vram_mb"] == {0: 4000.0}
    assert s.snapshot()["reserved_ram_mb"] == 1000.0
    assert s.get_active_plugins() == set()
    s.on_execution_start("a")
    assert grants_of(s)[0]["started"] is True
    assert s.get_active_plugins() == {"a"}
    s.on_execution_finish("a")
    assert_idle(s)


def test_lease_yields_grant_with_devices_and_releases_on_exit_and_error():
    s = ReservationScheduler(timeout=1, poll_interval=0.05)
    sim = SimulatedSystem(gpus=[24000.0, 16000.0])
    with s.lease(gpu_meta("a", 4000), sim) as grant:
        assert isinstance(grant, ps.Grant)
        assert grant.plugin == "a"
        assert grant.devices == [1]  # best fit: the smaller card
        assert grant.cuda_visible_devices == "1"
        assert grant.vram_mb == 4000.0
        assert grant.ram_mb == 0.0
        assert grants_of(s)[0]["started"] is True  # a lease starts its grant
        assert "a" in repr(grant)
    assert_idle(s)
    with pytest.raises(RuntimeError, match="inside"):
        with s.lease(gpu_meta("a", 4000), sim):
            raise RuntimeError("inside")
    assert_idle(s)


def test_best_fit_placement_and_ties_by_lowest_index():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    stats = fixed(gpus_stats((0, 24000, 24000), (1, 16000, 16000), (2, 80000, 80000)))
    with s.lease(gpu_meta("a", 10000), stats) as a:
        assert a.devices == [1]  # least spare after placement
        with s.lease(gpu_meta("b", 10000), stats) as b:
            # GPU 1 now has 14400 - 10000 = 4400 left: next best is GPU 0.
            assert b.devices == [0]
            # GPU 0 still fits 10000 with the least spare (1600): best fit keeps GPU 2 free.
            with s.lease(gpu_meta("c", 10000), stats) as c:
                assert c.devices == [0]
                with s.lease(gpu_meta("d", 10000), stats) as d:
                    assert d.devices == [2]
    twins = fixed(gpus_stats((0, 24000, 24000), (1, 24000, 24000)))
    with s.lease(gpu_meta("t", 1000), twins) as t:
        assert t.devices == [0]


def test_devices_are_the_physical_indices_from_the_stats():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    stats = fixed(gpus_stats((7, 24000, 24000), (3, 24000, 24000), (5, 8000, 8000)))
    with s.lease(gpu_meta("two", 8000, gpu_count=2), stats) as g:  # GPU 5 (7200 usable) cannot
        assert g.devices == [3, 7]  # sorted; tie on spare broken by lowest index
        assert g.cuda_visible_devices == "3,7"
    with s.lease(gpu_meta("one", 6000), stats) as g:
        assert g.devices == [5]
        assert g.cuda_visible_devices == "5"
    assert s.snapshot()["reserved_vram_mb"] == {}


def test_multi_gpu_is_all_or_nothing():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    stats = fixed(gpus_stats((0, 24000, 24000), (1, 16000, 16000), (2, 80000, 80000)))
    # Only GPU 2 can hold 30000: a 2-GPU need must not be half-granted.
    assert s.allocate(gpu_meta("big2", 30000, gpu_count=2), stats) is False
    assert_idle(s)
    with s.lease(gpu_meta("pair", 20000, gpu_count=2), stats) as g:
        assert g.devices == [0, 2]
        assert g.cuda_visible_devices == "0,2"
        assert g.vram_mb == 20000.0  # per device
        assert s.snapshot()["reserved_vram_mb"] == {0: 20000.0, 2: 20000.0}
    with s.lease(gpu_meta("all3", 1000, gpu_count=3), stats) as g:
        assert g.devices == [0, 1, 2]
    # More GPUs than the machine has.
    assert s.allocate(gpu_meta("four", 1, gpu_count=4), stats) is False
    why = s.explain(gpu_meta("four", 1, gpu_count=4), stats)
    assert why["would_wait"] is True and why["resource"] == "gpu_count"
    assert "4 GPUs" in why["reason"] and "3" in why["reason"]
    assert_idle(s)


@pytest.mark.parametrize(
    "count, exc, text",
    [
        (0, ValueError, ">= 1"),
        (-1, ValueError, ">= 1"),
        ("x", TypeError, "must be an int"),
        (2.0, TypeError, "must be an int"),
        (None, None, None),  # absent: 1 GPU
    ],
)
def test_gpu_count_validation(count, exc, text):
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    meta = gpu_meta("p", 100, gpu_count=count)
    sim = SimulatedSystem(gpus=[1000.0, 1000.0])
    if exc is None:
        with s.lease(meta, sim) as g:
            assert g.devices == [0]
        return
    for call in (lambda: s.allocate(meta, sim), lambda: s.explain(meta, sim)):
        with pytest.raises(exc) as info:
            call()
        assert "gpu_count" in str(info.value) and text in str(info.value)
    assert_idle(s)


def test_ram_is_reserved_against_headroom_and_available():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    sim = SimulatedSystem(gpus=[], ram_total_mb=64000.0)
    with s.lease(ram_meta("a", 40000), sim) as a:
        assert a.devices == [] and a.ram_mb == 40000.0 and a.vram_mb == 0.0
        assert s.snapshot()["reserved_ram_mb"] == 40000.0
        # 0.9 * 64000 = 57600: 40000 + 20000 does not fit, 17000 does.
        assert s.allocate(ram_meta("b", 20000), sim) is False
        why = s.explain(ram_meta("b", 20000), sim)
        assert why["resource"] == "ram" and why["holders"] == ["a"]
        assert why["needed_mb"] == 20000.0 and why["available_mb"] == pytest.approx(17600.0)
        with s.lease(ram_meta("c", 17000), sim):
            pass
    # The live reading also counts: RAM used by someone else is not available.
    sim.occupy_ram(60000)
    assert s.allocate(ram_meta("d", 5000), sim) is False
    sim.free_ram(60000)
    assert_idle(s)


def test_cpu_plugin_ignores_gpu_fields():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    meta = SimpleNamespace(
        name="cpu", manifest={"resources": {"requires_gpu": False, "min_gpu_vram_mb": 10**9, "gpu_count": 8}}
    )
    with s.lease(meta, SimulatedSystem(gpus=[1000.0])) as g:
        assert g.devices == [] and g.vram_mb == 0.0


def test_headroom_caps_total_reservations_even_when_readings_lag():
    # settle 0: only headroom protects (the reading never shows what is reserved).
    s = ReservationScheduler(timeout=0, poll_interval=0.01, headroom=0.5, settle_s=0)
    stats = fixed(gpus_stats((0, 24000, 24000)))
    assert s.allocate(gpu_meta("a", 10000), stats) is True
    assert s.allocate(gpu_meta("b", 2000), stats) is True  # 12000 = 0.5 * 24000
    assert s.allocate(gpu_meta("c", 1), stats) is False
    why = s.explain(gpu_meta("c", 1), stats)
    assert why["available_mb"] == pytest.approx(0.0) and set(why["holders"]) == {"a", "b"}
    for name in ("a", "b"):
        s.on_execution_start(name)
        s.on_execution_finish(name)
    assert_idle(s)
    with pytest.raises(ValueError, match="headroom"):
        ReservationScheduler(headroom=1.5)
    with pytest.raises(ValueError, match="headroom"):
        ReservationScheduler(headroom=float("nan"))


def test_settle_window_protects_grants_the_reading_cannot_show_yet():
    """Two allocations at the same moment on one reading: the second must wait.

    (With 24 GB free and 12 GB + 12 GB both fit exactly -- 12000 <= 24000 - 12000 -- so
    this uses 16 GB each: headroom 1.0 leaves capacity for both, only the settle window
    can refuse the second.)
    """
    sim = SimulatedSystem(gpus=[48000.0])
    sim.occupy(24000)  # someone else: the reading shows 24 GB free
    s = ReservationScheduler(timeout=0.2, poll_interval=0.02, headroom=1.0, settle_s=60)
    barrier = threading.Barrier(2)
    results = {}

    def go(name):
        barrier.wait()
        results[name] = s.allocate(gpu_meta(name, 16000), sim)

    threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results.values()) == [False, True], results
    assert len(s.snapshot()["grants"]) == 1
    assert s.snapshot()["waiters"] == []  # the one that timed out left the line
    winner = next(n for n, ok in results.items() if ok)
    why = s.explain(gpu_meta("c", 16000), sim)
    assert why["would_wait"] is True and why["available_mb"] == pytest.approx(8000.0)
    assert why["holders"] == [winner]

    # The window is time-bound: once settled, the reading is trusted again ...
    s2 = ReservationScheduler(timeout=0, poll_interval=0.01, headroom=1.0, settle_s=0.2)
    assert s2.allocate(gpu_meta("a", 16000), sim) is True
    assert s2.allocate(gpu_meta("b", 16000), sim) is False
    time.sleep(0.3)
    # ... so if the model never showed up in the reading, the second now fits;
    assert s2.allocate(gpu_meta("b", 16000), sim) is True
    # ... and when it does show up, the reading refuses the third by itself.
    sim.occupy(16000)
    time.sleep(0.3)
    assert s2.allocate(gpu_meta("c", 16000), sim) is False


def test_unstarted_grants_expire_after_start_timeout():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, headroom=1.0, settle_s=0, start_timeout=0.2)
    stats = fixed(gpus_stats((0, 24000, 24000)))
    assert s.allocate(gpu_meta("never_started", 20000), stats) is True
    assert s.allocate(gpu_meta("started", 20000), stats) is False
    time.sleep(0.3)
    assert s.allocate(gpu_meta("started", 20000), stats) is True  # the stale grant expired
    s.on_execution_start("started")
    assert [g["plugin"] for g in s.snapshot()["grants"]] == ["started"]
    time.sleep(0.3)
    # A started grant never expires.
    assert s.allocate(gpu_meta("x", 20000), stats) is False
    assert [g["plugin"] for g in s.snapshot()["grants"]] == ["started"]
    s.on_execution_finish("never_started")  # expired: finishing it releases nothing else
    assert [g["plugin"] for g in s.snapshot()["grants"]] == ["started"]
    s.on_execution_finish("started")
    assert_idle(s)


def test_executions_are_counted_not_merged():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    stats = fixed(gpus_stats((0, 24000, 24000)))
    assert s.allocate(gpu_meta("w", 3000), stats)
    assert s.allocate(gpu_meta("w", 3000), stats)
    assert s.snapshot()["reserved_vram_mb"] == {0: 6000.0}
    s.on_execution_start("w")
    first, second = s.snapshot()["grants"]
    assert first["started"] is True and second["started"] is False  # oldest unstarted
    s.on_execution_start("w")
    s.on_execution_finish("w")
    assert [g["id"] for g in s.snapshot()["grants"]] == [second["id"]]  # oldest started
    assert s.get_active_plugins() == {"w"}  # the second execution still runs
    s.on_execution_finish("w")
    s.on_execution_finish("w")  # one too many: harmless
    s.on_execution_finish("unknown")
    assert_idle(s)


def test_on_missing_stats_allow_reserves_ram_only():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, on_missing_stats="allow")
    no_gpu = SimulatedSystem(gpus=[])
    with s.lease(gpu_meta("g", 4000, min_system_ram_mb=100), no_gpu) as g:
        assert g.devices == [] and g.vram_mb == 0.0 and g.ram_mb == 100.0


def test_on_missing_stats_block_waits_for_gpu_figures():
    s = ReservationScheduler(timeout=10, poll_interval=LONG_POLL, on_missing_stats="block")
    meta = gpu_meta("g", 4000)
    stats = {"now": SimulatedSystem(gpus=[])()}
    why = s.explain(meta, lambda: stats["now"])
    assert why["would_wait"] is True and "on_missing_stats" in why["reason"]
    quick = ReservationScheduler(timeout=0, poll_interval=0.01, on_missing_stats="block")
    assert quick.allocate(meta, lambda: stats["now"]) is False
    assert_idle(quick)
    assert s.allocate(ram_meta("other", 1), lambda: stats["now"])  # released below, to wake
    w = Waiter(s, meta, lambda: stats["now"])
    w.start()
    wait_until(lambda: n_waiters(s) == 1)
    stats["now"] = SimulatedSystem(gpus=[8000.0])()
    t0 = time.monotonic()
    s.on_execution_finish("other")  # a release wakes the head, which now sees a GPU
    w.join(PROMPT)
    assert w.result is True and time.monotonic() - t0 < PROMPT
    assert grants_of(s, "g")[0]["devices"] == [0]


def test_on_missing_stats_and_policy_arguments_are_validated():
    with pytest.raises(ValueError, match="on_missing_stats"):
        ReservationScheduler(on_missing_stats="maybe")
    with pytest.raises(ValueError, match="policy"):
        ReservationScheduler(policy="lifo")
    assert ReservationScheduler().snapshot()["policy"] == "fifo"
    for kw in ("settle_s", "start_timeout", "peak_margin"):
        with pytest.raises(ValueError, match=kw):
            ReservationScheduler(**{kw: -1.0})


@pytest.mark.parametrize("field", ["min_gpu_vram_mb", "min_system_ram_mb"])
@pytest.mark.parametrize(
    "value, exc",
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("4096", TypeError), ([1], TypeError)],
)
def test_bad_mb_values_name_the_field(field, value, exc):
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    meta = SimpleNamespace(name="p", manifest={"resources": {"requires_gpu": True, field: value}})
    sim = SimulatedSystem(gpus=[24000.0])
    for call in (
        lambda: s.allocate(meta, sim),
        lambda: s.explain(meta, sim),
        lambda: s.lease(meta, sim).__enter__(),
    ):
        with pytest.raises(exc) as info:
            call()
        assert f"manifest['resources']['{field}']" in str(info.value)
    assert_idle(s)


def test_bad_manifest_and_name_give_clear_exceptions():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    sim = SimulatedSystem(gpus=[24000.0])
    with pytest.raises(InvalidManifest, match=r"plugin_meta\.manifest must be a mapping"):
        s.allocate(SimpleNamespace(name="p", manifest=[1, 2]), sim)
    with pytest.raises(InvalidManifest, match=r"manifest\['resources'\] must be a mapping"):
        s.allocate(SimpleNamespace(name="p", manifest={"resources": 5}), sim)
    assert issubclass(InvalidManifest, AttributeError)  # existing except clauses keep working
    with pytest.raises(TypeError, match=r"plugin_meta\.name must be a str"):
        s.allocate(SimpleNamespace(name=5, manifest={}), sim)
    # No manifest / no resources: nothing to reserve.
    assert s.allocate(SimpleNamespace(name="bare"), sim) is True
    assert s.allocate(SimpleNamespace(name="bare", manifest={}), sim) is True
    assert [g["vram_mb"] + g["ram_mb"] for g in s.snapshot()["grants"]] == [0.0, 0.0]
    assert s.snapshot()["waiters"] == []


@pytest.mark.parametrize("stats", [None, [1, 2], "stats", 3])
def test_non_mapping_stats_raise_invalid_stats(stats):
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    with pytest.raises(InvalidStats, match="stats must be a mapping"):
        s.allocate(gpu_meta("p", 1), fixed(stats))
    assert issubclass(InvalidStats, AttributeError)
    assert_idle(s)


def test_bad_stats_values_name_the_field():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    with pytest.raises(TypeError, match=r'stats\["gpu_free_memory_mb"\]'):
        s.allocate(gpu_meta("p", 1), fixed({"gpu_total_memory_mb": 1000, "gpu_free_memory_mb": "lots"}))
    bad_gpu = gpus_stats((0, 1000, 1000))
    bad_gpu["details"]["gpus"][0]["memory_free_mb"] = float("nan")
    with pytest.raises(ValueError, match="memory_free_mb"):
        s.allocate(gpu_meta("p", 1), fixed(bad_gpu))
    assert_idle(s)


@pytest.mark.parametrize(
    "gpus",
    [
        pytest.param(5, id="gpus_not_a_list"),
        pytest.param([5], id="gpu_not_a_mapping"),
        pytest.param([{"index": -1, "memory_total_mb": 1, "memory_free_mb": 1}], id="negative_index"),
        pytest.param([{"index": "a", "memory_total_mb": 1, "memory_free_mb": 1}], id="str_index"),
    ],
)
def test_bad_gpu_entries_name_the_field(gpus):
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    with pytest.raises(Exception) as info:
        s.allocate(gpu_meta("p", 1), fixed({"details": {"gpus": gpus}}))
    assert "gpus" in str(info.value), f"{type(info.value).__name__}: {info.value}"


def test_non_callable_provider_is_rejected():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    with pytest.raises(TypeError, match="stats_provider"):
        s.allocate(gpu_meta("p", 1), {"gpu_free_memory_mb": 1})
    assert_idle(s)


def test_provider_exception_propagates_same_object_and_leaves_no_waiter():
    s = ReservationScheduler(timeout=10, poll_interval=LONG_POLL)
    boom = ValueError("stats exploded")

    def raising():
        raise boom

    with pytest.raises(ValueError) as info:
        s.allocate(gpu_meta("p", 1), raising)
    assert info.value is boom
    assert_idle(s)

    async def araising():
        raise boom

    with pytest.raises(ValueError) as info:
        asyncio.run(s.allocate_async(gpu_meta("p", 1), araising))
    assert info.value is boom
    assert_idle(s)

    # Raising after having waited in line: it leaves the line, and whoever is
    # behind it gets its turn at once (no ghost at the head).
    stats = fixed(gpus_stats((0, 10000, 10000)))
    s2 = ReservationScheduler(timeout=10, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    assert s2.allocate(gpu_meta("holder", 10000), stats)
    s2.on_execution_start("holder")
    calls = []

    def fails_second_time():
        calls.append(1)
        if len(calls) > 1:
            raise boom
        return stats()

    head = Waiter(s2, gpu_meta("head", 10000), fails_second_time)
    head.start()
    wait_until(lambda: n_waiters(s2) == 1)
    behind = Waiter(s2, gpu_meta("behind", 10000), stats)
    behind.start()
    wait_until(lambda: n_waiters(s2) == 2)
    t0 = time.monotonic()
    s2.on_execution_finish("holder")
    head.join(PROMPT)
    behind.join(PROMPT)
    assert head.error is boom
    assert behind.result is True and behind.returned_at - t0 < PROMPT
    assert s2.snapshot()["waiters"] == []


def test_timeout_returns_false_logs_reason_and_lease_raises(caplog):
    caplog.set_level(logging.INFO, logger=OURS_LOGGER)
    s = ReservationScheduler(timeout=0.1, poll_interval=0.02)
    full = SimulatedSystem(gpus=[8000.0])
    full.occupy(8000)
    t0 = time.monotonic()
    assert s.allocate(gpu_meta("p", 4000), full) is False
    assert 0.1 <= time.monotonic() - t0 < PROMPT
    errors = [r.getMessage() for r in caplog.records if r.name == OURS_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Timeout waiting for resources for p" in errors[0] and "GPU 0" in errors[0]
    with pytest.raises(ReservationTimeout, match="'p'") as info:
        with s.lease(gpu_meta("p", 4000), full):
            pytest.fail("must not enter")
    assert isinstance(info.value, TimeoutError)

    async def lease_async():
        async with s.lease_async(gpu_meta("p", 4000), full.snapshot_async):
            pytest.fail("must not enter")

    with pytest.raises(ReservationTimeout):
        asyncio.run(lease_async())
    assert asyncio.run(s.allocate_async(gpu_meta("p", 4000), full.snapshot_async)) is False
    assert_idle(s)


def test_release_wakes_blocked_and_async_waiters_promptly():
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))
    assert s.allocate(gpu_meta("holder", 10000), stats)
    s.on_execution_start("holder")
    w = Waiter(s, gpu_meta("w", 10000), stats)
    w.start()
    wait_until(lambda: n_waiters(s) == 1)
    time.sleep(0.05)
    t0 = time.monotonic()
    s.on_execution_finish("holder")
    w.join(PROMPT)
    assert w.result is True and w.returned_at - t0 < PROMPT

    async def main():
        async def astats():
            return stats()

        task = asyncio.ensure_future(s.allocate_async(gpu_meta("a", 10000), astats))
        for _ in range(1000):
            await asyncio.sleep(0.002)
            if s._pending_wakers() == 1:
                break
        assert s._pending_wakers() == 1 and n_waiters(s) == 1
        t0 = time.monotonic()
        s.on_execution_finish("w")  # w was never started: its grant is released anyway
        assert await asyncio.wait_for(task, PROMPT) is True
        return time.monotonic() - t0

    assert asyncio.run(main()) < PROMPT
    assert s._pending_wakers() == 0


def test_async_polling_waiter_keeps_one_waker_and_cancel_hands_over():
    s = ReservationScheduler(timeout=60, poll_interval=0.01, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))

    async def astats():
        return stats()

    assert s.allocate(gpu_meta("holder", 10000), stats)
    s.on_execution_start("holder")

    async def main():
        head = asyncio.ensure_future(s.allocate_async(gpu_meta("head", 10000), astats))
        seen = []
        for _ in range(40):  # ~20 poll ticks without any release
            await asyncio.sleep(0.005)
            seen.append(s._pending_wakers())
        assert max(seen) <= 1, seen  # each tick replaces its waker, none pile up
        assert n_waiters(s) == 1
        behind = Waiter(s, gpu_meta("behind", 10000), stats)
        behind.start()
        while n_waiters(s) < 2:
            await asyncio.sleep(0.002)
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        assert [w["plugin"] for w in s.snapshot()["waiters"]] == ["behind"]
        assert s._pending_wakers() == 0
        t0 = time.monotonic()
        s.on_execution_finish("holder")
        await asyncio.get_running_loop().run_in_executor(None, behind.join, PROMPT)
        return behind, time.monotonic() - t0

    behind, elapsed = asyncio.run(main())
    assert behind.result is True and elapsed < PROMPT
    s.on_execution_finish("behind")
    assert_idle(s)


# =========================================================================== 2. side by side


def _host_like_run(scheduler, sim, n, need, is_ours):
    """N threads doing what PluginManager.execute_plugin does, with a plugin that loads
    its model 20 ms after admission (so readings lag) and runs 50 ms."""
    lock = threading.Lock()
    state = {"in_use": 0.0, "max_in_use": 0.0, "oom": 0, "admitted": 0}
    barrier = threading.Barrier(n)
    errors = []

    def worker(i):
        name = f"plugin{i}"
        meta = gpu_meta(name, need)
        try:
            barrier.wait()
            if not scheduler.allocate(meta, sim):
                errors.append(f"{name} not admitted")
                return
            scheduler.on_execution_start(name)
            with lock:
                state["admitted"] += 1
                state["in_use"] += need
                state["max_in_use"] = max(state["max_in_use"], state["in_use"])
            try:
                time.sleep(0.02)  # model load
                loaded = False
                try:
                    sim.occupy(need)
                    loaded = True
                except SimulatedOutOfMemory:
                    with lock:
                        state["oom"] += 1
                time.sleep(0.05)  # run
                if loaded:
                    sim.free(need)
            finally:
                with lock:
                    state["in_use"] -= need
                scheduler.on_execution_finish(name)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return state, errors


def test_reference_double_books_and_ours_never_does(quiet):
    n, total, need = 8, 24000.0, 10000.0

    ref_sim = SimulatedSystem(gpus=[total])
    ref_state, ref_errors = _host_like_run(ref.QueueScheduler(timeout=10, poll_interval=0.01), ref_sim, n, need, False)
    assert ref_errors == []
    # All 8 see 24 GB free before anyone's model shows up: the reference admits them together.
    assert ref_state["max_in_use"] > total or ref_state["oom"] > 0, ref_state
    assert ref_state["max_in_use"] > total and ref_state["oom"] > 0  # both, in fact

    our_sim = SimulatedSystem(gpus=[total])
    ours = ReservationScheduler(timeout=30, poll_interval=LONG_POLL)
    t0 = time.monotonic()
    our_state, our_errors = _host_like_run(ours, our_sim, n, need, True)
    elapsed = time.monotonic() - t0
    assert our_errors == []
    assert our_state["admitted"] == n
    assert our_state["oom"] == 0
    assert 0 < our_state["max_in_use"] <= 0.9 * total
    assert elapsed < PROMPT  # served by wakes, not by the 30 s poll
    assert_idle(ours)


# =========================================================================== 3. stress


def test_stress_threads_never_over_reserve_and_leak_nothing(quiet):
    totals = {0: 24000.0, 1: 16000.0}
    headroom = 0.9
    sim = SimulatedSystem(gpus=[totals[0], totals[1]])
    s = ReservationScheduler(timeout=30, poll_interval=0.05, headroom=headroom, settle_s=0.05)
    lock = threading.Lock()
    used = {0: 0.0, 1: 0.0}
    peak = {0: 0.0, 1: 0.0}
    problems = []
    cycles, n_threads = 1000, 8

    def worker(t):
        rng = random.Random(1000 + t)
        name = f"t{t}"  # one name per thread: its grant is the only one of that name
        for i in range(cycles):
            count = 2 if rng.random() < 0.15 else 1
            need = 4000.0 if count == 2 else rng.choice([3000.0, 5000.0, 7000.0])
            meta = gpu_meta(name, need, gpu_count=count)
            if not s.allocate(meta, sim):
                problems.append(("not admitted", t, i))
                continue
            s.on_execution_start(name)
            mine = grants_of(s, name)
            if len(mine) != 1 or len(mine[0]["devices"]) != count:
                problems.append(("grant", t, i, mine))
                s.on_execution_finish(name)
                continue
            devices = mine[0]["devices"]
            with lock:
                for d in devices:
                    used[d] += need
                    peak[d] = max(peak[d], used[d])
                    if used[d] > headroom * totals[d] + 1e-6:
                        problems.append(("over-reserved", d, used[d]))
            occupied = []
            try:
                for d in devices:
                    sim.occupy(need, d)
                    occupied.append(d)
            except SimulatedOutOfMemory as e:
                problems.append(("oom", repr(e)))
            time.sleep(rng.random() * 0.0005)
            for d in occupied:
                sim.free(need, d)
            with lock:
                for d in devices:
                    used[d] -= need
            s.on_execution_finish(name)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads)
    assert problems == [], problems[:5]
    assert peak[0] > 0 and peak[1] > 0
    assert max(peak.values()) > 7000  # there was real overlap to protect
    assert_idle(s)
    assert elapsed < 20


def test_stress_async_lease_waiters_with_random_cancellation(quiet):
    rng = random.Random(20240607)
    total, headroom = 24000.0, 0.9
    sim = SimulatedSystem(gpus=[total])
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=headroom, settle_s=0)
    n = 1000
    held = {"now": 0.0, "peak": 0.0, "entered": 0}
    over = []

    async def one(i, need, hold):
        meta = gpu_meta(f"p{i % 50}", need)
        async with s.lease_async(meta, sim.snapshot_async) as g:
            held["entered"] += 1
            held["now"] += g.vram_mb
            held["peak"] = max(held["peak"], held["now"])
            if held["now"] > headroom * total + 1e-6:
                over.append(held["now"])
            try:
                await asyncio.sleep(hold)
            finally:
                held["now"] -= g.vram_mb

    async def main():
        tasks = [
            asyncio.create_task(one(i, rng.choice([2000.0, 4000.0, 8000.0]), rng.random() * 0.002))
            for i in range(n)
        ]
        cancelled = 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(rng.random() * 0.002)
            live = [t for t in tasks if not t.done()]
            if live and rng.random() < 0.6:
                rng.choice(live).cancel()
                cancelled += 1
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, cancelled

    t0 = time.monotonic()
    results, cancelled = asyncio.run(main())
    elapsed = time.monotonic() - t0
    errors = [r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)]
    n_cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert errors == []
    assert over == []
    assert n_cancelled > 50 and held["entered"] > 100, (n_cancelled, held)
    assert held["now"] == 0
    assert_idle(s)  # no grants, no waiters, _pending_wakers() == 0
    assert elapsed < 20


# =========================================================================== 4. FIFO


def test_waiters_are_admitted_in_arrival_order():
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))
    assert s.allocate(gpu_meta("holder", 10000), stats)
    s.on_execution_start("holder")
    order = []
    waiters = []
    names = [f"w{i}" for i in range(6)]
    for i, name in enumerate(names):
        w = Waiter(s, gpu_meta(name, 10000), stats, order)
        w.start()
        waiters.append(w)
        wait_until(lambda i=i: n_waiters(s) == i + 1)
    snap = s.snapshot()["waiters"]
    assert [w["plugin"] for w in snap] == names
    assert [w["position"] for w in snap] == list(range(6))
    t0 = time.monotonic()
    s.on_execution_finish("holder")
    for w in waiters:
        w.join(PROMPT)
        assert w.result is True
        s.on_execution_start(w.meta.name)
        s.on_execution_finish(w.meta.name)  # hand over to the next in line
    assert order == names
    assert time.monotonic() - t0 < PROMPT
    assert_idle(s)


def test_big_request_at_the_head_is_not_overtaken_by_later_small_ones():
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))
    assert s.allocate(gpu_meta("small_holder", 4000), stats)
    s.on_execution_start("small_holder")
    order = []
    big = Waiter(s, gpu_meta("big", 8000), stats, order)
    big.start()
    wait_until(lambda: n_waiters(s) == 1)
    smalls = []
    for i in range(4):
        w = Waiter(s, gpu_meta(f"small{i}", 2000), stats, order)
        w.start()
        smalls.append(w)
        wait_until(lambda i=i: n_waiters(s) == i + 2)
    # 6000 MB is free and each small one would fit -- but the big one is first.
    time.sleep(0.2)
    assert [g["plugin"] for g in s.snapshot()["grants"]] == ["small_holder"]
    assert all(w.returned_at is None for w in smalls)
    why = s.explain(gpu_meta("late", 1), stats)
    assert why["waiting_ahead"] == 5 and why["would_wait"] is True
    s.on_execution_finish("small_holder")
    big.join(PROMPT)
    assert big.result is True
    smalls[0].join(PROMPT)  # 8000 + 2000 fits exactly
    assert smalls[0].result is True
    assert order[:2] == ["big", "small0"]
    time.sleep(0.05)
    assert all(w.returned_at is None for w in smalls[1:])
    s.on_execution_finish("big")
    for w in smalls[1:]:
        w.join(PROMPT)
        assert w.result is True
    # One release admits small1..3 in one pass, in FIFO order (grant ids grow
    # in grant order); their threads may return in any order.
    assert order[:2] == ["big", "small0"] and sorted(order[2:]) == ["small1", "small2", "small3"]
    granted = [g["plugin"] for g in sorted(s.snapshot()["grants"], key=lambda g: g["id"])]
    assert granted == ["small0", "small1", "small2", "small3"]
    for name in order:
        s.on_execution_finish(name)
    assert_idle(s)


# =========================================================================== 5. Ctrl-C

_CTRL_C_CHILD = r"""
import json, sys, threading, time, types
import plugin_scheduling as ps
s = ps.ReservationScheduler(timeout=60, poll_interval=30)
sim = ps.SimulatedSystem(gpus=[8000.0])
sim.occupy(8000)
meta = types.SimpleNamespace(name='p', manifest={'resources': {'requires_gpu': True, 'min_gpu_vram_mb': 4000}})
def announce():
    while not s.snapshot()['waiters']:
        time.sleep(0.005)
    print('ready', flush=True)
threading.Thread(target=announce, daemon=True).start()
try:
    s.allocate(meta, sim)
    print(json.dumps({'returned': True}), flush=True)
except KeyboardInterrupt:
    snap = s.snapshot()
    print(json.dumps({'interrupted': True, 'waiters': snap['waiters'], 'grants': snap['grants']}), flush=True)
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
def test_ctrl_c_interrupts_blocking_allocate_and_leaves_the_line():
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _read_line(proc, 30).strip() == "ready"
        time.sleep(0.1)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = _read_line(proc, 10)
        latency = time.monotonic() - sent
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    report = json.loads(line)
    assert report == {"interrupted": True, "waiters": [], "grants": []}, (report, err)
    assert latency < 2.0, f"Ctrl-C took {latency:.2f}s"


# =========================================================================== 6. real host

HOST_PLUGIN = "resv_probe"
HOST_RESOURCES = {"requires_gpu": True, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 1024}
BLOCKED_MSG = f"ResourceScheduler blocked execution of {HOST_PLUGIN} (Eviction failed)"

class SimStats:
    """Scripted ``_get_global_stats(_async)``: SimulatedSystem numbers, counted."""

    def __init__(self, sim):
        self.sim = sim
        self.sync_calls = 0
        self.async_calls = 0

    def sync(self):
        self.sync_calls += 1
        return self.sim()

    async def async_(self):
        self.async_calls += 1
        await asyncio.sleep(0)
        return self.sim()


@pytest.fixture(scope="module")
def cjm_host(tmp_path_factory):
    with running_cjm_host(  # tests/conftest.py
        tmp_path_factory.mktemp("resv_host"),
        sources={"resv_probe_plugin.py": PROBE_PLUGIN_SOURCE},
        manifests=[
            probe_manifest(
                HOST_PLUGIN, HOST_RESOURCES, module="resv_probe_plugin", description="reservation host-integration probe"
            )
        ],
        scheduler=ReservationScheduler(),
    ) as env:
        yield SimpleNamespace(manager=env.manager, probe=env.probe, pid=env.procs[0].pid)


@pytest.fixture
def host(cjm_host):
    sim = SimulatedSystem(gpus=[24000.0], ram_total_mb=64000.0)
    stats = SimStats(sim)
    m = cjm_host.manager
    m._get_global_stats = stats.sync
    m._get_global_stats_async = stats.async_
    cjm_host.sim, cjm_host.stats = sim, stats
    assert m.plugins[HOST_PLUGIN].instance.process.poll() is None
    yield cjm_host
    m.scheduler = ref.PermissiveScheduler()


def _worker_calls(host):
    resp = host.probe.get(f"{host.manager.get_plugin(HOST_PLUGIN).base_url}/progress")
    resp.raise_for_status()
    return int(resp.json()["progress"])


def test_host_execute_plugin_holds_a_started_grant_while_running(host):
    s = ReservationScheduler(timeout=5, poll_interval=0.05)
    host.manager.scheduler = s
    box = {}

    def run():
        try:
            box["result"] = host.manager.execute_plugin(HOST_PLUGIN, sleep=0.4)
        except Exception as e:  # noqa: BLE001
            box["error"] = e

    before = _worker_calls(host)
    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(lambda: len(s.snapshot()["grants"]) == 1, timeout=10)
        (g,) = s.snapshot()["grants"]
        running = t.is_alive()
    finally:
        t.join(15)
    assert "error" not in box, box.get("error")
    assert running
    assert (g["plugin"], g["devices"], g["vram_mb"], g["ram_mb"], g["started"]) == (
        HOST_PLUGIN, [0], 4096.0, 1024.0, True
    )
    assert box["result"]["plugin"] == HOST_PLUGIN and box["result"]["pid"] == host.pid
    assert _worker_calls(host) - before == 1
    assert host.stats.sync_calls == 1
    assert_idle(s)


def test_host_execute_plugin_async_admitted_and_released(host):
    s = ReservationScheduler(timeout=5, poll_interval=0.05)
    host.manager.scheduler = s
    before = _worker_calls(host)
    result = asyncio.run(host.manager.execute_plugin_async(HOST_PLUGIN, x=1))
    assert result["kwargs"] == {"x": 1} and result["pid"] == host.pid
    assert _worker_calls(host) - before == 1
    assert (host.stats.sync_calls, host.stats.async_calls) == (0, 1)
    assert_idle(s)


def test_host_second_execution_waits_for_the_first_and_is_woken(host):
    # 6000 MB card: one 4096 MB execution at a time.
    host.sim = SimulatedSystem(gpus=[6000.0], ram_total_mb=64000.0)
    host.stats.sim = host.sim
    s = ReservationScheduler(timeout=30, poll_interval=LONG_POLL)
    host.manager.scheduler = s

    async def main():
        first = asyncio.create_task(host.manager.execute_plugin_async(HOST_PLUGIN, sleep=0.4, n=1))
        while not s.snapshot()["grants"]:
            await asyncio.sleep(0.005)
        second = asyncio.create_task(host.manager.execute_plugin_async(HOST_PLUGIN, n=2))
        while not s.snapshot()["waiters"]:
            await asyncio.sleep(0.005)
        snap = s.snapshot()
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(first, second), 20)
        return snap, results, time.monotonic() - t0

    snap, (r1, r2), elapsed = asyncio.run(main())
    assert [g["plugin"] for g in snap["grants"]] == [HOST_PLUGIN] and snap["grants"][0]["started"]
    assert [w["plugin"] for w in snap["waiters"]] == [HOST_PLUGIN]
    assert r1["kwargs"] == {"sleep": 0.4, "n": 1} and r2["kwargs"] == {"n": 2}
    assert elapsed < PROMPT  # woken by the first's release, not by the 30 s poll
    assert_idle(s)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_host_blocked_raises_runtime_error_and_leaves_nothing(host, mode):
    host.sim.occupy(22000)  # 2000 MB free < 4096
    s = ReservationScheduler(timeout=0.2, poll_interval=0.05)
    host.manager.scheduler = s
    before = _worker_calls(host)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        if mode == "sync":
            host.manager.execute_plugin(HOST_PLUGIN, x=1)
        else:
            asyncio.run(host.manager.execute_plugin_async(HOST_PLUGIN, x=1))
    assert str(info.value) == BLOCKED_MSG
    assert 0.2 <= time.monotonic() - t0 < PROMPT
    assert _worker_calls(host) == before
    assert_idle(s)


# =========================================================================== 7. introspection, peaks


def test_explain_reports_fit_and_refusal_details():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    stats = fixed(gpus_stats((0, 24000, 24000), (1, 16000, 16000)))
    fit = s.explain(gpu_meta("a", 10000, min_system_ram_mb=500), stats)
    assert fit == {
        "plugin": "a",
        "gpu_count": 1,
        "vram_mb": 10000.0,
        "ram_mb": 500.0,
        "waiting_ahead": 0,
        "waiting": 0,
        "policy": "fifo",
        "priority": 50.0,
        "would_wait": False,
        "devices": [1],
        "reason": "fits now",
    }
    assert s.snapshot()["grants"] == []  # explain reserves nothing
    assert s.allocate(gpu_meta("holder", 14000), stats)
    assert s.allocate(gpu_meta("holder2", 14000), stats)
    why = s.explain(gpu_meta("b", 9000), stats)
    assert why["would_wait"] is True and why["resource"] == "vram"
    assert why["device"] == 0 and why["needed_mb"] == 9000.0
    assert why["available_mb"] == pytest.approx(21600.0 - 14000.0)
    assert why["holders"] == ["holder"] or why["holders"] == ["holder2"]
    assert "GPU 0" in why["reason"] and "9000" in why["reason"] and "held by" in why["reason"]


def test_snapshot_repr_and_html():
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))
    assert s.allocate(gpu_meta("<b>held</b>", 6000, min_system_ram_mb=2000), stats)
    s.on_execution_start("<b>held</b>")
    w = Waiter(s, gpu_meta("<i>wait</i>", 8000), stats)
    w.start()
    wait_until(lambda: n_waiters(s) == 1)
    snap = s.snapshot()
    assert set(snap) == {"grants", "waiters", "reserved_vram_mb", "reserved_ram_mb", "reserved_pools", "policy"}
    (g,) = snap["grants"]
    assert set(g) == {
        "id", "plugin", "devices", "vram_mb", "ram_mb", "started", "age_s",
        "without_gpu_figures", "priority", "user", "project",
    }
    assert g["started"] is True and g["age_s"] >= 0
    (wt,) = snap["waiters"]
    assert set(wt) == {
        "plugin", "position", "gpu_count", "vram_mb", "ram_mb", "waiting_s",
        "priority", "user", "project", "reason", "passed_over",
    }
    assert (wt["plugin"], wt["position"], wt["gpu_count"], wt["vram_mb"]) == ("<i>wait</i>", 0, 1, 8000.0)
    assert snap["reserved_vram_mb"] == {0: 6000.0} and snap["reserved_ram_mb"] == 2000.0
    r = repr(s)
    assert r.startswith("ReservationScheduler(") and "grants=1" in r and "waiting=1" in r and "headroom=1" in r
    html = s._repr_html_()
    assert "&lt;b&gt;held&lt;/b&gt;" in html and "&lt;i&gt;wait&lt;/i&gt;" in html
    assert "<b>held</b>" not in html  # escaped
    assert "6,000" in html and "8,000" in html and "yes" in html
    s.on_execution_finish("<b>held</b>")
    w.join(PROMPT)
    assert w.result is True
    s.on_execution_finish("<i>wait</i>")
    assert_idle(s)


def test_record_peak_raises_later_reservations():
    s = ReservationScheduler(timeout=0, poll_interval=0.01, peak_margin=1.25)
    sim = SimulatedSystem(gpus=[24000.0])
    meta = gpu_meta("whisper", 4000, min_system_ram_mb=1000)
    assert s.record_peak("whisper", vram_mb=8000) == {"vram_mb": 8000.0, "ram_mb": None}
    assert s.record_peak("whisper", vram_mb=6000, ram_mb=400) == {"vram_mb": 8000.0, "ram_mb": 400.0}  # max kept
    assert s.peaks() == {"whisper": {"vram_mb": 8000.0, "ram_mb": 400.0}}
    with s.lease(meta, sim) as g:
        assert g.vram_mb == 10000.0  # max(4000, 8000 * 1.25)
        assert g.ram_mb == 1000.0  # max(1000, 400 * 1.25)
    assert s.explain(meta, sim)["vram_mb"] == 10000.0
    # Other plugins are unaffected.
    with s.lease(gpu_meta("other", 4000), sim) as g:
        assert g.vram_mb == 4000.0


@pytest.mark.parametrize("kw", [{"vram_mb": -1.0}, {"vram_mb": math.nan}, {"ram_mb": math.inf}, {"ram_mb": -0.5}])
def test_invalid_record_peak_values_raise_value_error(kw):
    s = ReservationScheduler()
    with pytest.raises(ValueError, match=next(iter(kw))):
        s.record_peak("p", **kw)
    assert s.peaks() == {}


def test_peaks_persist_round_trip(tmp_path, caplog):
    path = tmp_path / "state" / "peaks.json"  # the directory does not exist yet
    a = ReservationScheduler(peaks_path=path)
    a.record_peak("whisper", vram_mb=5000)
    a.record_peak("whisper", ram_mb=900)
    a.record_peak("llm", vram_mb=20000.5)
    assert json.loads(path.read_text()) == {
        "whisper": {"vram_mb": 5000.0, "ram_mb": 900.0},
        "llm": {"vram_mb": 20000.5, "ram_mb": None},
    }
    b = ReservationScheduler(peaks_path=str(path))
    assert b.peaks() == a.peaks()
    with b.lease(gpu_meta("whisper", 1000), SimulatedSystem(gpus=[24000.0])) as g:
        assert g.vram_mb == pytest.approx(5500.0)
    # No temporary files left (the lock file that serialises writers stays).
    assert sorted(tmp_path.joinpath("state").iterdir()) == [path, path.with_suffix(".json.lock")]
    # A corrupt file is reported, not fatal, and replaced on the next write.
    path.write_text("{not json")
    caplog.set_level(logging.WARNING, logger=OURS_LOGGER)
    c = ReservationScheduler(peaks_path=path)
    assert c.peaks() == {}
    assert any("corrupt" in r.getMessage() for r in caplog.records if r.name == OURS_LOGGER)
    c.record_peak("x", vram_mb=1)
    assert json.loads(path.read_text()) == {"x": {"vram_mb": 1.0, "ram_mb": None}}
    # Without a path nothing is written.
    d = ReservationScheduler()
    d.record_peak("y", vram_mb=1)
    assert ReservationScheduler().peaks() == {}


# =========================================================================== known bugs


def test_free_only_gpu_reading_is_still_checked():
    """The reference QueueScheduler reads only ``gpu_free_memory_mb``; ours ignores it
    unless ``gpu_total_memory_mb`` is present too and, with on_missing_stats='allow',
    admits a 4096 MB plugin when 2000 MB are free."""
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    stats = fixed({"gpu_free_memory_mb": 2000, "memory_available_mb": 16000})
    assert ref.QueueScheduler(timeout=0, poll_interval=0.01).allocate(gpu_meta("p", 4096), stats) is False
    assert s.allocate(gpu_meta("p", 4096), stats) is False


def test_available_only_ram_reading_is_still_checked():
    s = ReservationScheduler(timeout=0, poll_interval=0.01)
    stats = fixed({"memory_available_mb": 100})
    assert ref.QueueScheduler(timeout=0, poll_interval=0.01).allocate(ram_meta("p", 4096), stats) is False
    assert s.allocate(ram_meta("p", 4096), stats) is False


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_timeout_is_honoured_with_a_long_poll_interval(mode):
    """With wake-on-release, a long poll_interval is the point of this scheduler; the
    timeout should still end the wait on time (today it ends after poll_interval)."""
    full = SimulatedSystem(gpus=[8000.0])
    full.occupy(8000)
    s = ReservationScheduler(timeout=0.2, poll_interval=1.5)
    t0 = time.monotonic()
    if mode == "sync":
        result = s.allocate(gpu_meta("p", 4000), full)
    else:
        result = asyncio.run(s.allocate_async(gpu_meta("p", 4000), full.snapshot_async))
    elapsed = time.monotonic() - t0
    assert result is False
    assert elapsed < 1.0, f"timeout=0.2 took {elapsed:.2f}s"


def test_fifo_order_is_call_order_even_when_stats_are_slow():
    s = ReservationScheduler(timeout=60, poll_interval=LONG_POLL, headroom=1.0, settle_s=0)
    stats = fixed(gpus_stats((0, 10000, 10000)))
    assert s.allocate(gpu_meta("holder", 10000), stats)
    s.on_execution_start("holder")
    order = []

    def slow():
        time.sleep(0.3)  # e.g. the cjm host asking its monitor plugin over HTTP
        return stats()

    first = Waiter(s, gpu_meta("first", 10000), slow, order)
    first.start()
    time.sleep(0.05)
    second = Waiter(s, gpu_meta("second", 10000), stats, order)
    second.start()
    wait_until(lambda: n_waiters(s) == 2)
    queued = [w["plugin"] for w in s.snapshot()["waiters"]]
    s.on_execution_finish("holder")
    first.join(PROMPT)
    s.on_execution_finish(order[0])
    second.join(PROMPT)
    assert queued == ["first", "second"]
    assert order == ["first", "second"]


def test_a_need_that_can_never_fit_gives_up_at_once_and_blocks_nobody(caplog):
    sim = SimulatedSystem(gpus=[24000.0])
    s = ReservationScheduler(timeout=30, poll_interval=LONG_POLL)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="plugin_scheduling.ReservationScheduler"):
        assert s.allocate(gpu_meta("huge", 30000), sim) is False  # 30000 > 0.9 * 24000, ever
    assert time.monotonic() - t0 < 5, "an impossible need waited instead of giving up"
    assert any("can never fit" in r.getMessage() for r in caplog.records)
    assert n_waiters(s) == 0
    assert s.allocate(gpu_meta("small", 1000), sim) is True


@pytest.mark.parametrize("blocked_by", ["settle", "expiry"])
def test_waiter_rechecks_when_the_ledger_changes_by_itself(blocked_by):
    """No release announces that a grant settled (the reading now shows it) or
    that an unstarted grant expired: the waiter must re-check then, not at
    its next poll."""
    if blocked_by == "settle":
        # 48 GB card whose reading shows 24 GB free. Within the settle window
        # the first 16 GB grant is subtracted from that reading (8 GB left);
        # after it, the reading is taken to include it, so 16 GB more fit.
        s = ReservationScheduler(timeout=20, poll_interval=LONG_POLL, headroom=1.0, settle_s=0.3)
        stats = fixed(gpus_stats((0, 48000, 24000)))
    else:
        # Capacity allows one 16 GB grant at a time; the first is never
        # started, so it expires and the second gets its place.
        s = ReservationScheduler(timeout=20, poll_interval=LONG_POLL, headroom=0.5, settle_s=0, start_timeout=0.3)
        stats = fixed(gpus_stats((0, 48000, 48000)))
    assert s.allocate(gpu_meta("first", 16000), stats)
    t0 = time.monotonic()
    assert s.allocate(gpu_meta("second", 16000), stats)
    waited = time.monotonic() - t0
    assert 0.2 < waited < PROMPT, f"re-checked after {waited:.2f}s (poll_interval is {LONG_POLL}s)"


def test_a_lease_is_not_released_by_a_name_based_finish():
    sim = SimulatedSystem(gpus=[24000.0])
    s = ReservationScheduler(timeout=1, poll_interval=0.05)
    with s.lease(gpu_meta("w", 1000), sim) as grant:
        s.on_execution_finish("w")  # e.g. a host finishing another run of "w"
        assert [g["id"] for g in s.snapshot()["grants"]] == [grant.id]
    assert s.snapshot()["grants"] == []


def test_record_peak_names_a_bad_field():
    s = ReservationScheduler()
    with pytest.raises(TypeError, match="vram_mb"):
        s.record_peak("p", vram_mb="x")
    with pytest.raises(ValueError, match="ram_mb"):
        s.record_peak("p", ram_mb=-1)


def test_peaks_are_recorded_from_attributed_gpu_processes(tmp_path):
    """A process attached to a grant: its GPU memory in a SystemMonitor-shaped
    reading becomes the plugin's peak, and later grants reserve it × margin."""
    s = ReservationScheduler(timeout=1, poll_interval=0.05, peaks_path=tmp_path / "peaks.json", peak_margin=1.5)
    stats = gpus_stats((0, 80000, 80000))
    grant = s._reserve(gpu_meta("whisper", 1000), fixed(stats))
    assert grant is not None
    assert s.attach_pid(grant.id, 4242) is True
    assert s.attach_pid(10**6, 1) is False  # no such grant
    stats["details"]["gpus"][0]["processes"] = [
        {"pid": 4242, "used_gpu_mb": 6000.0, "name": "python", "command": "python worker.py"},
        {"pid": 999, "used_gpu_mb": 50000.0, "name": "other", "command": "other"},  # not ours
        {"pid": "junk", "used_gpu_mb": None},  # skipped, not an error
    ]
    assert s.observe(stats) == 1
    assert s.peaks()["whisper"]["vram_mb"] == 6000.0
    s._release_grant(grant.id)
    again = s._reserve(gpu_meta("whisper", 1000), fixed(gpus_stats((0, 80000, 80000))))
    assert again is not None and again.vram_mb == 9000.0  # max(1000, 6000 × 1.5)
    reloaded = ReservationScheduler(peaks_path=tmp_path / "peaks.json")
    assert reloaded.peaks()["whisper"]["vram_mb"] == 6000.0
