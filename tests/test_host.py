"""Host integration: the real cjm PluginManager driving a real worker process with our schedulers.

The reference host ``cjm_plugin_system.core.manager.PluginManager`` loads a tiny plugin
(written into a pytest tmp dir) the way it always does: ``RemotePluginProxy`` spawns
``python -m cjm_plugin_system.core.worker`` and talks HTTP to it on 127.0.0.1.  The
scheduler plugged into the manager is either ours (``plugin_scheduling``) or the reference
(``cjm_plugin_system.core.scheduling``); every scenario is run against both and must give
the same observable outcome: returned value, raised exception type and message, stdout,
number of stats-provider calls, whether the plugin really ran in the worker, and the
QueueScheduler's active-plugin bookkeeping and log records.

System stats never come from a real monitor plugin: the manager instance's
``_get_global_stats`` / ``_get_global_stats_async`` are replaced by scripted providers that
count their calls.  Everything cjm writes (logs, data) goes into a tmp dir via CJM_DATA_DIR.
Two worker processes are started once per module and always torn down at the end.
"""

import asyncio
import copy
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

import plugin_scheduling as ours
from cjm_plugin_system.core import scheduling as ref
from cjm_plugin_system.core.manager import PluginManager
from conftest import PROBE_PLUGIN_SOURCE, probe_manifest, running_cjm_host

PLUGIN = "sched_probe"  # GPU plugin whose admission is under test
VICTIM = "sched_victim"  # second plugin: eviction candidate / concurrent neighbour
PLUGIN_RESOURCES = {"requires_gpu": True, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 1024}
VICTIM_RESOURCES = {"requires_gpu": False, "min_system_ram_mb": 0}

IMPLS = {"ours": ours, "ref": ref}
QUEUE_LOGGER = {
    "ours": "plugin_scheduling.QueueScheduler",
    "ref": "cjm_plugin_system.core.scheduling.QueueScheduler",
}
BLOCKED_MSG = f"ResourceScheduler blocked execution of {PLUGIN} (Eviction failed)"
NO_GPU_WARNING = "[Scheduler] Warning: No GPU stats available.\n"
AMPLE = {"gpu_free_memory_mb": 8000, "memory_available_mb": 16000}
LOW_VRAM = {"gpu_free_memory_mb": 2000, "memory_available_mb": 16000}

both_impls = pytest.mark.parametrize("impl", ["ours", "ref"])
both_modes = pytest.mark.parametrize("mode", ["sync", "async"])

PLUGIN_SOURCE = PROBE_PLUGIN_SOURCE  # tests/conftest.py


# --------------------------------------------------------------------------- helpers


class ScriptedStats:
    """Replacement for PluginManager._get_global_stats(_async): scripted, counted."""

    def __init__(self):
        self.load([{}])

    def load(self, snapshots, error=None):
        self.snapshots = [dict(s) for s in snapshots]
        self.error = error  # (exception type, message) -> raised on every call
        self.override = None  # when set, returned from then on (see force())
        self.sync_calls = 0
        self.async_calls = 0
        self.returned = []

    def force(self, snapshot):
        self.override = dict(snapshot)

    def _next(self):
        if self.error is not None:
            exc_type, msg = self.error
            raise exc_type(msg)
        if self.override is not None:
            snap = self.override
        else:
            index = self.sync_calls + self.async_calls - 1
            snap = self.snapshots[min(index, len(self.snapshots) - 1)]
        value = dict(snap)
        self.returned.append(value)
        return value

    def sync(self):
        self.sync_calls += 1
        return self._next()

    async def async_(self):
        self.async_calls += 1
        await asyncio.sleep(0)
        return self._next()


@dataclass
class Host:
    manager: PluginManager
    root: Path
    data_dir: Path
    worker_pids: dict
    saved_manifests: dict
    probe: httpx.Client  # test-side client for reading worker state cheaply
    stats: ScriptedStats = field(default_factory=ScriptedStats)


@dataclass
class Outcome:
    result: Any
    exc: Optional[tuple]  # (exception type, str(exception))
    stdout: str
    sync_calls: int
    async_calls: int
    ran: int  # executions observed inside the worker process
    elapsed: float = field(compare=False)


def worker_calls(host, name=PLUGIN):
    """Number of executions the worker process itself has performed (via HTTP /progress)."""
    resp = host.probe.get(f"{host.manager.get_plugin(name).base_url}/progress")
    resp.raise_for_status()
    return int(resp.json()["progress"])


def expected_result(host, **kwargs):
    return {
        "plugin": PLUGIN,
        "args": [],
        "kwargs": kwargs,
        "greeting": "hi",
        "pid": host.worker_pids[PLUGIN],
    }


def execute(host, mode, capsys, **kwargs):
    """Run PLUGIN through the manager (sync or async) and record everything observable."""
    capsys.readouterr()
    before = worker_calls(host)
    sync0, async0 = host.stats.sync_calls, host.stats.async_calls
    result = exc = None
    t0 = time.monotonic()
    try:
        if mode == "sync":
            result = host.manager.execute_plugin(PLUGIN, **kwargs)
        else:
            result = asyncio.run(host.manager.execute_plugin_async(PLUGIN, **kwargs))
    except Exception as e:  # noqa: BLE001 - the exception is part of the outcome
        exc = (type(e), str(e))
    elapsed = time.monotonic() - t0
    out = capsys.readouterr().out
    return Outcome(
        result=result,
        exc=exc,
        stdout=out,
        sync_calls=host.stats.sync_calls - sync0,
        async_calls=host.stats.async_calls - async0,
        ran=worker_calls(host) - before,
        elapsed=elapsed,
    )


def set_resources(host, name, resources):
    """Change the live manifest resources the schedulers read (MISSING deletes the key)."""
    manifest = host.manager.plugins[name].manifest
    if resources is MISSING:
        manifest.pop("resources", None)
    else:
        manifest["resources"] = copy.deepcopy(resources)


MISSING = object()


def queue_records(caplog, impl):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == QUEUE_LOGGER[impl]]


def wait_until(predicate, timeout, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def async_wait_until(predicate, timeout, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def loaded_host(tmp_path_factory):
    """One PluginManager with two real worker subprocesses for the whole module."""
    manifests = [
        probe_manifest(name, resources, module="sched_probe_plugin", description="scheduler host-integration probe")
        for name, resources in ((PLUGIN, PLUGIN_RESOURCES), (VICTIM, VICTIM_RESOURCES))
    ]
    with running_cjm_host(
        tmp_path_factory.mktemp("cjm_host"),
        sources={"sched_probe_plugin.py": PLUGIN_SOURCE},
        manifests=manifests,
        scheduler=ref.PermissiveScheduler(),
    ) as env:
        manager = env.manager
        assert set(manager.plugins) == {PLUGIN, VICTIM}
        yield Host(
            manager=manager,
            root=env.root,
            data_dir=env.data_dir,
            worker_pids={n: m.instance.process.pid for n, m in manager.plugins.items()},
            saved_manifests={n: copy.deepcopy(m.manifest) for n, m in manager.plugins.items()},
            probe=env.probe,
        )


@pytest.fixture
def host(loaded_host):
    """Per-test reset of scheduler, scripted stats, manifests and injected attributes."""

    def reset():
        m = loaded_host.manager
        m.scheduler = ref.PermissiveScheduler()
        for name, meta in m.plugins.items():
            meta.manifest.clear()
            meta.manifest.update(copy.deepcopy(loaded_host.saved_manifests[name]))
            meta.enabled = True
            meta.instance.__dict__.pop("release", None)
        loaded_host.stats = ScriptedStats()
        m._get_global_stats = loaded_host.stats.sync
        m._get_global_stats_async = loaded_host.stats.async_

    reset()
    for name, meta in loaded_host.manager.plugins.items():
        assert meta.instance.process.poll() is None, f"worker for {name} died"
    yield loaded_host
    reset()


# --------------------------------------------------------------------------- environment


def test_host_setup_is_real_and_isolated(host):
    m = host.manager
    assert set(m.plugins) == {PLUGIN, VICTIM}
    for name, meta in m.plugins.items():
        proxy = meta.instance
        assert type(proxy).__name__ == "RemotePluginProxy"
        assert proxy.base_url.startswith("http://127.0.0.1:")
        assert proxy.process.pid != os.getpid()
        assert proxy.is_alive()
        assert proxy.log_path.parent == host.data_dir / "logs"
        assert proxy.get_current_config() == {"greeting": "hi"}  # schema defaults reached the worker
    # The scripted providers are what the manager will call.
    assert m._get_global_stats == host.stats.sync
    assert m._get_global_stats_async == host.stats.async_
    # Both implementations expose the same public surface.
    for cls in ("ResourceScheduler", "PermissiveScheduler", "SafetyScheduler", "QueueScheduler"):
        assert hasattr(ours, cls)
    assert issubclass(ours.SafetyScheduler, ours.ResourceScheduler)
    assert issubclass(ours.QueueScheduler, ours.ResourceScheduler)
    assert issubclass(ours.PermissiveScheduler, ours.ResourceScheduler)


# --------------------------------------------------------------------------- Permissive


@both_impls
@both_modes
def test_permissive_admits_without_blocking(host, impl, mode, capsys):
    host.manager.scheduler = IMPLS[impl].PermissiveScheduler()
    host.stats.load([{"gpu_free_memory_mb": 0, "memory_available_mb": 0}])
    o = execute(host, mode, capsys, text="hello")
    assert o.exc is None
    assert o.result == expected_result(host, text="hello")
    assert o.ran == 1
    # sync allocate never looks at stats; the inherited allocate_async fetches them once anyway.
    assert (o.sync_calls, o.async_calls) == ((0, 0) if mode == "sync" else (0, 1))
    assert o.stdout == ""
    assert host.manager.plugins[PLUGIN].last_executed > 0


# --------------------------------------------------------------------------- Safety

SAFETY_CASES = [
    # id, resources (None = manifest default, MISSING = no "resources" key), stats, admitted, stdout
    ("ample", None, AMPLE, True, ""),
    ("vram_exactly_enough", None, {"gpu_free_memory_mb": 4096, "memory_available_mb": 1024}, True, ""),
    ("vram_low", None, LOW_VRAM, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 2000MB\n"),
    ("vram_low_float", None, {"gpu_free_memory_mb": 4095.5, "memory_available_mb": 16000}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 4095.5MB\n"),
    ("vram_float_repr", None, {"gpu_free_memory_mb": 0.1 + 0.2, "memory_available_mb": 16000}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 0.30000000000000004MB\n"),
    ("vram_tiny_float", None, {"gpu_free_memory_mb": 1e-05}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 1e-05MB\n"),
    ("vram_negative", None, {"gpu_free_memory_mb": -1, "memory_available_mb": 16000}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has -1MB\n"),
    ("vram_huge_negative_int", None, {"gpu_free_memory_mb": -2**70, "memory_available_mb": 16000}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has -1180591620717411303424MB\n"),
    ("vram_huge_int", None, {"gpu_free_memory_mb": 2**70, "memory_available_mb": 16000}, True, ""),
    ("vram_nan_admits", None, {"gpu_free_memory_mb": float("nan"), "memory_available_mb": 16000}, True, ""),
    ("ram_negative_inf", None, {"gpu_free_memory_mb": 1e16, "memory_available_mb": float("-inf")}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 1024MB RAM, has -infMB\n"),
    ("vram_and_ram_low_reports_vram_only", None, {"gpu_free_memory_mb": 100, "memory_available_mb": 100}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 100MB\n"),
    ("ram_low", None, {"gpu_free_memory_mb": 8000, "memory_available_mb": 512}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 1024MB RAM, has 512MB\n"),
    ("ram_low_float", None, {"gpu_free_memory_mb": 8000, "memory_available_mb": 1023.75}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 1024MB RAM, has 1023.75MB\n"),
    ("ram_missing", None, {"gpu_free_memory_mb": 8000}, True, ""),
    ("ram_none", None, {"gpu_free_memory_mb": 8000, "memory_available_mb": None}, True, ""),
    ("no_gpu_stats_skips_ram_check", None, {"memory_available_mb": 10}, True, NO_GPU_WARNING),
    ("gpu_stats_none", None, {"gpu_free_memory_mb": None, "memory_available_mb": 10}, True, NO_GPU_WARNING),
    ("empty_stats", None, {}, True, NO_GPU_WARNING),
    ("extra_keys_ignored", None,
     {"gpu_free_memory_mb": 8000, "memory_available_mb": 16000, "cpu_percent": 99.5, "gpu_type": "nvidia"},
     True, ""),
    ("empty_resources", {}, {}, True, ""),
    ("no_resources_key", MISSING, {"gpu_free_memory_mb": 0, "memory_available_mb": 0}, True, ""),
    ("cpu_plugin_ignores_gpu", {"requires_gpu": False, "min_gpu_vram_mb": 99999},
     {"gpu_free_memory_mb": 0, "memory_available_mb": 100}, True, ""),
    ("cpu_plugin_ram_low", {"requires_gpu": False, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 1024},
     {"gpu_free_memory_mb": 0, "memory_available_mb": 100}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 1024MB RAM, has 100MB\n"),
    ("gpu_without_min_vram", {"requires_gpu": True}, {"gpu_free_memory_mb": -5}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 0MB VRAM, has -5MB\n"),
    ("float_vram_requirement", {"requires_gpu": True, "min_gpu_vram_mb": 4096.0, "min_system_ram_mb": 1024},
     {"gpu_free_memory_mb": 4000}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 4096.0MB VRAM, has 4000MB\n"),
    ("float_ram_requirement", {"requires_gpu": False, "min_system_ram_mb": 512.5},
     {"memory_available_mb": 512}, False,
     f"[Scheduler] Blocked {PLUGIN}: Needs 512.5MB RAM, has 512MB\n"),
]


@pytest.mark.parametrize(
    "resources,stats,admitted,stdout",
    [pytest.param(*c[1:], id=c[0]) for c in SAFETY_CASES],
)
@both_impls
@both_modes
def test_safety_scheduler_through_host(host, impl, mode, resources, stats, admitted, stdout, capsys):
    if resources is not None:
        set_resources(host, PLUGIN, resources)
    host.manager.scheduler = IMPLS[impl].SafetyScheduler()
    host.stats.load([stats])
    o = execute(host, mode, capsys, case="safety")
    assert o.stdout == stdout
    # Exactly one stats fetch, through the provider matching the call style.
    assert (o.sync_calls, o.async_calls) == ((1, 0) if mode == "sync" else (0, 1))
    if admitted:
        assert o.exc is None
        assert o.result == expected_result(host, case="safety")
        assert o.ran == 1
    else:
        assert o.exc == (RuntimeError, BLOCKED_MSG)
        assert o.result is None
        assert o.ran == 0  # the worker never saw the request


@both_modes
def test_safety_ours_matches_reference_outcomes(host, mode, capsys):
    """Differential: every Safety case gives field-for-field identical outcomes."""
    mismatches = []
    for case_id, resources, stats, _, _ in SAFETY_CASES:
        outcomes = {}
        for impl in ("ref", "ours"):
            set_resources(host, PLUGIN, copy.deepcopy(host.saved_manifests[PLUGIN]["resources"]))
            if resources is not None:
                set_resources(host, PLUGIN, resources)
            host.manager.scheduler = IMPLS[impl].SafetyScheduler()
            host.stats.load([stats])
            outcomes[impl] = execute(host, mode, capsys, case=case_id)
        if outcomes["ours"] != outcomes["ref"]:
            mismatches.append((case_id, outcomes["ref"], outcomes["ours"]))
    assert mismatches == []


# --------------------------------------------------------------------------- Queue

QUEUE_CASES = [
    # id, resources, stats, admitted   (Queue never prints; missing GPU stats do not admit by themselves)
    ("ample", None, AMPLE, True),
    ("vram_exactly_enough", None, {"gpu_free_memory_mb": 4096, "memory_available_mb": 1024}, True),
    ("vram_low", None, LOW_VRAM, False),
    ("vram_low_float", None, {"gpu_free_memory_mb": 4095.5, "memory_available_mb": 16000}, False),
    ("ram_low", None, {"gpu_free_memory_mb": 8000, "memory_available_mb": 1023.75}, False),
    ("no_gpu_stats_but_ram_low", None, {"memory_available_mb": 10}, False),  # Safety would admit this
    ("no_gpu_stats_ram_ok", None, {"memory_available_mb": 4000}, True),
    ("empty_stats", None, {}, True),
    ("gpu_none_ram_none", None, {"gpu_free_memory_mb": None, "memory_available_mb": None}, True),
    ("empty_resources", {}, {"gpu_free_memory_mb": 0, "memory_available_mb": 0}, True),
    ("cpu_plugin_ignores_gpu", {"requires_gpu": False, "min_gpu_vram_mb": 99999},
     {"gpu_free_memory_mb": 0, "memory_available_mb": 100}, True),
]


@pytest.mark.parametrize(
    "resources,stats,admitted",
    [pytest.param(*c[1:], id=c[0]) for c in QUEUE_CASES],
)
@both_impls
@both_modes
def test_queue_scheduler_admission_matrix(host, impl, mode, resources, stats, admitted, capsys, caplog):
    caplog.set_level(logging.INFO)
    if resources is not None:
        set_resources(host, PLUGIN, resources)
    sched = IMPLS[impl].QueueScheduler(timeout=0.1, poll_interval=0.02)
    host.manager.scheduler = sched
    host.stats.load([stats])
    o = execute(host, mode, capsys, case="queue")
    assert o.stdout == ""
    calls = o.sync_calls if mode == "sync" else o.async_calls
    assert (o.async_calls if mode == "sync" else o.sync_calls) == 0
    records = queue_records(caplog, impl)
    if admitted:
        assert o.exc is None
        assert o.result == expected_result(host, case="queue")
        assert o.ran == 1
        assert calls == 1
        assert records == []
    else:
        assert o.exc == (RuntimeError, BLOCKED_MSG)
        assert o.ran == 0
        assert o.elapsed >= 0.1
        assert 2 <= calls <= 8
        verb = "Waiting" if mode == "sync" else "Yielding"
        assert records[-1] == (logging.ERROR, f"Timeout waiting for resources for {PLUGIN}")
        assert records[:-1] == [(logging.INFO, f"Resources busy. {verb} 0.02s...")] * (calls - 1)
    assert sched.get_active_plugins() == set()


@both_impls
@both_modes
def test_queue_blocked_then_admitted_when_stats_change(host, impl, mode, capsys, caplog):
    caplog.set_level(logging.INFO)
    sched = IMPLS[impl].QueueScheduler(timeout=10.0, poll_interval=0.05)
    host.manager.scheduler = sched
    low_ram = {"gpu_free_memory_mb": 8000, "memory_available_mb": 100}
    host.stats.load([LOW_VRAM, low_ram, LOW_VRAM, AMPLE])  # admitted on the 4th poll
    o = execute(host, mode, capsys, step="queued")
    assert o.exc is None
    assert o.result == expected_result(host, step="queued")
    assert o.ran == 1
    assert (o.sync_calls, o.async_calls) == ((4, 0) if mode == "sync" else (0, 4))
    assert 0.15 <= o.elapsed < 5.0
    assert o.stdout == ""
    verb = "Waiting" if mode == "sync" else "Yielding"
    assert queue_records(caplog, impl) == [(logging.INFO, f"Resources busy. {verb} 0.05s...")] * 3
    assert sched.get_active_plugins() == set()


@both_impls
@both_modes
def test_queue_times_out(host, impl, mode, capsys, caplog):
    caplog.set_level(logging.INFO)
    sched = IMPLS[impl].QueueScheduler(timeout=0.2, poll_interval=0.05)
    host.manager.scheduler = sched
    host.stats.load([LOW_VRAM])
    o = execute(host, mode, capsys, step="never")
    assert o.exc == (RuntimeError, BLOCKED_MSG)
    assert o.result is None
    assert o.ran == 0
    assert 0.2 <= o.elapsed < 5.0
    calls = o.sync_calls if mode == "sync" else o.async_calls
    assert 2 <= calls <= 6  # at most timeout/poll_interval + 2 polls; fewer if sleeps overshoot
    assert (o.async_calls if mode == "sync" else o.sync_calls) == 0
    assert o.stdout == ""
    records = queue_records(caplog, impl)
    verb = "Waiting" if mode == "sync" else "Yielding"
    assert records == [(logging.INFO, f"Resources busy. {verb} 0.05s...")] * (calls - 1) + [
        (logging.ERROR, f"Timeout waiting for resources for {PLUGIN}")
    ]
    manager_warnings = [
        r.getMessage() for r in caplog.records
        if r.name.endswith("manager.PluginManager") and r.levelno == logging.WARNING
    ]
    assert f"Resources busy for {PLUGIN}. Triggering eviction protocol." in manager_warnings
    assert sched.get_active_plugins() == set()


@both_impls
@pytest.mark.asyncio
async def test_queue_async_wait_does_not_block_event_loop(host, impl):
    """While allocate_async waits, other coroutines keep running; stats flip from outside."""
    sched = IMPLS[impl].QueueScheduler(timeout=10.0, poll_interval=0.02)
    host.manager.scheduler = sched
    host.stats.load([LOW_VRAM])
    ticks = 0

    async def ticker_then_free():
        nonlocal ticks
        while ticks < 15:  # ~0.15 s of 10 ms ticks, only possible if the loop is free
            await asyncio.sleep(0.01)
            ticks += 1
        host.stats.force(AMPLE)

    t0 = time.monotonic()
    result, _ = await asyncio.wait_for(
        asyncio.gather(host.manager.execute_plugin_async(PLUGIN, step="async"), ticker_then_free()),
        timeout=10,
    )
    assert result == expected_result(host, step="async")
    assert ticks == 15
    assert time.monotonic() - t0 >= 0.15
    assert host.stats.async_calls >= 2 and host.stats.sync_calls == 0
    assert sched.get_active_plugins() == set()


@both_impls
def test_queue_tracks_active_plugin_during_sync_execution(host, impl):
    sched = IMPLS[impl].QueueScheduler(timeout=5.0, poll_interval=0.05)
    host.manager.scheduler = sched
    host.stats.load([AMPLE])
    box = {}

    def run():
        try:
            box["result"] = host.manager.execute_plugin(PLUGIN, sleep=0.5)
        except Exception as e:  # pragma: no cover - reported below
            box["error"] = e

    assert sched.get_active_plugins() == set()
    th = threading.Thread(target=run)
    th.start()
    try:
        seen = wait_until(lambda: PLUGIN in sched.get_active_plugins(), timeout=5)
        during = sched.get_active_plugins()
        still_running = th.is_alive()
        during.add("intruder")  # a copy: mutating it must not touch the scheduler
        assert "intruder" not in sched.get_active_plugins()
    finally:
        th.join(timeout=15)
    assert "error" not in box, box.get("error")
    assert seen and still_running
    assert during == {PLUGIN, "intruder"}
    assert box["result"] == expected_result(host, sleep=0.5)
    assert sched.get_active_plugins() == set()
    assert host.stats.sync_calls == 1


@both_impls
@pytest.mark.asyncio
async def test_queue_tracks_concurrent_async_executions(host, impl):
    """Two different plugins in flight at once: both tracked, each removed when it finishes."""
    sched = IMPLS[impl].QueueScheduler(timeout=5.0, poll_interval=0.05)
    host.manager.scheduler = sched
    host.stats.load([AMPLE])
    m = host.manager
    long_task = asyncio.create_task(m.execute_plugin_async(PLUGIN, sleep=0.8))
    short_task = asyncio.create_task(m.execute_plugin_async(VICTIM, sleep=0.2))
    try:
        assert await async_wait_until(lambda: sched.get_active_plugins() == {PLUGIN, VICTIM}, 5)
        victim_result = await asyncio.wait_for(short_task, 10)
        assert sched.get_active_plugins() == {PLUGIN}
        assert not long_task.done()
        result = await asyncio.wait_for(long_task, 10)
    finally:
        for t in (long_task, short_task):
            if not t.done():
                t.cancel()
    assert result == expected_result(host, sleep=0.8)
    assert victim_result["plugin"] == VICTIM and victim_result["pid"] == host.worker_pids[VICTIM]
    assert sched.get_active_plugins() == set()
    assert host.stats.async_calls == 2


@both_impls
@pytest.mark.asyncio
async def test_queue_same_plugin_twice_is_a_set_not_a_counter(host, impl):
    """Reference semantics: the first finisher discards the name while the second still runs."""
    sched = IMPLS[impl].QueueScheduler(timeout=5.0, poll_interval=0.05)
    host.manager.scheduler = sched
    host.stats.load([AMPLE])
    m = host.manager
    first = asyncio.create_task(m.execute_plugin_async(PLUGIN, sleep=0.5, n=1))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(m.execute_plugin_async(PLUGIN, sleep=0.5, n=2))  # worker serialises it
    try:
        assert await async_wait_until(lambda: PLUGIN in sched.get_active_plugins(), 5)
        r1 = await asyncio.wait_for(first, 10)
        after_first = sched.get_active_plugins()
        second_running = not second.done()
        r2 = await asyncio.wait_for(second, 10)
    finally:
        for t in (first, second):
            if not t.done():
                t.cancel()
    assert second_running, "timing assumption broken: second execution already finished"
    assert after_first == set()
    assert r1["kwargs"] == {"sleep": 0.5, "n": 1} and r2["kwargs"] == {"sleep": 0.5, "n": 2}
    assert sched.get_active_plugins() == set()


@pytest.mark.parametrize("sched_name", ["SafetyScheduler", "QueueScheduler"])
@both_impls
@both_modes
def test_execution_finish_after_plugin_failure(host, impl, mode, sched_name, capsys):
    kwargs = {"timeout": 1.0, "poll_interval": 0.05} if sched_name == "QueueScheduler" else {}
    sched = getattr(IMPLS[impl], sched_name)(**kwargs)
    host.manager.scheduler = sched
    host.stats.load([AMPLE])
    o = execute(host, mode, capsys, fail="kaboom")
    assert o.exc is not None
    assert o.exc[0] is RuntimeError
    assert o.exc[1].startswith("Execute failed:") and "probe failure: kaboom" in o.exc[1]
    assert o.ran == 1
    assert o.stdout == ""
    if sched_name == "QueueScheduler":
        assert sched.get_active_plugins() == set()


@pytest.mark.parametrize("sched_name", ["SafetyScheduler", "QueueScheduler"])
@both_modes
def test_stats_provider_exception_propagates_like_reference(host, mode, sched_name, capsys):
    outcomes = {}
    for impl in ("ref", "ours"):
        kwargs = {"timeout": 1.0, "poll_interval": 0.05} if sched_name == "QueueScheduler" else {}
        sched = getattr(IMPLS[impl], sched_name)(**kwargs)
        host.manager.scheduler = sched
        host.stats.load([AMPLE], error=(ValueError, "stats exploded"))
        outcomes[impl] = execute(host, mode, capsys, x=1)
        if sched_name == "QueueScheduler":
            assert sched.get_active_plugins() == set()
    assert outcomes["ref"].exc == (ValueError, "stats exploded")
    assert outcomes["ref"].ran == 0
    assert outcomes["ours"] == outcomes["ref"]


@pytest.mark.parametrize(
    "stats",
    [
        pytest.param(None, id="stats_none"),
        pytest.param({"gpu_free_memory_mb": "lots", "memory_available_mb": 16000}, id="vram_is_str"),
    ],
)
@pytest.mark.parametrize("sched_name", ["SafetyScheduler", "QueueScheduler"])
@both_modes
def test_malformed_stats_fail_through_host_like_reference(host, mode, sched_name, stats, capsys):
    """Malformed stats: both raise out of the manager before the plugin runs.

    Messages may differ (ours is more descriptive); ours must be an instance of the
    reference's exception type so existing ``except`` clauses keep working.
    """
    outcomes = {}
    for impl in ("ref", "ours"):
        kwargs = {"timeout": 1.0, "poll_interval": 0.05} if sched_name == "QueueScheduler" else {}
        sched = getattr(IMPLS[impl], sched_name)(**kwargs)
        host.manager.scheduler = sched
        host.manager.__dict__.pop("_get_global_stats", None)
        host.manager.__dict__.pop("_get_global_stats_async", None)
        calls = []

        def provider():
            calls.append("sync")
            return copy.copy(stats)

        async def async_provider():
            calls.append("async")
            return copy.copy(stats)

        host.manager._get_global_stats = provider
        host.manager._get_global_stats_async = async_provider
        capsys.readouterr()
        before = worker_calls(host)
        with pytest.raises(Exception) as info:
            if mode == "sync":
                host.manager.execute_plugin(PLUGIN, x=1)
            else:
                asyncio.run(host.manager.execute_plugin_async(PLUGIN, x=1))
        outcomes[impl] = (info.value, calls, capsys.readouterr().out, worker_calls(host) - before)
        if sched_name == "QueueScheduler":
            assert sched.get_active_plugins() == set()
    ref_exc, ref_calls, ref_out, ref_ran = outcomes["ref"]
    our_exc, our_calls, our_out, our_ran = outcomes["ours"]
    assert isinstance(our_exc, type(ref_exc)), (type(our_exc).__mro__, type(ref_exc))
    assert our_calls == ref_calls == [mode]
    assert our_out == ref_out == ""
    assert our_ran == ref_ran == 0


# --------------------------------------------------------------------------- eviction path


def make_victim_evictable(host, on_release):
    """Make VICTIM an LRU eviction candidate with a soft ``release`` the manager prefers."""
    set_resources(host, VICTIM, {"requires_gpu": True, "min_gpu_vram_mb": 1})
    calls = []

    def release():
        calls.append(time.monotonic())
        on_release()

    host.manager.plugins[VICTIM].instance.release = release
    return calls


@both_impls
@both_modes
def test_safety_eviction_rechecks_with_sync_provider_and_admits(host, impl, mode, capsys):
    host.manager.scheduler = IMPLS[impl].SafetyScheduler()
    host.stats.load([LOW_VRAM, AMPLE])  # blocked first, fine on the post-eviction re-check
    released = make_victim_evictable(host, lambda: None)
    o = execute(host, mode, capsys, step="evicted")
    assert o.exc is None
    assert o.result == expected_result(host, step="evicted")
    assert o.ran == 1
    assert len(released) == 1
    # The manager's post-eviction re-check always goes through the *sync* allocate/provider.
    assert (o.sync_calls, o.async_calls) == ((2, 0) if mode == "sync" else (1, 1))
    assert o.stdout == f"[Scheduler] Blocked {PLUGIN}: Needs 4096MB VRAM, has 2000MB\n"


@both_impls
@both_modes
def test_safety_eviction_fails(host, impl, mode, capsys):
    host.manager.scheduler = IMPLS[impl].SafetyScheduler()
    host.stats.load([{"gpu_free_memory_mb": 8000, "memory_available_mb": 12}])
    released = make_victim_evictable(host, lambda: None)
    o = execute(host, mode, capsys, step="evicted")
    assert o.exc == (RuntimeError, BLOCKED_MSG)
    assert o.ran == 0
    assert len(released) == 1
    assert (o.sync_calls, o.async_calls) == ((2, 0) if mode == "sync" else (1, 1))
    assert o.stdout == f"[Scheduler] Blocked {PLUGIN}: Needs 1024MB RAM, has 12MB\n" * 2


@both_impls
@both_modes
def test_queue_timeout_then_eviction_frees_resources(host, impl, mode, capsys, caplog):
    caplog.set_level(logging.INFO)
    sched = IMPLS[impl].QueueScheduler(timeout=0.1, poll_interval=0.02)
    host.manager.scheduler = sched
    host.stats.load([LOW_VRAM])
    released = make_victim_evictable(host, lambda: host.stats.force(AMPLE))
    o = execute(host, mode, capsys, step="queue-evicted")
    assert o.exc is None
    assert o.result == expected_result(host, step="queue-evicted")
    assert o.ran == 1
    assert len(released) == 1
    records = queue_records(caplog, impl)
    assert records[-1] == (logging.ERROR, f"Timeout waiting for resources for {PLUGIN}")
    # Timed-out polling phase, then exactly one post-eviction poll through the sync provider.
    if mode == "sync":
        first_phase, post_eviction = o.sync_calls - 1, 1
    else:
        first_phase, post_eviction = o.async_calls, o.sync_calls
    assert 2 <= first_phase <= 8
    assert post_eviction == 1
    assert o.stdout == ""
    assert sched.get_active_plugins() == set()


# --------------------------------------------------------------------------- custom subclass


@both_impls
@both_modes
@pytest.mark.parametrize("decision", [True, False])
def test_custom_subclass_of_resource_scheduler(host, impl, mode, decision, capsys):
    """A user-defined subclass of our ABC, driven by the host (default allocate_async)."""
    base = IMPLS[impl].ResourceScheduler

    class Recording(base):
        def __init__(self):
            self.events = []

        def allocate(self, plugin_meta, stats_provider):
            stats = stats_provider()
            self.events.append(("allocate", plugin_meta, stats))
            return decision

        def on_execution_start(self, plugin_name):
            self.events.append(("start", plugin_name))

        def on_execution_finish(self, plugin_name):
            self.events.append(("finish", plugin_name))

    sched = Recording()
    host.manager.scheduler = sched
    host.stats.load([AMPLE])
    o = execute(host, mode, capsys, custom=True)
    meta = host.manager.plugins[PLUGIN]
    assert len(sched.events) >= 1
    kind, got_meta, got_stats = sched.events[0]
    assert kind == "allocate" and got_meta is meta and got_stats == AMPLE
    # Default allocate_async fetches the async stats exactly once and hands them to allocate().
    assert (o.sync_calls, o.async_calls) == ((1, 0) if mode == "sync" else (0, 1))
    if decision:
        assert o.exc is None and o.result == expected_result(host, custom=True)
        assert sched.events[1:] == [("start", PLUGIN), ("finish", PLUGIN)]
    else:
        assert o.exc == (RuntimeError, BLOCKED_MSG) and o.ran == 0
        assert sched.events[1:] == []
