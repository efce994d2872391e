"""The abstract scheduling policy, as in ``cjm_plugin_system.core.scheduling``.

Kept in Python so users subclass it exactly as they subclass the reference;
the built-in schedulers (Rust classes) are registered as its subclasses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable, Dict

__all__ = ["ResourceScheduler"]


class ResourceScheduler(ABC):
    """Abstract base class for resource allocation policies."""

    @abstractmethod
    def allocate(
        self,
        plugin_meta: Any,  # Metadata of the plugin requesting resources
        stats_provider: Callable[[], Dict[str, Any]],  # Function that returns fresh stats
    ) -> bool:  # True if execution is allowed
        """Decide if a plugin can start based on its requirements and system state."""
        ...

    async def allocate_async(
        self,
        plugin_meta: Any,  # Metadata of the plugin requesting resources
        stats_provider: Callable[[], Awaitable[Dict[str, Any]]],  # Async function returning stats
    ) -> bool:  # True if execution is allowed
        """Async allocation decision. Default delegates to sync allocate after fetching stats once."""
        stats = await stats_provider()
        return self.allocate(plugin_meta, lambda: stats)

    @abstractmethod
    def on_execution_start(
        self,
        plugin_name: str,  # Name of the plugin starting execution
    ) -> None:
        """Notify scheduler that a task started (to reserve resources)."""
        ...

    @abstractmethod
    def on_execution_finish(
        self,
        plugin_name: str,  # Name of the plugin finishing execution
    ) -> None:
        """Notify scheduler that a task finished (to release resources)."""
        ...
