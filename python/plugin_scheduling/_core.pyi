"""Type stubs for the Rust extension ``plugin_scheduling._core``."""

import logging
import os
import pathlib
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Awaitable, Callable, ClassVar, Iterable, Literal, Mapping, TypedDict, final

from typing_extensions import disjoint_base

from ._base import ResourceScheduler

# The stubs declare the built-in schedulers as subclasses of the Python ABC
# `ResourceScheduler`: at run time they are registered as its virtual
# subclasses (`isinstance` is True), and type checkers then accept them
# wherever a `ResourceScheduler` is expected.

from .types import OnMissingStats, PolicyName, SystemStats

__all__ = [
    "FixedStats",
    "InvalidManifest",
    "InvalidRequirement",
    "InvalidQuota",
    "InvalidStats",
    "InvalidTransition",
    "JobTable",
    "LoadedPlugins",
    "METRICS_NAMES",
    "MonitorHistory",
    "JournalError",
    "PermissiveScheduler",
    "QueueScheduler",
    "QueueWaitState",
    "QuotaBackendError",
    "ReservationScheduler",
    "ReservationWait",
    "Grant",
    "ManualClock",
    "PendingJob",
    "CorePolicy",
    "ReservationTimeout",
    "SafetyScheduler",
    "SchedulingDecision",
    "SimulatedOutOfMemory",
    "SharedLedgerError",
    "SimulatedSystem",
    "SimRun",
    "SimTrace",
    "SystemMonitor",
    "UnknownJob",
    "__version__",
    "_shared_ledger_view",
    "_check_item",
    "_prioritize_batch",
    "_schedule_batch",
    "_QuotaBackend",
    "_generate_trace",
    "_load_trace",
    "_metric_names",
    "_simulate",
]
__version__: str

class InvalidRequirement(TypeError):
    """A resource requirement and a stat that cannot be compared."""

class InvalidManifest(AttributeError):
    """``plugin_meta.manifest`` or its ``'resources'`` entry is not a mapping."""

class InvalidStats(AttributeError):
    """The stats provider returned something that is not a mapping."""

class ReservationTimeout(TimeoutError):
    """A lease could not reserve what the plugin needs within the timeout."""

@final
class Grant:
    @property
    def id(self) -> int: ...
    @property
    def plugin(self) -> str: ...
    @property
    def devices(self) -> list[int]: ...
    @property
    def vram_mb(self) -> float: ...
    @property
    def ram_mb(self) -> float: ...
    @property
    def pools(self) -> list[tuple[str, float]]:
        """Scalar pools reserved: ``ram_mb``, ``cpu_cores`` and pools declared in
        ``manifest["resources"]["pools"]``."""
    @property
    def without_gpu_figures(self) -> bool:
        """Admitted although the stats had no GPU figures (no device reserved)."""
    @property
    def cuda_visible_devices(self) -> str: ...

@final
class ManualClock:
    """A clock that moves only when told (tests, notebooks): pass it as
    ``ReservationScheduler(clock=...)``; arrivals, ages, deadlines, settle
    windows and expiries are stamped with it."""

    def __new__(cls, start: float = 0.0) -> ManualClock: ...
    def now(self) -> float: ...
    def advance(self, seconds: float) -> float: ...

@final
class PendingJob:
    """A waiter of ``ReservationScheduler`` as a Python policy's
    ``select_next_job`` sees it (the job-queue module's job fields)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> float: ...
    @property
    def user(self) -> str | None: ...
    @property
    def project(self) -> str | None: ...
    @property
    def submit_time(self) -> float: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def estimated_duration(self) -> float | None: ...
    @property
    def requirements(self) -> dict[str, float]: ...

@final
class CorePolicy:
    """A core policy (by name and settings) on plain job objects; what the
    ``plugin_scheduling.policies`` classes call."""

    def __new__(cls, spec: Mapping[str, Any]) -> CorePolicy: ...
    @staticmethod
    def check(spec: Mapping[str, Any]) -> None:
        """Checks ``spec``'s name and settings without building the policy
        (``ValueError``/``TypeError`` naming the field)."""
    @staticmethod
    def canonical_name(name: str) -> str:
        """The built-in policy ``name`` stands for, ignoring case; an unknown
        name raises ``ValueError`` listing the names, with a suggestion."""
    @property
    def name(self) -> str: ...
    def select(self, jobs: Iterable[Any], now: float | None = None) -> int | None: ...
    def order(self, jobs: Iterable[Any], now: float | None = None) -> list[int]: ...
    def describe(self, job: Any, now: float | None = None) -> str: ...
    def preempt(self, running_jobs: Iterable[Any], new_job: Any, needed: float | None = None) -> list[int]: ...
    def record_start(self, job: Any, now: float | None = None) -> None: ...
    def record_finish(self, job: Any, ran_s: float, now: float | None = None) -> None: ...

@final
class ReservationWait:
    def my_turn(self) -> bool: ...
    def claim(self) -> Grant | None: ...
    def offer(self, stats: Any) -> Grant | None: ...
    def failure_error(self) -> ReservationTimeout: ...
    def after_refusal(self) -> bool | float: ...
    def leave(self) -> None: ...
    def subscribe(self, wake: Any, event_loop: Any, future: Any) -> int | None: ...
    def unsubscribe(self, token: int | None) -> None: ...

@disjoint_base
class ReservationScheduler(ResourceScheduler):
    """Reserves what a plugin declares (per GPU device, RAM, CPU cores and
    declared pools) atomically, so concurrent callers never double-book;
    waiters are served in the policy's order.

    Options: ``timeout`` (s, default 300; inf waits forever), ``poll_interval``
    (s, default 2: re-check for memory freed elsewhere), ``headroom`` (fraction
    of each total that may be reserved, 0.9), ``settle_s`` (s a new grant may be
    missing from readings, 2), ``start_timeout`` (s an unstarted grant is kept,
    60), ``on_missing_stats`` (``'allow'``: admit GPU plugins without GPU
    figures, logged; ``'block'``: wait), ``peaks_path`` / ``persist_peaks``
    (where measured peaks are saved), ``peak_margin`` (1.1), ``policy`` (a name
    of ``plugin_scheduling.policies.POLICY_NAMES``, a policy object, or a
    ``SchedulingPolicy`` subclass deciding in Python), ``clock`` (a
    ``ManualClock`` for tests), ``claim_timeout`` (s a woken waiter may take to
    answer before it is passed over, 1), ``shared`` (``True``: the per-user
    ledger ``default`` under ``$XDG_RUNTIME_DIR/plugin-scheduling/``; a name
    there, or a path: every process that opens it sees one ledger and one line
    of waiters; ``False``: this scheduler's own queue), ``mode`` (the shared
    ledger file's permissions when created, 0o600; 0o660 for a group).
    """

    def __new__(cls, *_args: Any, **_kwargs: Any) -> ReservationScheduler: ...
    def __init__(
        self,
        timeout: float | None = 300.0,
        poll_interval: float | None = 2.0,
        *,
        headroom: float = 0.9,
        settle_s: float = 2.0,
        start_timeout: float = 60.0,
        on_missing_stats: OnMissingStats = "allow",
        peaks_path: str | os.PathLike[str] | None = None,
        persist_peaks: bool = False,
        peak_margin: float = 1.1,
        policy: PolicyName | Any = "fifo",
        clock: ManualClock | None = None,
        claim_timeout: float = 1.0,
        shared: bool | str | os.PathLike[str] | None = False,
        mode: int = 0o600,
    ) -> None: ...
    @property
    def shared(self) -> pathlib.Path | None:
        """The shared ledger's file (``None``: this scheduler's queue is its own)."""
    @property
    def timeout(self) -> float: ...
    @property
    def poll_interval(self) -> float: ...
    @property
    def logger(self) -> logging.Logger: ...
    @property
    def policy(self) -> str:
        """The policy's name."""
    def allocate(
        self,
        plugin_meta: Any,
        stats_provider: Callable[[], Mapping[str, Any]],
        *,
        priority: float | str | None = None,
        user: str | None = None,
        project: str | None = None,
        deadline_s: float | None = None,
        estimated_duration_s: float | None = None,
    ) -> bool: ...
    async def allocate_async(
        self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]], **job: Any
    ) -> bool: ...
    async def _reserve_async(
        self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]], **job: Any
    ) -> Grant: ...
    def lease(
        self, plugin_meta: Any, stats_provider: Callable[[], Mapping[str, Any]], **job: Any
    ) -> AbstractContextManager[Grant]: ...
    def lease_async(
        self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]], **job: Any
    ) -> AbstractAsyncContextManager[Grant]: ...
    def _repr_html_(self) -> str: ...
    def _begin_wait(
        self,
        plugin_meta: Any,
        event_loop: Any = None,
        *,
        priority: float | str | None = None,
        user: str | None = None,
        project: str | None = None,
        deadline_s: float | None = None,
        estimated_duration_s: float | None = None,
        lease: bool = False,
    ) -> ReservationWait: ...
    def _reserve(
        self,
        plugin_meta: Any,
        stats_provider: Callable[[], Mapping[str, Any]],
        *,
        priority: float | str | None = None,
        user: str | None = None,
        project: str | None = None,
        deadline_s: float | None = None,
        estimated_duration_s: float | None = None,
        lease: bool = False,
    ) -> Grant: ...
    def on_execution_start(self, plugin_name: str) -> None:
        """Marks started the oldest unstarted reservation of ``plugin_name``
        that this thread allocated, else one whose thread has ended (a hand-off);
        never a lease's, nor one a waiter has yet to collect."""
    def on_execution_finish(self, plugin_name: str) -> None:
        """Releases this thread's oldest started execution of ``plugin_name``,
        else its unstarted one (allocated, never started), else one whose thread
        has ended; an execution another running thread owns is never released
        (a warning names the plugin; use ``lease()`` to hand one over).
        Wakes the waiter whose turn it is."""
    def _start_grant(self, grant_id: int) -> bool: ...
    def _release_grant(self, grant_id: int) -> bool: ...
    def get_active_plugins(self) -> set[str]: ...
    def attach_pid(self, grant_id: int, pid: int) -> bool: ...
    def observe(self, stats: Any) -> int: ...
    def record_peak(self, plugin_name: str, vram_mb: float | None = None, ram_mb: float | None = None) -> dict[str, float | None]: ...
    def peaks(self) -> dict[str, dict[str, float | None]]: ...
    def explain(
        self,
        plugin_meta: Any,
        stats_provider: Callable[[], Mapping[str, Any]],
        *,
        priority: float | str | None = None,
        user: str | None = None,
        project: str | None = None,
        deadline_s: float | None = None,
        estimated_duration_s: float | None = None,
    ) -> dict[str, Any]:
        """Why the plugin would wait (or where it would go), in the policy's
        terms; reserves nothing."""
    def preemption_candidates(
        self,
        plugin_meta: Any,
        stats_provider: Callable[[], Mapping[str, Any]],
        *,
        priority: float | str | None = None,
        user: str | None = None,
        project: str | None = None,
    ) -> list[Grant]:
        """Running grants the policy would stop so that the plugin could start
        (``priority``/``multifactor``/``deadline``); nothing is stopped."""
    def snapshot(self) -> dict[str, Any]: ...
    def _pending_wakers(self) -> int: ...

class SimulatedOutOfMemory(RuntimeError):
    """A SimulatedSystem refused to occupy more memory than is free."""

@final
class SystemMonitor:
    """Live stats of this machine (sysinfo + NVML); calling it returns the cjm
    ``SystemStats`` dict.

    - ``min_refresh`` (s, default 0.1): readings younger than this are shared.
    """

    def __new__(cls, min_refresh: float = 0.1) -> SystemMonitor: ...
    @property
    def min_refresh(self) -> float: ...
    def snapshot(self) -> SystemStats: ...
    def __call__(self) -> SystemStats: ...
    async def snapshot_async(self) -> SystemStats: ...
    def _fresh(self) -> SystemStats | None: ...
    def invalidate(self) -> None: ...

@final
class SimulatedSystem:
    """A scripted machine with ``SystemMonitor``'s stats dict.

    - ``gpus``: each simulated GPU's total MB (default ``[24576.0]``).
    - ``ram_total_mb`` (default 65536.0), ``cpu_percent`` (default 0.0).
    - ``host``: a ``SystemMonitor`` for real RAM/CPU (less what is occupied here).
    """

    def __new__(
        cls,
        gpus: Iterable[float] = ...,
        ram_total_mb: float = 65536.0,
        cpu_percent: float = 0.0,
        host: SystemMonitor | None = None,
    ) -> SimulatedSystem: ...
    def occupy(self, mb: float, device: int = 0) -> None: ...
    def free(self, mb: float, device: int = 0) -> None: ...
    def occupy_ram(self, mb: float) -> None: ...
    def free_ram(self, mb: float) -> None: ...
    def set_load(self, device: int, percent: float) -> None: ...
    def at(self, seconds: float, used_mb: float, device: int | None = None) -> None: ...
    @property
    def gpu_count(self) -> int: ...
    def snapshot(self) -> SystemStats: ...
    def __call__(self) -> SystemStats: ...
    async def snapshot_async(self) -> SystemStats: ...
    def _fresh(self) -> SystemStats | None: ...

@final
class FixedStats:
    def __new__(cls, stats: Any) -> FixedStats: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

@disjoint_base
class PermissiveScheduler(ResourceScheduler):
    """Allows every execution; ``allocate`` never calls the provider. No options."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> PermissiveScheduler: ...
    def __init__(self) -> None: ...
    def allocate(self, plugin_meta: Any, stats_provider: Any) -> bool: ...
    async def allocate_async(self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]]) -> Any: ...
    def _allocate_with_stats(self, plugin_meta: Any, stats: Any) -> Any: ...
    def on_execution_start(self, plugin_name: Any) -> None: ...
    def on_execution_finish(self, plugin_name: Any) -> None: ...
    def __reduce__(self) -> Any: ...

@disjoint_base
class SafetyScheduler(ResourceScheduler):
    """Blocks a plugin whose declared VRAM / RAM exceeds what the stats show
    (one check, no waiting), printing the reference's lines. No options."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> SafetyScheduler: ...
    def __init__(self) -> None: ...
    def _check_resources(self, plugin_meta: Any, stats: Any) -> bool: ...
    def allocate(self, plugin_meta: Any, stats_provider: Callable[[], Mapping[str, Any]]) -> Any: ...
    async def allocate_async(self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]]) -> Any: ...
    def _allocate_with_stats(self, plugin_meta: Any, stats: Any) -> Any: ...
    def on_execution_start(self, plugin_name: Any) -> None: ...
    def on_execution_finish(self, plugin_name: Any) -> None: ...
    def __reduce__(self) -> Any: ...

@disjoint_base
class QueueScheduler(ResourceScheduler):
    """Waits until a plugin's declared VRAM / RAM fits, or gives up after ``timeout``.

    - ``timeout`` (s, default 300.0; ``inf``: no limit).
    - ``poll_interval`` (s, default 2.0): re-check interval; ``on_execution_finish``
      wakes every waiter at once.
    """

    def __new__(cls, *_args: Any, **_kwargs: Any) -> QueueScheduler: ...
    def __init__(self, timeout: float | None = 300.0, poll_interval: float | None = 2.0) -> None: ...
    @property
    def timeout(self) -> float: ...
    @timeout.setter
    def timeout(self, value: float) -> None: ...
    @property
    def poll_interval(self) -> float: ...
    @poll_interval.setter
    def poll_interval(self, value: float) -> None: ...
    @property
    def logger(self) -> logging.Logger: ...
    @logger.setter
    def logger(self, value: logging.Logger) -> None: ...
    @property
    def _active_plugins(self) -> set[Any]: ...
    def _check_resources(self, plugin_meta: Any, stats: Any) -> bool: ...
    def allocate(self, plugin_meta: Any, stats_provider: Callable[[], Mapping[str, Any]]) -> bool: ...
    async def allocate_async(self, plugin_meta: Any, stats_provider: Callable[[], Awaitable[Mapping[str, Any]]]) -> bool: ...
    def _first_turn(self, plugin_meta: Any, stats: Any, started: float) -> Literal[True] | tuple[QueueWaitState, Literal[False] | float]: ...
    def on_execution_start(self, plugin_name: Any) -> None: ...
    def on_execution_finish(self, plugin_name: Any) -> None: ...
    def get_active_plugins(self) -> set[Any]: ...
    def _pending_wakers(self) -> int: ...
    def __reduce__(self) -> Any: ...

@final
class QueueWaitState:
    def after_stats(self, plugin_meta: Any, stats: Any) -> bool | float: ...
    def subscribe(self, wake: Any, event_loop: Any, future: Any) -> int | None: ...
    def unsubscribe(self, token: int | None) -> None: ...

# --- The sageLLM control plane's batch API (plugin_scheduling.control_plane) ---------------

@final
class SchedulingDecision:
    """Where a request goes and why (sageLLM's fields). Equality compares the
    fields; unhashable, like sageLLM's dataclass; picklable."""

    __match_args__ = (
        "request_id",
        "target_instance_id",
        "parallelism_strategy",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "estimated_latency_ms",
        "estimated_cost",
        "reason",
    )
    __hash__: ClassVar[None]  # type: ignore[assignment]
    request_id: Any
    target_instance_id: Any
    parallelism_strategy: Any
    """A ``ParallelismType`` member."""
    tensor_parallel_size: int
    pipeline_parallel_size: int
    estimated_latency_ms: float
    estimated_cost: float
    reason: str
    def __new__(
        cls,
        request_id: Any,
        target_instance_id: Any,
        parallelism_strategy: Any = None,
        tensor_parallel_size: int | None = None,
        pipeline_parallel_size: int | None = None,
        estimated_latency_ms: float | None = None,
        estimated_cost: float | None = None,
        reason: str | None = None,
    ) -> SchedulingDecision: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __reduce__(self) -> tuple[type[SchedulingDecision], tuple[Any, ...]]: ...

def _schedule_batch(
    kind: Literal["fifo", "priority", "slo_aware", "cost_optimized", "adaptive"],
    requests: Iterable[Any],
    instances: Iterable[Any],
    now: float,
    as_given: bool,
    urgency_threshold: float = 0.7,
    price_per_gpu_hour: float = 2.5,
    high_load_threshold: float = 0.8,
    low_load_threshold: float = 0.3,
) -> tuple[
    list[SchedulingDecision],
    Literal["priority", "slo_aware", "cost_optimized"] | None,
    str | None,
]:
    """Places ``requests`` on ``instances`` with the built-in strategy ``kind``;
    ``now`` (epoch seconds) is the clock for SLO urgency; ``as_given`` keeps the
    requests' order. Returns the decisions and, for ``"adaptive"``, the kind it
    chose and why."""

def _prioritize_batch(
    kind: Literal["fifo", "priority", "slo_aware", "cost_optimized", "adaptive"],
    requests: Iterable[Any],
    now: float,
    urgency_threshold: float = 0.7,
) -> list[Any]:
    """A new list of the same request objects in the strategy's order."""

def _check_item(obj: Any, kind: Literal["request", "instance"]) -> None:
    """Checks one request (``"request"``) or instance (``"instance"``) as
    ``schedule`` reads it; raises naming the field and the value."""
# ----------------------------------------------------------------- quotas

class InvalidQuota(ValueError):
    """A quota argument out of range or unsupported by the backend (names the field), or a release of more than is held."""

class QuotaBackendError(RuntimeError):
    """The quota backend failed: the database could not be read or written, or a Slurm command failed."""

_QuotaKind = Literal["sqlite", "postgresql", "slurm"]
_QuotaResource = Literal["cpu", "memory", "gpu", "vram_mb"]

class _QuotaInfoDict(TypedDict):
    project_id: str
    cpu_quota: float | None
    used_cpu: float
    available_cpu: float | None
    cpu_usage_percent: float | None
    memory_quota: float | None
    used_memory: float
    available_memory: float | None
    memory_usage_percent: float | None
    gpu_quota: int | None
    used_gpu: int
    available_gpu: int | None
    gpu_usage_percent: float | None
    vram_quota_mb: float | None
    used_vram_mb: float
    available_vram_mb: float | None
    vram_usage_percent: float | None
    enforce_quota: bool
    provider: _QuotaKind
    synced_at_ms: int

class _QuotaAmountsDict(TypedDict):
    cpu: float
    memory: float
    gpu: int
    vram_mb: float

class _QuotaUsageDict(TypedDict):
    project_id: str
    provider: _QuotaKind
    cpu: float
    memory: float
    gpu: int
    vram_mb: float
    by_job_type: dict[str, _QuotaAmountsDict]
    slurm_jobs: _QuotaAmountsDict | None
    synced_at_ms: int

class _QuotaDeniedDict(TypedDict):
    project: str
    resource: _QuotaResource
    requested: float
    used: float
    limit: float
    never_fits: bool
    reason: str

class _QuotaPatchDict(TypedDict, total=False):
    cpu_quota: float | None
    memory_quota: float | None
    gpu_quota: int | None
    vram_quota_mb: float | None
    enforce_quota: bool

_QuotaJobType = Literal["training", "inference", "batch", "interactive"]

@final
class _QuotaBackend:
    """One quota backend (SQLite file, PostgreSQL server or Slurm cluster); use ``plugin_scheduling.quotas``."""

    @staticmethod
    def sqlite(path: str | os.PathLike[str] | None = None) -> _QuotaBackend: ...
    @staticmethod
    def postgres(dsn: str, lock_timeout: float | None = None) -> _QuotaBackend: ...
    @staticmethod
    def slurm(
        prefix: str,
        user: str | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        ledger: str | os.PathLike[str] | None = None,
    ) -> _QuotaBackend: ...
    @property
    def kind(self) -> _QuotaKind: ...
    def describe(self) -> str: ...
    def get(self, project: str) -> _QuotaInfoDict | None: ...
    def set(self, project: str, fields: _QuotaPatchDict) -> _QuotaInfoDict: ...
    def decide(
        self, project: str, job_type: _QuotaJobType, request: tuple[float, float, int, float], allocate: bool
    ) -> _QuotaDeniedDict | None:
        """``None`` when the request fits, else why not (a dict naming the
        resource); ``allocate``: also record it when it fits (atomically)."""
    def release(
        self, project: str, job_type: _QuotaJobType, request: tuple[float, float, int, float]
    ) -> None: ...
    def usage(self, project: str) -> _QuotaUsageDict: ...
    def allocate_held(
        self, holder: str, project: str, job_type: _QuotaJobType, request: tuple[float, float, int, float]
    ) -> _QuotaDeniedDict | None:
        """``decide(..., allocate=True)`` recorded under ``holder`` in the same
        transaction (a holder already holding is allowed, not charged again)."""
    def release_held(self, holder: str) -> bool:
        """Releases what ``holder`` holds (True), or nothing (False): at most once."""
    def holds(self, prefix: str) -> list[tuple[str, str, str]]:
        """``[(holder, project_id, job_type)]`` of the holders starting with ``prefix``."""

class InvalidTransition(ValueError):
    """A job operation its state does not allow (names the job, its state and the call)."""

class UnknownJob(KeyError):
    """No job has that id."""

class JournalError(OSError):
    """The job journal (SQLite) could not be opened, read or written."""

_JobStateName = Literal["QUEUED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]

@final
class JobTable:
    """The core's job table (records, transitions, policy order, admission pass, journal)."""

    def __new__(
        cls,
        policy: str = "fifo",
        journal: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] | None = None,
        batch: int = 1024,
        own: bool = False,
        durability: Literal["batched", "sync"] | str = "batched",
        retention_jobs: int | None = ...,
        retention_age_s: float | None = ...,
    ) -> JobTable: ...
    def now(self) -> float: ...
    @property
    def durability(self) -> Literal["batched", "sync"]: ...
    @property
    def took_over(self) -> dict[str, Any] | None:
        """The dead owner whose journal was taken over at open: ``pid``, ``start_ticks``, ``since``."""
    def set_machine(
        self, cpu_cores: float | None = None, memory_mb: float | None = None, gpu_vram_mb: list[float] | None = None
    ) -> None:
        """What the machine has (None: unknown): later submissions that can never fit are refused."""
    def refuse_never_fit(self) -> list[tuple[int, str]]:
        """Fails the queued jobs that can never fit the machine: ``[(job_id, why)]``."""
    def prune(self) -> list[int]:
        """Applies the retention now; the ids dropped (and those dropped earlier, not yet taken)."""
    def take_pruned(self) -> list[int]:
        """Ids dropped by retention since the last call."""
    def close(self) -> None:
        """Commits and gives the journal (and its ownership) up."""
    @property
    def policy(self) -> str: ...
    @property
    def journal_path(self) -> str | None: ...
    @property
    def unflushed(self) -> int: ...
    def recover(self) -> dict[str, list[int]]: ...
    def view(self) -> dict[str, list[int]]: ...
    def add_queue(self, name: str, priority: int = 0, max_concurrent_jobs: int | None = None) -> None: ...
    def submit(
        self,
        module: str,
        priority: float,
        deadline: float | None,
        estimated_duration: float | None,
        cost_per_second: float | None,
        user: str | None,
        project: str | None,
        queue: str | None,
        cpu_cores: float,
        memory_mb: float,
        gpu_count: int,
        vram_mb: float,
        kind: str,
        payload: str,
        max_retries: int,
    ) -> int: ...
    def job(self, job_id: int) -> dict[str, Any]: ...
    def state(self, job_id: int) -> _JobStateName: ...
    def check(self, job_id: int, to: _JobStateName, call: str) -> None: ...
    def transition(self, job_id: int, to: _JobStateName, call: str, reason: str | None = None) -> _JobStateName: ...
    def requeue(self, job_id: int, why: Literal["preempted", "retried", "interrupted"], reason: str) -> _JobStateName: ...
    def set_priority(self, job_id: int, priority: float) -> None: ...
    def grow(self, job_id: int, memory_mb: float, vram_mb: float) -> tuple[float, float]: ...
    def progress(self, job_id: int, fraction: float, message: str | None = None) -> float: ...
    def dispatch(
        self,
        cpu_cores: float,
        gpus: int,
        memory_mb: float,
        take: Callable[[int, str, int, float, float], Any],
        eligible: Callable[[int, str | None, float, float, int, float], str | None] | None = None,
    ) -> tuple[list[tuple[int, Any]], int | None, list[tuple[int, str]], float | None, BaseException | None]: ...
    def preemption_advice(self, head: int, cpu_cores: float, gpus: int, memory_mb: float) -> list[int]: ...
    def pending(self, limit: int = ...) -> list[int]: ...
    def plan(
        self, cpu_cores: float, gpus: int, memory_mb: float | None = None, vram_mb: float | None = None, limit: int = 500
    ) -> list[tuple[int, int, float | None]]:
        """The first ``limit`` pending jobs in the policy's order as
        ``(job_id, position, estimated_start)`` (Unix seconds; None: unknown),
        planned per resource from the running jobs' estimated ends (core
        ``jobs::plan``). A total given as None is unknown (never delays)."""
    def describe(self, job_id: int) -> str: ...
    def counts(self) -> dict[_JobStateName, int]: ...
    def counters(self) -> dict[str, int]: ...
    def active(self) -> tuple[float, int, float]: ...
    def queue_stats(self) -> list[dict[str, Any]]: ...
    def records(self, state: _JobStateName | None = None) -> list[dict[str, Any]]: ...
    def history(self, job_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def flush(self) -> None: ...
    def __len__(self) -> int: ...
    # Process records and crash recovery (core ``jobs::recovery``).
    def journal_id(self) -> str | None:
        """The journal's identity (names job markers and quota holders); None without a journal."""
    def process_intent(self, job_id: int, token: str) -> None:
        """Records (committed at once, whatever the durability) that the job is about to be spawned."""
    def process_spawned(self, job_id: int, pid: int, pgid: int) -> int:
        """Records (committed at once) the job's spawned process; its start time (0 if already gone)."""
    def process_ended(self, job_id: int) -> None:
        """Forgets the job's process record, at once."""
    def processes(self) -> list[dict[str, Any]]:
        """The journal's process records."""
    def recovery_plan(self, mode: Literal["kill", "adopt"]) -> list[dict[str, Any]]:
        """What to do, per job, with the previous incarnation's processes (a decision: the
        journal's owner acts on it, before it spawns anything)."""
    def recover_adopting(self, adopt: list[int]) -> dict[str, list[int]]:
        """``recover()``, keeping the jobs in ``adopt`` running (their process survived)."""
    @staticmethod
    def proc_start_time(pid: int) -> int | None:
        """The start time (clock ticks after boot) of the live process ``pid``, if any."""
    @staticmethod
    def holders_to_release(holders: list[str], journal_id: str, adopted: list[int]) -> list[str]:
        """The journal's quota holders to release at recovery: all but the adopted jobs'."""
    @staticmethod
    def marker_token(journal_id: str, job_id: int) -> str:
        """The marker token (and quota holder) of a job of the journal."""

@final
class LoadedPlugins:
    """Loaded plugins of a host, and which idle ones to unload (least recently used first)."""

    def __new__(cls) -> LoadedPlugins: ...
    def loaded(self, name: str, vram_mb: float, ram_mb: float, device: int | None, pinned: bool, now: float) -> None: ...
    def unloaded(self, name: str) -> bool: ...
    def begin(self, name: str, now: float) -> None: ...
    def end(self, name: str, now: float) -> None: ...
    def choose(self, memory: Literal["vram", "ram"], needed_mb: float, device: int | None = None) -> list[str]: ...
    def expired(self, keep_alive_s: float, now: float) -> list[str]: ...
    def snapshot(self) -> dict[str, dict[str, Any]]: ...

METRICS_NAMES: list[str]
_Metric = Literal[
    "cpu_percent", "memory_used_mb", "gpu_used_memory_mb", "disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps"
]

@final
class MonitorHistory:
    """A bounded ring buffer of machine samples with disk/network I/O rates, trends and predictions."""

    def __new__(cls, capacity: int = 600, clock: Callable[[], float] | None = None) -> MonitorHistory: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def record(self, stats: Mapping[str, Any]) -> dict[str, float | None]: ...
    def io_rates(self) -> dict[str, float | None]: ...
    def history(self, window_s: float | None = None) -> list[dict[str, float | None]]: ...
    def trend(self, metric_name: _Metric, window_s: float | None = None) -> float | None: ...
    def predict(self, metric_name: _Metric, seconds_ahead: float, window_s: float | None = None) -> float | None: ...
# --- Simulator (plugin_scheduling.simulator wraps these) ---

from typing import TypedDict as _TypedDict

_PolicyName = Literal[
    "fifo", "best_effort_fifo", "priority", "fair_share", "deadline", "sjf",
    "round_robin", "backfill", "multifactor", "las",
]

class _SimMetrics(_TypedDict):
    jobs: int
    avg_jct_s: float
    p50_jct_s: float
    p95_jct_s: float
    avg_wait_s: float
    p95_wait_s: float
    avg_slowdown: float
    makespan_s: float
    gpu_utilization: float
    jain_fairness: float
    slo_attainment: float | None
    preemptions: int
    cost: float | None

class _SimJobColumns(_TypedDict):
    job_id: list[str]
    user: list[str | None]
    num_gpu: list[int]
    submit_time: list[float]
    start_time: list[float | None]
    end_time: list[float | None]
    wait_s: list[float]
    jct_s: list[float]
    duration: list[float]
    slowdown: list[float]
    preemptions: list[int]
    deadline_met: list[bool | None]
    cost: list[float]

class _SimTimelineColumns(_TypedDict):
    time: list[float]
    queue_length: list[int]
    busy_gpus: list[int]

@final
class SimTrace:
    """A parsed trace (jobs in submission order), reusable across runs."""
    def __len__(self) -> int: ...
    def to_csv(self) -> str:
        """The trace as CSV text."""

@final
class SimRun:
    """One policy's run."""
    @property
    def policy(self) -> str: ...
    def metrics(self) -> _SimMetrics: ...
    def job_columns(self) -> _SimJobColumns: ...
    def timeline_columns(self) -> _SimTimelineColumns: ...

def _metric_names() -> list[str]:
    """The metrics' names, in report order."""

def _load_trace(trace: str | os.PathLike[str] | Any, columns: Mapping[str, str] | None = None) -> SimTrace:
    """Reads a trace from a path (CSV or JSON lines) or an iterable of row mappings."""

def _generate_trace(
    jobs: int,
    *,
    seed: int | None = None,
    jobs_per_hour: float | None = None,
    gpus: Iterable[tuple[int, float]] | None = None,
    durations: Iterable[tuple[float, float, float]] | None = None,
    users: int | None = None,
    deadline_slack: float | None = None,
) -> SimTrace:
    """A synthetic (Gavel-like) trace; ``None`` keeps a default (seed 0, 30
    jobs/hour, Gavel's GPU and duration mixes, 10 users). Every number is
    checked (``ValueError``/``TypeError`` naming it)."""

def _simulate(
    trace: SimTrace,
    *,
    policy: _PolicyName | Any,
    gpus: int | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    vram_per_gpu_mb: float | None = None,
    ram_per_node_mb: float | None = None,
    node_cost_per_hour: Iterable[float] | None = None,
    preempt: bool | None = None,
    oracle_estimates: bool = True,
    las_thresholds: Iterable[float] | None = None,
    las_promote_knob: float | None = None,
    timeline: bool = True,
    reference: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> SimRun:
    """Runs a trace under a policy (see ``plugin_scheduling.simulate``).

    ``policy="las"`` is Tiresias' discretized 2D-LAS as its simulator's
    ``dlas-gpu`` runs it: queues of attained GPU-seconds cut at
    ``las_thresholds`` (default ``[3250, 7200]``, the Tiresias simulator's);
    at every event every active job is re-packed queue by queue, each queue
    in order of entry (arrival in queue 0, demotion or promotion to the
    end), fit-first; waiting jobs then move behind the running ones of their
    queue. ``las_promote_knob`` (Tiresias' PROMOTEKNOB, default 0 = off, as
    ``dlas-gpu``) is the starvation guard: a job outside queue 0 that has
    waited ``knob`` × the seconds it ran since its last promotion goes back
    to queue 0. ``preempt=False`` turns the re-packing off (no preemption)."""

# ----------------------------------------------------------------- shared ledger

class SharedLedgerError(RuntimeError):
    """A shared ledger file cannot be used: corrupt, of a newer layout, owned by another user or pid namespace, or unreadable (names the path)."""

class _SharedGrantDict(TypedDict):
    pid: int
    process: str
    id: int
    plugin: str
    devices: list[int]
    vram_mb: float
    ram_mb: float
    started: bool
    granted_at: float

class _SharedWaiterDict(TypedDict):
    pid: int
    process: str
    id: int
    plugin: str
    gpu_count: int
    vram_mb: float
    ram_mb: float
    priority: float
    submitted: float
    granted: bool

class _SharedLedgerView(TypedDict):
    path: str
    exists: bool
    policy: str | None
    grants: list[_SharedGrantDict]
    waiters: list[_SharedWaiterDict]

def _shared_ledger_view(name: str) -> _SharedLedgerView:
    """The shared ledger ``name`` (a name under the per-user directory, or a
    path) as every live process holds and waits for it; reads only."""
