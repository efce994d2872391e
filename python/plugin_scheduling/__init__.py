"""plugin-scheduling: decides whether, when and on which GPU a plugin may run.

A drop-in, Rust-core replacement for ``cjm_plugin_system.core.scheduling``::

    from plugin_scheduling import SafetyScheduler, QueueScheduler
    manager = PluginManager(scheduler=QueueScheduler(timeout=300.0, poll_interval=2.0))
"""

from __future__ import annotations

from . import _drivers
from ._base import ResourceScheduler
from ._core import (
    InvalidManifest,
    InvalidRequirement,
    InvalidStats,
    PermissiveScheduler,
    QueueScheduler,
    SafetyScheduler,
    SimulatedOutOfMemory,
    SimulatedSystem,
    SystemMonitor,
    __version__,
)

# The async methods are coroutines written in Python over the Rust checks
# (see _drivers); installed here so the classes are complete on import.
PermissiveScheduler.allocate_async = _drivers.allocate_async  # type: ignore[method-assign]
SafetyScheduler.allocate_async = _drivers.allocate_async  # type: ignore[method-assign]
QueueScheduler.allocate_async = _drivers.queue_allocate_async  # type: ignore[method-assign]
SystemMonitor.snapshot_async = _drivers.snapshot_async  # type: ignore[attr-defined]
SimulatedSystem.snapshot_async = _drivers.snapshot_async  # type: ignore[attr-defined]

for _scheduler in (PermissiveScheduler, SafetyScheduler, QueueScheduler):
    ResourceScheduler.register(_scheduler)
del _scheduler

__all__ = [
    "InvalidManifest",
    "InvalidRequirement",
    "InvalidStats",
    "PermissiveScheduler",
    "QueueScheduler",
    "ResourceScheduler",
    "SafetyScheduler",
    "SimulatedOutOfMemory",
    "SimulatedSystem",
    "SystemMonitor",
    "__version__",
]
