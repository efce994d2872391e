"""Scheduling policies: one policy model for every place that orders work.

SKELETON (being built by the policies issue). The contract other modules rely on:

* ``SchedulingPolicy`` is the one base class. Seed 004's calls:
  ``select_next_job(queue, pending_jobs) -> job | None`` and
  ``should_preempt(running_jobs, new_job) -> job | None``. Seed 002's calls:
  ``schedule(requests, instances) -> list[SchedulingDecision]`` and
  ``prioritize(requests) -> list[RequestMetadata]``, implemented in
  ``plugin_scheduling.control_plane`` (``_schedule`` / ``_prioritize``), which
  dispatches on the policy's ``kind``.
* ``kind`` (class attribute) is the policy's name in the core (``"fifo"``,
  ``"priority"``, ...); ``None`` for a user's own subclass.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence


class SchedulingPolicy:
    """Base class of every policy (seed 004's and seed 002's interface)."""

    kind: ClassVar[str | None] = None

    def __init__(self, name: str | None = None) -> None:
        self.name = name if name is not None else (self.kind or type(self).__name__)

    def select_next_job(self, queue: Any, pending_jobs: Sequence[Any]) -> Any | None:
        raise NotImplementedError(f"{type(self).__name__}.select_next_job")

    def should_preempt(self, running_jobs: Sequence[Any], new_job: Any) -> Any | None:
        return None

    def schedule(self, requests: Sequence[Any], instances: Sequence[Any]) -> list[Any]:
        from .control_plane import _schedule

        return _schedule(self, requests, instances)

    def prioritize(self, requests: Sequence[Any]) -> list[Any]:
        from .control_plane import _prioritize

        return _prioritize(self, requests)


class FIFOPolicy(SchedulingPolicy):
    kind = "fifo"

    def select_next_job(self, queue: Any, pending_jobs: Sequence[Any]) -> Any | None:
        # Placeholder until the core policies land: earliest submit_time.
        if not pending_jobs:
            return None
        return min(pending_jobs, key=lambda j: getattr(j, "submit_time", 0.0))


class PriorityPolicy(SchedulingPolicy):
    kind = "priority"
