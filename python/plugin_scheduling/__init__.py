"""plugin-scheduling: decides whether, when and on which GPU a plugin may run.

A drop-in, Rust-core replacement for ``cjm_plugin_system.core.scheduling``::

    from plugin_scheduling import SafetyScheduler, QueueScheduler
    manager = PluginManager(scheduler=QueueScheduler(timeout=300.0, poll_interval=2.0))
"""

from __future__ import annotations

from . import _drivers, _lease
from ._base import ResourceScheduler
from .simulator import SimulationResult, simulate
from ._core import (
    InvalidManifest,
    InvalidQuota,
    InvalidRequirement,
    InvalidStats,
    ManualClock,
    PendingJob,
    PermissiveScheduler,
    Grant,
    QueueScheduler,
    QuotaBackendError,
    ReservationScheduler,
    ReservationTimeout,
    SafetyScheduler,
    SharedLedgerError,
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
ReservationScheduler.allocate_async = _drivers.reservation_allocate_async  # type: ignore[method-assign]
ReservationScheduler._reserve_async = _drivers.reserve_async  # type: ignore[method-assign]
ReservationScheduler.lease = _lease.lease  # type: ignore[method-assign]
ReservationScheduler.lease_async = _lease.lease_async  # type: ignore[method-assign]
ReservationScheduler._repr_html_ = _lease.repr_html  # type: ignore[method-assign]
SystemMonitor.snapshot_async = _drivers.snapshot_async  # type: ignore[method-assign]
SimulatedSystem.snapshot_async = _drivers.snapshot_async  # type: ignore[method-assign]

for _scheduler in (PermissiveScheduler, SafetyScheduler, QueueScheduler, ReservationScheduler):
    ResourceScheduler.register(_scheduler)
del _scheduler

__all__ = [
    "InvalidManifest",
    "InvalidQuota",
    "InvalidRequirement",
    "InvalidStats",
    "Grant",
    "ManualClock",
    "PendingJob",
    "PermissiveScheduler",
    "QueueScheduler",
    "QuotaBackendError",
    "SharedLedgerError",
    "ReservationScheduler",
    "ReservationTimeout",
    "ResourceScheduler",
    "SafetyScheduler",
    "SimulatedOutOfMemory",
    "SimulatedSystem",
    "SimulationResult",
    "SystemMonitor",
    "__version__",
    "simulate",
]
