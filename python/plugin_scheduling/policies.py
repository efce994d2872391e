"""Scheduling policies: one policy model for every place that orders work.

The same policy objects order the waiters of ``ReservationScheduler(policy=...)``,
the jobs of ``JobScheduler``, the sageLLM control plane's batch API (``schedule``/``prioritize``)
and the simulator. Each built-in class is a thin description (a name and its
settings); the rule itself runs in the Rust core.

========================  ==================  =============================================
name                      class               rule
========================  ==================  =============================================
``fifo`` (default)        FIFOPolicy          arrival order, strictly: nobody passes the head
``best_effort_fifo``      BestEffortFIFOPolicy arrival order; anyone who fits now may go
``priority``              PriorityPolicy      higher first; aging adds ``aging_per_s`` points
                                              per second waited, so a job of priority p is
                                              passed only by jobs submitted within
                                              ``(100 - p) / aging_per_s`` s after it
``fair_share``            FairSharePolicy     Slurm's classic factor ``2^(-U/S)`` per user or
                                              project, usage decayed with ``half_life_s``,
                                              optionally kept in SQLite (``usage_path``)
``deadline``              DeadlinePolicy      priority boosted by up to ``boost`` points over
                                              the last ``window_s`` s before the deadline
``sjf``                   SJFPolicy           shortest estimated duration first (declared,
                                              else the plugin's measured history)
``round_robin``           RoundRobinPolicy    users (or projects) in turn
``backfill``              BackfillPolicy      EASY backfill over arrival order: a later job
                                              starts only if it cannot delay the head
``multifactor``           MultifactorPolicy   Slurm-style weighted sum of age, fair share,
                                              priority and size
========================  ==================  =============================================

Priorities are 0–100 (higher first) or the names ``CRITICAL`` (100), ``HIGH`` (75),
``NORMAL`` (50, the default), ``LOW`` (25), ``BACKGROUND`` (0). A plugin's attributes
come from ``manifest["scheduling"]`` (``priority``, ``user``, ``project``,
``deadline_s``, ``estimated_duration_s``) or keywords of ``allocate``/``lease``.

A subclass of ``SchedulingPolicy`` that overrides ``select_next_job`` decides in
Python: ``ReservationScheduler(policy=MyPolicy())`` calls it before each admission
(with the waiting jobs as ``PendingJob`` objects); an exception in it reaches the
waiting caller.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence, get_args

from ._core import CorePolicy
from .types import PolicyName

__all__ = [
    "SchedulingPolicy",
    "FIFOPolicy",
    "BestEffortFIFOPolicy",
    "PriorityPolicy",
    "FairSharePolicy",
    "DeadlinePolicy",
    "SJFPolicy",
    "RoundRobinPolicy",
    "BackfillPolicy",
    "MultifactorPolicy",
    "LASPolicy",
    "POLICY_NAMES",
    "policy_from_name",
]

#: Every built-in policy name (``las``: the simulator's preemptive research policy).
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)


class SchedulingPolicy:
    """Base class of every policy: the job-queue module's ``select_next_job`` /
    ``should_preempt`` and the sageLLM control plane's ``schedule`` / ``prioritize``.

    ``kind`` names the core policy a built-in class stands for (``None`` for a
    policy written in Python).
    """

    kind: ClassVar[str | None] = None

    def __init__(self, name: str | None = None) -> None:
        self.name: str = name if name is not None else (self.kind or type(self).__name__)
        self._core: CorePolicy | None = None

    # -- settings -----------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        """The core settings of this policy (overridden by classes that have some)."""
        return {}

    def _spec(self) -> dict[str, Any]:
        if self.kind is None:
            raise NotImplementedError(f"{type(self).__name__} is not a built-in policy")
        return {"name": self.kind, **self._settings()}

    def _check(self) -> None:
        """Refuses a bad setting now (``ValueError`` naming it), not at first use;
        the core checks, so the rules are the ones every other entry point uses."""
        CorePolicy.check(self._spec())

    def _policy(self) -> CorePolicy:
        if self._core is None:
            self._core = CorePolicy(self._spec())
        return self._core

    # -- job queue ----------------------------------------------------------------
    def select_next_job(self, queue: Any, pending_jobs: Sequence[Any]) -> Any | None:
        """The job of ``pending_jobs`` that goes next (``None`` if empty).

        Jobs are objects (or dicts) with ``name``, ``priority``, ``user``,
        ``project``, ``submit_time``, ``deadline``, ``estimated_duration`` and
        ``requirements`` (``gpu_count``); missing ones take defaults.
        """
        jobs = list(pending_jobs)
        index = self._policy().select(jobs)
        return None if index is None else jobs[index]

    def order(self, jobs: Sequence[Any]) -> list[Any]:
        """``jobs`` in this policy's order (a new list)."""
        items = list(jobs)
        return [items[i] for i in self._policy().order(items)]

    def explain(self, job: Any) -> str:
        """Where ``job`` stands, in this policy's terms."""
        return self._policy().describe(job)

    def should_preempt(self, running_jobs: Sequence[Any], new_job: Any) -> Any | None:
        """The running job to stop so that ``new_job`` can start (the first of
        :meth:`preemption_set`), or ``None``."""
        victims = self.preemption_set(running_jobs, new_job)
        return victims[0] if victims else None

    def preemption_set(
        self, running_jobs: Sequence[Any], new_job: Any, needed: float | None = None
    ) -> list[Any]:
        """The smallest set of running jobs to stop (lowest priority first, then
        most recently started) freeing ``needed`` units (default: the new job's
        GPU count). Empty for policies that never preempt."""
        if self.kind is None:
            return []
        running = list(running_jobs)
        return [running[i] for i in self._policy().preempt(running, new_job, needed)]

    def record_start(self, job: Any) -> None:
        """Tell a stateful policy (round robin) that ``job`` started."""
        self._policy().record_start(job)

    def record_finish(self, job: Any, ran_s: float) -> None:
        """Tell a stateful policy (fair share, SJF) that ``job`` ran ``ran_s`` s."""
        self._policy().record_finish(job, ran_s)

    # -- sageLLM ------------------------------------------------------------------
    def schedule(self, requests: Sequence[Any], instances: Sequence[Any]) -> list[Any]:
        from .control_plane import _schedule

        return _schedule(self, requests, instances)

    def prioritize(self, requests: Sequence[Any]) -> list[Any]:
        from .control_plane import _prioritize

        return _prioritize(self, requests)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({settings})"


class FIFOPolicy(SchedulingPolicy):
    """First come, first served, strictly (the default)."""

    kind: ClassVar[str | None] = "fifo"


class BestEffortFIFOPolicy(SchedulingPolicy):
    """Arrival order, but any waiter that fits now may go (Kueue's BestEffortFIFO)."""

    kind: ClassVar[str | None] = "best_effort_fifo"


class PriorityPolicy(SchedulingPolicy):
    """Higher priority first, with aging (``aging_per_s`` points per second waited)."""

    kind: ClassVar[str | None] = "priority"

    def __init__(self, aging_per_s: float = 1.0 / 60.0, name: str | None = None) -> None:
        super().__init__(name)
        self.aging_per_s: float = aging_per_s
        self._check()

    def _settings(self) -> dict[str, Any]:
        return {"aging_per_s": self.aging_per_s}


class _SharesMixin:
    def _share_settings(self: Any) -> dict[str, Any]:
        return {
            "by": self.by,
            "half_life_s": self.half_life_s,
            "shares": dict(self.shares or {}),
            "usage_path": self.usage_path,
        }


class FairSharePolicy(_SharesMixin, SchedulingPolicy):
    """Slurm's classic fair share: ``2^(-U/S)`` per user (or project)."""

    kind: ClassVar[str | None] = "fair_share"

    def __init__(
        self,
        by: str = "user",
        half_life_s: float = 7 * 86400.0,
        shares: Mapping[str, float] | None = None,
        usage_path: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.by: str = by
        self.half_life_s: float = half_life_s
        self.shares: dict[str, float] = dict(shares or {})
        self.usage_path: Any = usage_path
        self._check()

    def _settings(self) -> dict[str, Any]:
        return self._share_settings()


class DeadlinePolicy(SchedulingPolicy):
    """Priority boosted by up to ``boost`` points over the last ``window_s`` s."""

    kind: ClassVar[str | None] = "deadline"

    def __init__(self, window_s: float = 300.0, boost: float = 50.0, name: str | None = None) -> None:
        super().__init__(name)
        self.window_s: float = window_s
        self.boost: float = boost
        self._check()

    def _settings(self) -> dict[str, Any]:
        return {"window_s": self.window_s, "boost": self.boost}


class SJFPolicy(SchedulingPolicy):
    """Shortest estimated duration first (declared, else measured history)."""

    kind: ClassVar[str | None] = "sjf"


class RoundRobinPolicy(SchedulingPolicy):
    """Users (or projects) in turn; within one, arrival order."""

    kind: ClassVar[str | None] = "round_robin"

    def __init__(self, by: str = "user", name: str | None = None) -> None:
        super().__init__(name)
        self.by: str = by
        self._check()

    def _settings(self) -> dict[str, Any]:
        return {"by": self.by}


class BackfillPolicy(SchedulingPolicy):
    """EASY backfill over arrival order (needs estimated durations to backfill)."""

    kind: ClassVar[str | None] = "backfill"


class MultifactorPolicy(_SharesMixin, SchedulingPolicy):
    """Slurm-style weighted sum of age, fair share, priority and size factors."""

    kind: ClassVar[str | None] = "multifactor"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        by: str = "user",
        half_life_s: float = 7 * 86400.0,
        shares: Mapping[str, float] | None = None,
        usage_path: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.weights: dict[str, float] = dict(weights or {})
        self.by: str = by
        self.half_life_s: float = half_life_s
        self.shares: dict[str, float] = dict(shares or {})
        self.usage_path: Any = usage_path
        self._check()

    def _settings(self) -> dict[str, Any]:
        out = self._share_settings()
        if self.weights:
            out["weights"] = dict(self.weights)
        return out


class LASPolicy(SchedulingPolicy):
    """Tiresias' discretized two-dimensional least-attained-service: queues by
    attained GPU-time (cut at 3,250 and 7,200 GPU-s by default, the Tiresias
    simulator's). In the simulator it runs as Tiresias' ``dlas-gpu``: at every
    event every queue is re-packed in order of entry (arrival, demotion or
    promotion to its end), fit-first, preempting running jobs that no longer
    fit; ``simulate(..., las_thresholds=[...], las_promote_knob=K)`` sets the
    queues and the starvation guard (PROMOTEKNOB: a job outside queue 0 that
    has waited K × the seconds it ran since its last promotion returns to
    queue 0; default 0 = off). Elsewhere: its order and preemption advice
    (a waiting job may stop jobs of a strictly lower-priority queue)."""

    kind: ClassVar[str | None] = "las"


_BY_NAME: dict[str, type[SchedulingPolicy]] = {
    str(cls.kind): cls  # every built-in class has a kind
    for cls in (
        FIFOPolicy,
        BestEffortFIFOPolicy,
        PriorityPolicy,
        FairSharePolicy,
        DeadlinePolicy,
        SJFPolicy,
        RoundRobinPolicy,
        BackfillPolicy,
        MultifactorPolicy,
        LASPolicy,
    )
}


def policy_from_name(name: str, **settings: Any) -> SchedulingPolicy:
    """A built-in policy by its name (``"fifo"``, ``"priority"``, ...)."""
    if not isinstance(name, str):
        raise TypeError(f"policy name must be a str, got {type(name).__name__}")
    # ignores case; an unknown name raises ValueError with a "did you mean"
    return _BY_NAME[CorePolicy.canonical_name(name)](**settings)


_CONTROL_PLANE_NAMES = frozenset(
    {
        "RequestPriority",
        "ParallelismType",
        "RequestMetadata",
        "ExecutionInstance",
        "SchedulingDecision",
        "SLOAwarePolicy",
        "CostOptimizedPolicy",
        "AdaptivePolicy",
    }
)


def __getattr__(name: str) -> Any:
    # The sageLLM control plane's names are re-exported lazily: control_plane imports this
    # module, so importing it here eagerly would be circular.
    if name in _CONTROL_PLANE_NAMES:
        from . import control_plane

        return getattr(control_plane, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _core_spec(policy: Any) -> dict[str, Any] | None:
    """The core spec of a built-in policy object; ``None`` when the object
    decides in Python (its class overrides ``select_next_job``)."""
    if not isinstance(policy, SchedulingPolicy) or policy.kind is None:
        return None
    builtin = _BY_NAME.get(policy.kind)
    if builtin is None or type(policy).select_next_job is not builtin.select_next_job:
        return None
    return policy._spec()
