"""Idle-plugin eviction with the real cjm PluginManager and worker processes:
a job blocked on VRAM that idle plugins hold gets the least recently used
idle ones unloaded (only as many as needed), never an active one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

import plugin_scheduling as ours
from cjm_plugin_system.core import config as cjm_config
from cjm_plugin_system.core.manager import PluginManager
from plugin_scheduling import SimulatedSystem
from plugin_scheduling.jobs import JobScheduler, JobState, PluginCall, ResourceRequirements

PLUGIN_SOURCE = '''\
import time


class Sleeper:
    """Tiny duck-typed plugin: execute sleeps `seconds`, then says who ran."""

    version = "1.0.0"

    def __init__(self):
        self.name = "sleeper"

    def initialize(self, config=None):
        pass

    def get_config_schema(self):
        return {}

    def get_current_config(self):
        return {}

    def cleanup(self):
        pass

    def execute(self, seconds=0.0, **kwargs):
        time.sleep(seconds)
        return {"slept": seconds}
'''

FOOTPRINT = 3000.0  # what each idle plugin holds on the GPU while loaded
NAMES = ("old_idle", "new_idle", "busy")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    data_dir, manifests, src = tmp_path / "cjm_data", tmp_path / "manifests", tmp_path / "src"
    for d in (data_dir, manifests, src):
        d.mkdir()
    (src / "sleeper_plugin.py").write_text(PLUGIN_SOURCE)
    pythonpath = os.pathsep.join(p for p in [str(src), os.environ.get("PYTHONPATH", "")] if p)
    for name in NAMES:
        manifest = {
            "name": name, "version": "1.0.0", "category": "test", "python_path": sys.executable,
            "module": "sleeper_plugin", "class": "Sleeper",
            "resources": {"requires_gpu": True, "min_gpu_vram_mb": FOOTPRINT, "min_system_ram_mb": 1},
            "env_vars": {"PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"},
        }
        (manifests / f"{name}.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CJM_DATA_DIR", str(data_dir))
    monkeypatch.delenv("CJM_CONDA_PREFIX", raising=False)
    monkeypatch.delenv("CJM_CONDA_TYPE", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)
    cjm_config.reset_config()
    m = PluginManager(search_paths=[manifests], scheduler=ours.PermissiveScheduler())
    procs = []
    try:
        assert m.load_all() == {n: True for n in NAMES}
        procs = {name: meta.instance.process for name, meta in m.plugins.items()}
        yield m, procs
    finally:
        m.unload_all()
        for p in procs.values() if isinstance(procs, dict) else procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        cjm_config.reset_config()


@pytest.mark.asyncio
async def test_blocked_job_evicts_the_least_recently_used_idle_plugin_only(manager) -> None:
    m, procs = manager
    sim = SimulatedSystem(gpus=[10000.0], ram_total_mb=65536.0)
    sim.occupy(2 * FOOTPRINT)  # the two idle plugins' models, resident on the GPU
    unloaded: list[str] = []

    def unload(name: str) -> None:
        unloaded.append(name)
        assert m.unload_plugin(name)
        if name != "busy":
            sim.free(FOOTPRINT)

    s = JobScheduler("fifo", journal=None, stats_provider=sim.snapshot_async, cpu_cores=4, poll_interval=0.05)
    s.track_manager(m, unload=unload)
    # "busy" holds nothing resident while idle in this setup; its job reserves what it declares.
    s.plugin_loaded("busy", vram_mb=FOOTPRINT)
    s._plugins.begin("old_idle", 1.0)
    s._plugins.end("old_idle", 1.0)  # used long ago
    s._plugins.begin("new_idle", time.monotonic())
    s._plugins.end("new_idle", time.monotonic())
    gpu = ResourceRequirements(gpu_count=1, vram_mb=FOOTPRINT)
    events = s.events()
    async with s:
        busy = s.submit_job("busy", requirements=gpu, run=PluginCall(m, "busy", kwargs={"seconds": 2.0}))
        deadline = time.monotonic() + 20
        while s.get_loaded_plugins()["busy"]["active"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # 10000 − 6000 resident − 3000 reserved by busy: 1000 free; 3000 needed.
        needy = s.submit_job("needy", requirements=gpu, run=lambda ctx: "ran")
        done = await s.wait_job(needy, timeout=20)
        assert done.state is JobState.COMPLETED and done.result == "ran"
        assert s.get_job(busy).state is JobState.RUNNING  # never touched
        assert (await s.wait_job(busy, timeout=20)).result == {"slept": 2.0}
    assert unloaded == ["old_idle"]  # only as many as needed, least recently used first
    assert "old_idle" not in m.plugins and {"new_idle", "busy"} <= set(m.plugins)
    procs["old_idle"].wait(timeout=10)  # its worker process ended
    assert procs["new_idle"].poll() is None and procs["busy"].poll() is None
    assert set(s.get_loaded_plugins()) == {"new_idle", "busy"}
    kinds = [(e.type, e.job_id) for e in events.drain()]
    assert ("evicted", needy) in kinds


@pytest.mark.asyncio
async def test_keep_alive_unloads_idle_plugins_but_not_pinned_ones(manager) -> None:
    m, procs = manager
    clock = [0.0]
    s = JobScheduler(
        "fifo", journal=None, stats_provider=SimulatedSystem(gpus=[10000.0]).snapshot_async,
        poll_interval=0.05, keep_alive_s=60.0, clock=lambda: clock[0],
    )
    s.track_manager(m, pinned=("busy",))
    await s.trigger_async()
    assert set(m.plugins) == set(NAMES)  # nothing idle for 60 s yet
    clock[0] = 61.0
    await s.trigger_async()
    await s.stop()  # waits for the unloads in flight
    assert set(m.plugins) == {"busy"}
    assert set(s.get_loaded_plugins()) == {"busy"}
