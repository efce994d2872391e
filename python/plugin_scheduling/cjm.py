"""Our ``SystemMonitor`` as the system monitor of a cjm-plugin-system host.

A cjm ``PluginManager`` (0.0.28) asks its ``system_monitor`` for stats before each
execution: ``system_monitor.execute("get_system_status")`` (sync) or
``await system_monitor.execute_async("get_system_status")`` (async), and feeds the dict
to its scheduler. Two ways to plug ours in:

* in process: ``manager.system_monitor = SystemMonitorPlugin()``; no worker, no HTTP.
* as a worker, like the cjm NVIDIA monitor plugin: ``write_monitor_manifest(dir)``,
  ``PluginManager(search_paths=[dir]).load_all()``, ``register_system_monitor(name)``.

The cjm worker only duck-types its plugin (``getattr``/``hasattr``, no ``isinstance``),
and the manager never checks the monitor's type either, so ``SystemMonitorPlugin`` does
not subclass cjm's ``PluginInterface``: this module imports without cjm-plugin-system
installed (it is only a test dependency of this package). It has every method of
``PluginInterface`` that the worker or manager calls, with the same signatures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import SimulatedSystem, SystemMonitor, __version__
from .types import SystemStats

__all__ = [
    "DEFAULT_MONITOR_NAME",
    "GET_SYSTEM_STATUS",
    "SystemMonitorPlugin",
    "monitor_manifest",
    "write_monitor_manifest",
]

GET_SYSTEM_STATUS = "get_system_status"
"""The only action; the one the cjm ``PluginManager`` sends."""

DEFAULT_MONITOR_NAME = "plugin-scheduling-monitor"
DEFAULT_MIN_REFRESH = 0.1

# The contract we implement (duck-typed): the manifest says so the way the cjm NVIDIA
# monitor's does, so hosts that look monitors up by interface or category find ours.
_MONITOR_INTERFACE = "cjm_infra_plugin_system.plugin_interface.MonitorPlugin"

StatsSource = Union[SystemMonitor, SimulatedSystem]


def _config_schema() -> Dict[str, Any]:
    # A fresh dict each time: callers (the manager, UIs) may mutate what they get.
    return {
        "type": "object",
        "title": "plugin-scheduling system monitor",
        "properties": {
            "min_refresh": {
                "type": "number",
                "minimum": 0,
                "default": DEFAULT_MIN_REFRESH,
                "description": "Seconds a reading is shared by all callers (0: read every time).",
            },
            "simulate_gpus": {
                "type": ["array", "null"],
                "items": {"type": "number", "minimum": 0},
                "default": None,
                "description": "Total MB of simulated GPUs over the real CPU/RAM (null: real GPUs).",
            },
        },
        "additionalProperties": False,
    }


class SystemMonitorPlugin:
    """cjm monitor plugin over ``SystemMonitor`` (or a ``SimulatedSystem`` over it).

    ``execute()`` returns the cjm ``SystemStats`` dict. Config: ``min_refresh`` (the
    monitor's cache period) and ``simulate_gpus`` (a list of GPU sizes in MB: report
    simulated GPUs with the real host's CPU and RAM, e.g. on a machine without a GPU).
    """

    def __init__(
        self, *, min_refresh: Optional[float] = None, simulate_gpus: Optional[Sequence[float]] = None
    ) -> None:
        # The cjm worker calls this with no argument; keywords are for in-process use.
        self._config: Dict[str, Any] = {"min_refresh": DEFAULT_MIN_REFRESH, "simulate_gpus": None}
        self._host: Optional[SystemMonitor] = None
        self._source: StatsSource
        # Built now, not on the first request: a new monitor's first reading waits until
        # 200 ms after its creation (for a meaningful cpu_percent), and the worker builds
        # the plugin at start-up, well before the host asks.
        self.initialize({"min_refresh": min_refresh, "simulate_gpus": simulate_gpus})

    @property
    def name(self) -> str:
        return DEFAULT_MONITOR_NAME

    @property
    def version(self) -> str:
        return __version__

    @property
    def monitor(self) -> StatsSource:
        """The stats source: a ``SimulatedSystem`` (to ``occupy`` memory) or ``SystemMonitor``."""
        return self._source

    def initialize(self, config: Optional[Mapping[str, Any]] = None) -> None:
        """Apply the keys given (absent keys keep their value; ``None`` means the default).

        Invalid values raise ``TypeError``/``ValueError`` and change nothing, so a failed
        ``update_plugin_config`` leaves the monitor as it was. Re-applying the current
        config keeps the objects, so a simulation's occupied memory survives it.
        """
        config = dict(config or {})
        unknown = sorted(set(config) - set(self._config))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(self._config)}")
        min_refresh = config.get("min_refresh", self._config["min_refresh"])
        if min_refresh is None:
            min_refresh = DEFAULT_MIN_REFRESH
        gpus = config.get("simulate_gpus", self._config["simulate_gpus"])

        host = self._host
        if host is None or min_refresh != host.min_refresh:
            host = SystemMonitor(min_refresh=min_refresh)  # validates min_refresh
        source: StatsSource
        stored: Optional[List[float]] = None
        if gpus is None:
            source = host
        else:
            if isinstance(gpus, (str, bytes)) or not isinstance(gpus, Sequence):
                raise TypeError(f"simulate_gpus must be a list of MB or null, got {gpus!r}")
            stored = list(gpus)
            if host is self._host and stored == self._config["simulate_gpus"]:
                source = self._source
            else:
                source = SimulatedSystem(gpus=stored, host=host)  # validates each size
            stored = [float(mb) for mb in stored]
        self._host, self._source = host, source
        self._config = {"min_refresh": host.min_refresh, "simulate_gpus": stored}

    def execute(self, action: str = GET_SYSTEM_STATUS, **kwargs: Any) -> SystemStats:
        """The stats dict. Other keyword arguments are ignored, as the cjm NVIDIA monitor does;
        ``command=`` (the name cjm's ``MonitorPlugin`` gives the argument) is accepted too."""
        _check_action(kwargs.pop("command", action))
        return self._source.snapshot()

    async def execute_async(self, action: str = GET_SYSTEM_STATUS, **kwargs: Any) -> SystemStats:
        """The stats dict without blocking the event loop (what ``_get_global_stats_async`` awaits)."""
        _check_action(kwargs.pop("command", action))
        return await self._source.snapshot_async()

    def execute_stream(self, *args: Any, **kwargs: Any) -> Iterator[SystemStats]:
        """One reading, as ``PluginInterface.execute_stream``'s default."""
        yield self.execute(*args, **kwargs)

    def get_config_schema(self) -> Dict[str, Any]:
        return _config_schema()

    def get_current_config(self) -> Dict[str, Any]:
        gpus = self._config["simulate_gpus"]
        return {"min_refresh": self._config["min_refresh"], "simulate_gpus": _copy(gpus)}

    def cleanup(self) -> None:
        """Nothing to release: no thread, file or socket is held (NVML is per process)."""

    def __repr__(self) -> str:
        return f"SystemMonitorPlugin({', '.join(f'{k}={v!r}' for k, v in self._config.items())})"


def _check_action(action: object) -> None:
    if action != GET_SYSTEM_STATUS:
        raise ValueError(f"Unknown command: {action!r} (only {GET_SYSTEM_STATUS!r})")


def _copy(value: Optional[List[float]]) -> Optional[List[float]]:
    return None if value is None else list(value)


def monitor_manifest(
    name: str = DEFAULT_MONITOR_NAME,
    python_path: Union[str, "os.PathLike[str]", None] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """The manifest a ``PluginManager`` discovers to run ``SystemMonitorPlugin`` in a worker.

    ``python_path`` is the interpreter the worker runs (default: this one, which has
    plugin_scheduling and cjm-plugin-system installed). ``extra`` keys are added or
    replace defaults (``env_vars``, ``description``, ...). Its resources ask for nothing,
    so the monitor itself is never blocked or evicted for lack of memory.
    """
    manifest: Dict[str, Any] = {
        "name": name,
        "version": __version__,
        "description": "System monitor (CPU, RAM, NVIDIA GPUs via NVML) from plugin-scheduling",
        "author": "plugin-scheduling",
        "type": "infrastructure",
        "category": "system_monitor",
        "interface": _MONITOR_INTERFACE,
        "module": __name__,
        "class": SystemMonitorPlugin.__name__,
        "python_path": os.fspath(python_path) if python_path is not None else sys.executable,
        "config_schema": _config_schema(),
        "resources": {"requires_gpu": False, "min_gpu_vram_mb": 0, "min_system_ram_mb": 0},
        "env_vars": {},
    }
    manifest.update(extra)
    return manifest


def write_monitor_manifest(directory: Union[str, "os.PathLike[str]"], **kwargs: Any) -> Path:
    """Write ``monitor_manifest(**kwargs)`` as ``<directory>/<name>.json`` (what
    ``PluginManager(search_paths=[directory])`` globs) and return its path."""
    manifest = monitor_manifest(**kwargs)
    name = manifest["name"]
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"manifest name must be a plain file name, got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
