"""``plugin_scheduling.cjm``: our SystemMonitor as the system monitor of the real cjm
``PluginManager`` (cjm-plugin-system 0.0.28), both ways a host can use it.

(a) In process: ``manager.system_monitor = SystemMonitorPlugin(simulate_gpus=...)``; the
    manager's own ``_get_global_stats`` / ``_get_global_stats_async`` feed the scheduler
    while an in-process plugin is executed through ``execute_plugin(_async)``.
(b) As a worker: ``write_monitor_manifest`` into a tmp manifests dir, ``load_all()``,
    ``register_system_monitor``; the stats travel over HTTP (127.0.0.1) from the monitor's
    worker process and decide whether a tiny GPU plugin in a second worker may run.

The GPU numbers come from ``simulate_gpus`` (a SimulatedSystem over the real CPU/RAM), so
admitted/blocked is known on any machine. cjm's data, logs and cwd go to a tmp dir
(CJM_DATA_DIR + ``reset_config``, as in test_host.py); workers are always torn down.
"""

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

import plugin_scheduling as ours
from cjm_plugin_system.core import scheduling as ref
from cjm_plugin_system.core.interface import PluginInterface
from cjm_plugin_system.core.manager import PluginManager
from cjm_plugin_system.core.metadata import PluginMeta
from conftest import plugin_manifest, running_cjm_host
from plugin_scheduling.cjm import (
    DEFAULT_MONITOR_NAME,
    SystemMonitorPlugin,
    monitor_manifest,
    write_monitor_manifest,
)

# The fields of cjm_infra_plugin_system.core.SystemStats (0.0.1), what cjm monitors return.
SYSTEM_STATS_KEYS = {
    "cpu_percent", "memory_used_mb", "memory_total_mb", "memory_available_mb", "gpu_type",
    "gpu_free_memory_mb", "gpu_total_memory_mb", "gpu_used_memory_mb", "gpu_load_percent", "details",
}
MONITOR = DEFAULT_MONITOR_NAME
GPU_PLUGIN = "vram_probe"
NEEDS = {"requires_gpu": True, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 1}
BLOCKED = f"ResourceScheduler blocked execution of {GPU_PLUGIN} (Eviction failed)"
NO_GPU_WARNING = "[Scheduler] Warning: No GPU stats available.\n"
IMPLS = {"ours": ours, "ref": ref}


def blocked_line(free_mb):
    return f"[Scheduler] Blocked {GPU_PLUGIN}: Needs 4096MB VRAM, has {free_mb}MB\n"


def run_plugin(manager, mode, **kwargs):
    """execute_plugin(_async) of GPU_PLUGIN -> (result, exception or None)."""
    try:
        if mode == "sync":
            return manager.execute_plugin(GPU_PLUGIN, **kwargs), None
        return asyncio.run(manager.execute_plugin_async(GPU_PLUGIN, **kwargs)), None
    except Exception as e:  # noqa: BLE001 - the exception is the outcome under test
        return None, e


# --------------------------------------------------------------------------- the plugin itself


def test_imports_and_works_without_cjm_and_without_side_effects():
    code = textwrap.dedent(
        """
        import io, logging, sys, threading
        sys.modules["cjm_plugin_system"] = None  # any import of it now raises ImportError
        out = io.StringIO(); sys.stdout = out
        before = threading.active_count()
        import plugin_scheduling.cjm as c
        sys.stdout = sys.__stdout__
        assert out.getvalue() == "", out.getvalue()
        assert threading.active_count() == before
        assert logging.getLogger().handlers == []
        assert c.monitor_manifest()["module"] == "plugin_scheduling.cjm"
        stats = c.SystemMonitorPlugin(simulate_gpus=[1000]).execute("get_system_status")
        assert stats["gpu_free_memory_mb"] == 1000.0, stats
        assert not [m for m, mod in sys.modules.items() if m.startswith("cjm_") and mod is not None]
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_has_everything_the_cjm_interface_asks_for():
    plugin = SystemMonitorPlugin()
    for attr in PluginInterface.__abstractmethods__ | {"execute_stream"}:
        assert hasattr(plugin, attr), attr
    assert (plugin.name, plugin.version) == (DEFAULT_MONITOR_NAME, ours.__version__)
    schema = plugin.get_config_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert set(schema["properties"]) == set(plugin.get_current_config()) == {"min_refresh", "simulate_gpus"}
    assert plugin.get_current_config() == {"min_refresh": 0.1, "simulate_gpus": None}
    assert isinstance(plugin.monitor, ours.SystemMonitor)
    stats = plugin.execute()  # the real host: keys only, no GPU assumed either way
    assert set(stats) == SYSTEM_STATS_KEYS
    assert stats["memory_total_mb"] > 0
    assert (stats["gpu_free_memory_mb"] is None) == (stats["gpu_type"] == "None")
    assert json.loads(json.dumps(stats)) == stats  # travels through the worker as JSON
    assert list(plugin.execute_stream()) and plugin.cleanup() is None
    with pytest.raises(ValueError, match="Unknown command"):
        plugin.execute("get_gpu_status")
    assert set(plugin.execute(command="get_system_status")) == SYSTEM_STATS_KEYS  # cjm's keyword


def test_initialize_merges_validates_and_keeps_state():
    plugin = SystemMonitorPlugin(simulate_gpus=[8000, 4000])
    sim = plugin.monitor
    assert isinstance(sim, ours.SimulatedSystem)
    sim.occupy(1000, device=1)
    plugin.initialize({})  # nothing given: nothing changes, occupied memory survives
    plugin.initialize(plugin.get_current_config())  # what reload_plugin sends
    assert plugin.monitor is sim and plugin.execute()["gpu_free_memory_mb"] == 11000.0
    for bad, exc in [
        ({"simulate_gpus": [-1]}, ValueError),
        ({"simulate_gpus": "8000"}, TypeError),
        ({"min_refresh": -1}, ValueError),
        ({"min_refreshh": 1}, ValueError),
    ]:
        with pytest.raises(exc):
            plugin.initialize(bad)
        assert plugin.monitor is sim, bad
    plugin.initialize({"min_refresh": 0})
    assert plugin.get_current_config() == {"min_refresh": 0.0, "simulate_gpus": [8000.0, 4000.0]}
    plugin.initialize({"simulate_gpus": None})  # back to the real GPUs
    assert isinstance(plugin.monitor, ours.SystemMonitor) and plugin.monitor.min_refresh == 0.0


def test_manifest_is_discovered_by_the_manager(tmp_path):
    path = write_monitor_manifest(tmp_path / "manifests", env_vars={"X": "1"})
    assert path == tmp_path / "manifests" / f"{MONITOR}.json"
    manager = PluginManager(search_paths=[path.parent])
    [meta] = manager.discover_manifests()
    assert (meta.name, meta.version, meta.category) == (MONITOR, ours.__version__, "system_monitor")
    assert meta.package_name == "plugin_scheduling.cjm"
    assert meta.interface == "cjm_infra_plugin_system.plugin_interface.MonitorPlugin"
    assert meta.manifest["class"] == "SystemMonitorPlugin"
    assert meta.manifest["python_path"] == sys.executable and meta.manifest["env_vars"] == {"X": "1"}
    # What load_plugin sends the worker when no config is given.
    assert manager._extract_defaults_from_schema(meta.config_schema) == {"min_refresh": 0.1, "simulate_gpus": None}
    assert monitor_manifest("other", python_path=Path("/x/python"))["python_path"] == "/x/python"
    with pytest.raises(ValueError):
        write_monitor_manifest(tmp_path, name="../escape")


# --------------------------------------------------------------------------- (a) in process


class EchoPlugin:
    """An in-process plugin instance the manager can execute (counts its runs)."""

    def __init__(self):
        self.runs = 0

    def execute(self, *args, **kwargs):
        self.runs += 1
        return {"kwargs": kwargs}

    async def execute_async(self, *args, **kwargs):
        return self.execute(*args, **kwargs)


@pytest.fixture
def inproc(tmp_path):
    manager = PluginManager(search_paths=[tmp_path])
    manager.system_monitor = SystemMonitorPlugin(simulate_gpus=[3000, 3000])
    meta = PluginMeta(name=GPU_PLUGIN, version="1.0.0", instance=EchoPlugin())
    meta.manifest = {"name": GPU_PLUGIN, "resources": dict(NEEDS)}
    manager.plugins[GPU_PLUGIN] = meta
    return manager


def test_inprocess_global_stats_are_ours(inproc, caplog):
    plugin = inproc.system_monitor
    for stats in (inproc._get_global_stats(), asyncio.run(inproc._get_global_stats_async())):
        assert set(stats) == SYSTEM_STATS_KEYS
        assert stats["gpu_type"] == "NVIDIA"
        assert (stats["gpu_free_memory_mb"], stats["gpu_total_memory_mb"], stats["gpu_used_memory_mb"]) == (
            6000.0, 6000.0, 0.0,
        )
        assert [g["memory_total_mb"] for g in stats["details"]["gpus"]] == [3000.0, 3000.0]
        assert stats["details"]["gpu_source"] == "simulated"
        assert stats["memory_total_mb"] == plugin.monitor()["memory_total_mb"] > 0  # the real host's RAM
    assert "Failed to fetch system stats" not in caplog.text


@pytest.mark.parametrize("impl", ["ours", "ref"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_inprocess_safety_scheduler_follows_the_monitor(inproc, impl, mode, capsys):
    inproc.scheduler = IMPLS[impl].SafetyScheduler()
    echo = inproc.plugins[GPU_PLUGIN].instance
    sim = inproc.system_monitor.monitor
    capsys.readouterr()

    result, exc = run_plugin(inproc, mode, step=1)  # 6000 MB free over two GPUs (summed, as cjm)
    assert exc is None and result == {"kwargs": {"step": 1}} and echo.runs == 1
    assert capsys.readouterr().out == ""

    sim.occupy(2500, device=0)  # a neighbour loads a model: 3500 MB left
    result, exc = run_plugin(inproc, mode, step=2)
    assert isinstance(exc, RuntimeError) and str(exc) == BLOCKED and echo.runs == 1
    assert capsys.readouterr().out == blocked_line(3500.0)

    sim.free(2500, device=0)
    result, exc = run_plugin(inproc, mode, step=3)
    assert exc is None and echo.runs == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_inprocess_gpu_less_machine_warns_and_admits(inproc, mode, capsys):
    """No GPU: figures are None (not the cjm NVIDIA plugin's 0.0), so Safety warns and admits."""
    inproc.system_monitor.initialize({"simulate_gpus": []})
    inproc.scheduler = ours.SafetyScheduler()
    assert inproc._get_global_stats()["gpu_free_memory_mb"] is None
    capsys.readouterr()
    result, exc = run_plugin(inproc, mode)
    assert exc is None and inproc.plugins[GPU_PLUGIN].instance.runs == 1
    assert capsys.readouterr().out == NO_GPU_WARNING


# --------------------------------------------------------------------------- (b) as a worker

PROBE_SOURCE = '''\
import os


class VramProbe:
    """Tiny duck-typed plugin; its run count is readable through the worker's /progress."""

    name = "vram_probe"
    version = "1.0.0"

    def __init__(self):
        self._progress = 0.0
        self._status_message = "runs"

    def initialize(self, config=None):
        pass

    def get_config_schema(self):
        return {}

    def get_current_config(self):
        return {}

    def cleanup(self):
        pass

    def execute(self, *args, **kwargs):
        self._progress += 1.0
        return {"pid": os.getpid(), "kwargs": kwargs}
'''


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """One PluginManager, two real workers (our monitor, the probe) for the module."""
    probe = plugin_manifest(GPU_PLUGIN, module="vram_probe_plugin", cls="VramProbe", resources=NEEDS)
    with running_cjm_host(  # tests/conftest.py
        tmp_path_factory.mktemp("cjm_monitor"),
        sources={"vram_probe_plugin.py": PROBE_SOURCE},
        manifests=[probe],
        before_load=write_monitor_manifest,
        scheduler=ours.SafetyScheduler(),
        configs={MONITOR: {"simulate_gpus": [8000]}},
    ) as env:
        assert set(env.manager.plugins) == {MONITOR, GPU_PLUGIN}
        env.manager.register_system_monitor(MONITOR)
        yield env.manager


@pytest.fixture
def worker_host(host):
    host.scheduler = ours.SafetyScheduler()
    yield host
    assert host.update_plugin_config(MONITOR, {"simulate_gpus": [8000]})


def probe_runs(manager):
    return int(manager.get_plugin(GPU_PLUGIN).get_progress()["progress"])


def test_worker_is_registered_and_isolated(worker_host):
    m = worker_host
    proxy = m.system_monitor
    assert proxy is m.get_plugin(MONITOR) and type(proxy).__name__ == "RemotePluginProxy"
    assert proxy.base_url.startswith("http://127.0.0.1:") and proxy.is_alive()
    assert proxy.process.pid != os.getpid()
    health = httpx.Client(trust_env=False).get(f"{proxy.base_url}/health").json()
    assert (health["name"], health["version"], health["pid"]) == (MONITOR, ours.__version__, proxy.process.pid)
    assert [meta.name for meta in m.get_plugins_by_category("system_monitor")] == [MONITOR]
    assert m.get_plugin_config(MONITOR) == {"min_refresh": 0.1, "simulate_gpus": [8000.0]}
    assert m.get_plugin_config_schema(MONITOR) == SystemMonitorPlugin().get_config_schema()
    assert proxy.log_path.parent == Path(os.environ["CJM_DATA_DIR"]) / "logs"


def test_worker_stats_reach_the_manager_over_http(worker_host, caplog):
    m = worker_host
    for stats in (m._get_global_stats(), asyncio.run(m._get_global_stats_async())):
        assert set(stats) == SYSTEM_STATS_KEYS
        assert (stats["gpu_type"], stats["gpu_free_memory_mb"], stats["gpu_total_memory_mb"]) == (
            "NVIDIA", 8000.0, 8000.0,
        )
        assert stats["details"]["gpu_source"] == "simulated"
        assert stats["memory_total_mb"] > 0 and stats["memory_available_mb"] > 0
    assert "Failed to fetch system stats" not in caplog.text
    with pytest.raises(RuntimeError, match="Unknown command"):  # worker -> HTTP 500 -> proxy
        m.system_monitor.execute("get_gpu_status")


@pytest.mark.parametrize("impl", ["ours", "ref"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_worker_monitor_decides_admission(worker_host, impl, mode, capsys):
    m = worker_host
    m.scheduler = IMPLS[impl].SafetyScheduler()
    probe_pid = m.get_plugin(GPU_PLUGIN).process.pid
    cases = [  # simulate_gpus -> admitted?, scheduler's stdout
        ([8000], True, ""),
        ([2000], False, blocked_line(2000.0)),
        ([3000, 3000], True, ""),  # free memory is summed over devices, as the cjm monitor does
        ([4095.5], False, blocked_line(4095.5)),
        ([], True, NO_GPU_WARNING),
    ]
    for gpus, admitted, out in cases:
        assert m.update_plugin_config(MONITOR, {"simulate_gpus": gpus})  # HTTP /initialize
        before = probe_runs(m)
        capsys.readouterr()
        result, exc = run_plugin(m, mode, gpus=gpus)
        assert capsys.readouterr().out == out, gpus
        if admitted:
            assert exc is None and result == {"pid": probe_pid, "kwargs": {"gpus": gpus}}, (gpus, exc)
            assert probe_runs(m) == before + 1
        else:
            assert isinstance(exc, RuntimeError) and str(exc) == BLOCKED, (gpus, exc)
            assert probe_runs(m) == before


def test_worker_rejects_bad_config_and_keeps_the_old_one(worker_host):
    m = worker_host
    assert not m.update_plugin_config(MONITOR, {"simulate_gpus": [-1]})
    assert not m.update_plugin_config(MONITOR, {"bogus": 1})
    assert m.get_plugin_config(MONITOR) == {"min_refresh": 0.1, "simulate_gpus": [8000.0]}
    assert m._get_global_stats()["gpu_free_memory_mb"] == 8000.0
