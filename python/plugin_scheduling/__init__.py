"""plugin-scheduling: decides whether, when and on which GPU a plugin may run.

A drop-in, Rust-core replacement for ``cjm_plugin_system.core.scheduling``::

    from plugin_scheduling import SafetyScheduler, QueueScheduler
    manager = PluginManager(scheduler=QueueScheduler(timeout=300.0, poll_interval=2.0))
"""

from __future__ import annotations

from ._base import ResourceScheduler
from ._core import (
    InvalidManifest,
    InvalidRequirement,
    InvalidStats,
    PermissiveScheduler,
    QueueScheduler,
    SafetyScheduler,
    __version__,
)

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
    "__version__",
]
