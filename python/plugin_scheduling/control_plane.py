"""The sageLLM control plane's batch API: place a batch of pending requests on serving instances.

An LLM serving control plane hands its pending requests and its instances to a
policy and gets placement decisions back::

    from plugin_scheduling.control_plane import (
        ExecutionInstance, RequestMetadata, RequestPriority, SLOAwarePolicy,
    )
    decisions = SLOAwarePolicy().schedule(requests, instances)

Five strategies (the logic is in the Rust core, ``plugin_scheduling_core::control_plane``):
``FIFOPolicy`` and ``PriorityPolicy`` (the same classes as ``plugin_scheduling.policies``),
``SLOAwarePolicy``, ``CostOptimizedPolicy`` and ``AdaptivePolicy``. Every one follows
sageLLM's interface rules: the inputs are only read; a request goes only to an
instance that serves its ``model_name`` (a request with ``model_name=None`` to any),
``can_accept_request`` and has room under ``max_concurrency`` counting the decisions
already made in the same call; a request with no such instance gets no decision
(so nothing schedulable gives ``[]``); ``prioritize`` returns a new sorted list.

A subclass of ``SchedulingPolicy`` that overrides ``schedule``/``prioritize`` (the
sageLLM's "Creating Custom Strategies") works wherever a built-in does; a subclass of
a built-in that overrides only ``prioritize`` is scheduled in its own order.

Requests and instances may be these dataclasses or any objects with sageLLM's
attributes (sageLLM's own types included); ``arrival_time`` is seconds since the
epoch (``time.time()``, the default) or a ``datetime``. Bad values raise
``TypeError``/``ValueError`` naming the field and the value.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Callable, ClassVar, Literal, Sequence, cast

from . import _core
from ._core import SchedulingDecision
from .policies import FIFOPolicy, PriorityPolicy, SchedulingPolicy

__all__ = [
    "AdaptivePolicy",
    "ControlPlaneManager",
    "CostOptimizedPolicy",
    "ExecutionInstance",
    "FIFOPolicy",
    "ParallelismType",
    "PriorityPolicy",
    "RequestMetadata",
    "RequestPriority",
    "SLOAwarePolicy",
    "SchedulingDecision",
    "SchedulingPolicy",
]

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
_Kind = Literal["fifo", "priority", "slo_aware", "cost_optimized", "adaptive"]


class RequestPriority(Enum):
    """Request priority levels; a lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


class ParallelismType(Enum):
    """How an instance splits a model across its GPUs."""

    TENSOR_PARALLEL = "tp"
    PIPELINE_PARALLEL = "pp"
    DATA_PARALLEL = "dp"
    EXPERT_PARALLEL = "ep"
    HYBRID = "hybrid"


@dataclass
class RequestMetadata:
    """A pending inference request (sageLLM's fields)."""

    request_id: str
    prompt: str = ""
    max_tokens: int | None = None
    model_name: str | None = None
    priority: RequestPriority = RequestPriority.NORMAL
    slo_deadline_ms: float | None = None
    user_id: str | None = None
    arrival_time: float | datetime = field(default_factory=time.time)
    cost_budget: float | None = None

    def __post_init__(self) -> None:
        _core._check_item(self, "request")


@dataclass
class ExecutionInstance:
    """A serving instance (sageLLM's fields); ``current_load`` counts running requests."""

    instance_id: str
    host: str
    port: int
    model_name: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_count: int = 1
    can_accept_request: bool = True
    current_load: float = 0
    max_concurrency: int = 100
    avg_latency_ms: float = 0.0
    throughput_tokens_per_sec: float = 0.0

    def __post_init__(self) -> None:
        _core._check_item(self, "instance")


def _setting(owner: str, name: str, value: Any) -> float:
    """A policy setting: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _clock(owner: str, clock: Clock | None) -> Clock:
    if clock is None:
        return time.time
    if not callable(clock):
        raise TypeError(f"{owner}.clock must be callable (returning seconds since the epoch), got {clock!r}")
    return clock


class SLOAwarePolicy(SchedulingPolicy):
    """Most urgent first: urgency is the share of ``slo_deadline_ms`` already spent
    since ``arrival_time`` (1 once missed, 0 without an SLO). Requests above
    ``urgency_threshold`` go to the fastest instance (lowest ``avg_latency_ms``),
    the others to the least loaded. ``clock()`` gives the current time in seconds
    since the epoch (``time.time`` by default)."""

    kind: ClassVar[str | None] = "slo_aware"

    def __init__(self, urgency_threshold: float = 0.7, *, clock: Clock | None = None) -> None:
        super().__init__("SLO-Aware")
        self.urgency_threshold: float = _setting("SLOAwarePolicy", "urgency_threshold", urgency_threshold)
        self.clock: Clock = _clock("SLOAwarePolicy", clock)


class CostOptimizedPolicy(SchedulingPolicy):
    """The cheapest instance within the request's ``cost_budget`` whose
    ``avg_latency_ms`` fits the time left to its SLO (when no instance can meet
    the SLO, the cheapest within budget, said in the reason). Cost of a request:
    ``price_per_gpu_hour * gpu_count / 3600`` times the seconds its tokens
    (``max_tokens``, 100 when None) take at ``throughput_tokens_per_sec`` (one
    second when unknown). Order: priority, then smaller budget, then arrival."""

    kind: ClassVar[str | None] = "cost_optimized"

    def __init__(self, price_per_gpu_hour: float = 2.5, *, clock: Clock | None = None) -> None:
        super().__init__("CostOptimized")
        self.price_per_gpu_hour: float = _setting("CostOptimizedPolicy", "price_per_gpu_hour", price_per_gpu_hour)
        self.clock: Clock = _clock("CostOptimizedPolicy", clock)


class AdaptivePolicy(SchedulingPolicy):
    """Chooses a strategy per batch from the requests and the instances' mean
    utilization (``current_load / max_concurrency``): Priority when CRITICAL/HIGH
    requests are present; SLO-aware when requests carry SLOs and utilization is
    above ``high_load_threshold``; cost-optimised below ``low_load_threshold``;
    SLO-aware otherwise. After ``schedule``, ``active_policy`` is the sub-policy
    chosen and ``active_reason`` why; each decision's ``reason`` starts with
    ``Adaptive[<kind>] (<why>): ``. ``prioritize`` orders as Priority does."""

    kind: ClassVar[str | None] = "adaptive"

    def __init__(
        self,
        high_load_threshold: float = 0.8,
        low_load_threshold: float = 0.3,
        urgency_threshold: float = 0.7,
        price_per_gpu_hour: float = 2.5,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__("Adaptive")
        self.high_load_threshold: float = _setting("AdaptivePolicy", "high_load_threshold", high_load_threshold)
        self.low_load_threshold: float = _setting("AdaptivePolicy", "low_load_threshold", low_load_threshold)
        self.clock: Clock = _clock("AdaptivePolicy", clock)
        self.priority_policy: PriorityPolicy = PriorityPolicy()
        self.slo_policy: SLOAwarePolicy = SLOAwarePolicy(urgency_threshold, clock=self.clock)
        self.cost_policy: CostOptimizedPolicy = CostOptimizedPolicy(price_per_gpu_hour, clock=self.clock)
        self.active_policy: SchedulingPolicy | None = None
        self.active_reason: str | None = None


def _kind(policy: SchedulingPolicy, call: str) -> _Kind:
    kind = type(policy).kind
    if kind is None:
        raise NotImplementedError(
            f"{type(policy).__name__} has no built-in strategy (kind None): "
            f"a custom policy overrides {call}"
        )
    return cast(_Kind, kind)  # the core refuses an unknown kind, naming it


def _schedule(
    policy: SchedulingPolicy, requests: Sequence[Any], instances: Sequence[Any]
) -> list[SchedulingDecision]:
    """``SchedulingPolicy.schedule`` for the built-in kinds."""
    kind = _kind(policy, "schedule(requests, instances)")
    as_given = type(policy).prioritize is not SchedulingPolicy.prioritize
    if as_given:
        # A subclass's own order: schedule in it.
        requests = policy.prioritize(requests)
    clock: Clock | None = getattr(policy, "clock", None)
    now = clock() if clock is not None else 0.0
    if isinstance(policy, AdaptivePolicy):
        decisions, chosen, why = _core._schedule_batch(
            kind,
            requests,
            instances,
            now,
            as_given,
            policy.slo_policy.urgency_threshold,
            policy.cost_policy.price_per_gpu_hour,
            policy.high_load_threshold,
            policy.low_load_threshold,
        )
        subs: dict[str | None, SchedulingPolicy] = {
            "priority": policy.priority_policy,
            "slo_aware": policy.slo_policy,
            "cost_optimized": policy.cost_policy,
        }
        policy.active_policy = subs[chosen]
        policy.active_reason = why
    else:
        decisions, _, _ = _core._schedule_batch(
            kind,
            requests,
            instances,
            now,
            as_given,
            getattr(policy, "urgency_threshold", 0.7),
            getattr(policy, "price_per_gpu_hour", 2.5),
        )
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "policy %r (%s) placed %d of %s requests on %s instances%s",
            policy.name,
            kind,
            len(decisions),
            len(requests) if hasattr(requests, "__len__") else "?",
            len(instances) if hasattr(instances, "__len__") else "?",
            f" ({policy.active_reason})" if isinstance(policy, AdaptivePolicy) else "",
        )
    return decisions


def _prioritize(policy: SchedulingPolicy, requests: Sequence[Any]) -> list[Any]:
    """``SchedulingPolicy.prioritize`` for the built-in kinds: a new sorted list."""
    kind = _kind(policy, "prioritize(requests)")
    if kind == "adaptive":
        kind = "priority"
    clock: Clock | None = getattr(policy, "clock", None)
    now = clock() if clock is not None else 0.0
    return _core._prioritize_batch(kind, requests, now, getattr(policy, "urgency_threshold", 0.7))


def _admitted(value: Any, kind: Literal["request", "instance"], call: str) -> Any:
    """``value`` checked as ``schedule`` will read it, so a bad one is refused
    where it is handed over (naming the argument) rather than failing every
    later ``schedule()``."""
    expected = "a RequestMetadata" if kind == "request" else "an ExecutionInstance"
    try:
        _core._check_item(value, kind)
    except AttributeError as e:
        raise TypeError(
            f"ControlPlaneManager.{call}: {kind} must be {expected} (or an object with its "
            f"attributes), got {value!r} ({type(value).__name__}): {e}"
        ) from None
    return value


class ControlPlaneManager:
    """The smallest manager sageLLM's README lines need
    (``ControlPlaneManager(scheduling_policy=FIFOPolicy())``): it holds a policy,
    the pending requests and the instances, and ``schedule()`` places one batch,
    keeping the requests that got no decision pending.

    ``register_instance`` and ``submit_request`` check what they are given as
    ``schedule`` reads it: something that is not an instance / a request (``None``,
    an object lacking the request's or instance's attributes) raises ``TypeError`` naming the
    argument, a bad value ``TypeError``/``ValueError`` naming the field, and
    nothing is added."""

    def __init__(self, scheduling_policy: SchedulingPolicy | None = None) -> None:
        if scheduling_policy is not None and not callable(getattr(scheduling_policy, "schedule", None)):
            raise TypeError(
                "ControlPlaneManager: scheduling_policy must be a SchedulingPolicy (an object with "
                f"schedule(requests, instances)), got {scheduling_policy!r} ({type(scheduling_policy).__name__})"
            )
        self.scheduling_policy: SchedulingPolicy = scheduling_policy if scheduling_policy is not None else FIFOPolicy()
        self.pending: list[Any] = []
        self.instances: list[Any] = []

    def register_instance(self, instance: Any) -> None:
        self.instances.append(_admitted(instance, "instance", "register_instance"))

    def submit_request(self, request: Any) -> None:
        self.pending.append(_admitted(request, "request", "submit_request"))

    def schedule(self) -> list[SchedulingDecision]:
        decisions = self.scheduling_policy.schedule(list(self.pending), list(self.instances))
        placed = {d.request_id for d in decisions}
        self.pending = [r for r in self.pending if r.request_id not in placed]
        return decisions
