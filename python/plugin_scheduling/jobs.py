"""Jobs owned from submission to the end (seeds 003 and 004).

``JobScheduler`` is async-first: ``submit_job`` is a plain call (fast, it only
records the job), ``await start()`` runs the dispatcher in the running event
loop, ``await wait_job(job_id)`` waits for the end. Everything about order
lives in the Rust core (``JobTable``): the pending set in the policy's order,
validated transitions, the admission pass (``policy::admit``), preemption
advice and the SQLite journal. This module runs what the jobs run (async and
sync functions, subprocess ``Command``s) and admits each chosen job against
the machine through a ``ReservationScheduler`` (GPU devices, VRAM, RAM).

Priorities: a number from 0 to 100 (seed 004's scale, the core's). Seed 003's
1–10 scale is accepted too: with ``priority_scale="auto"`` (default) a
priority of at most 10 is read as seed 003's and multiplied by 10 (5 → 50,
NORMAL; 8 → 80), anything above 10 is already on the 0–100 scale; pass
``priority_scale="0-100"`` or ``"1-10"`` to fix the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import heapq
import inspect
import json
import logging
import math
import os
import atexit
import concurrent.futures
import signal
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping, Sequence, cast

from . import _joblogs
from ._core import (
    InvalidTransition,
    JobTable,
    LoadedPlugins,
    JournalError,
    ReservationScheduler,
    ReservationTimeout,
    SimulatedOutOfMemory,
    SystemMonitor,
    UnknownJob,
)

__all__ = [
    "Command",
    "PluginCall",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobEvent",
    "JobScheduler",
    "JobState",
    "JournalError",
    "ResourceRequirements",
    "SchedulingAlgorithm",
    "UnknownJob",
    "default_journal_path",
]

logger = logging.getLogger("plugin_scheduling.jobs")


class JobState(str, enum.Enum):
    """Seed 003's job states (``MIGRATING`` arrives with scale-out)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


_StateName = Literal["QUEUED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]
_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class SchedulingAlgorithm(enum.Enum):
    """Seed 003's algorithms; each value is the core policy that implements it.

    ``COST_OPTIMIZED`` ("prefers cheaper compute nodes"): on one machine every
    job runs on the same node at the same price per second, so the cost of a
    workload is lowest when the machine is never idle while a large head job
    waits: best-effort FIFO (arrival order, anyone who fits goes).
    """

    PRIORITY_BASED = "priority"
    FAIR_SHARE = "fair_share"
    DEADLINE_AWARE = "deadline"
    ROUND_ROBIN = "round_robin"
    SHORTEST_JOB_FIRST = "sjf"
    COST_OPTIMIZED = "best_effort_fifo"


# Seed 004's SCHEDULING_POLICY spellings (``fairshare``) besides the core's names.
_POLICY_ALIASES = {"fairshare": "fair_share", "fair-share": "fair_share", "shortest_job_first": "sjf"}


# Policies that share among accounts: a job without a user is charged to its
# module (seed 003's "equal distribution across modules").
_ACCOUNT_POLICIES = frozenset({"fair_share", "round_robin", "multifactor"})


def _policy_name(policy: Any) -> str:
    if policy is None:
        policy = os.environ.get("SCHEDULING_POLICY") or "fifo"
    if isinstance(policy, SchedulingAlgorithm):
        return policy.value
    if isinstance(policy, str):
        name = policy.strip().lower()
        return _POLICY_ALIASES.get(name, name)
    kind = getattr(policy, "kind", None)
    if isinstance(kind, str):
        return kind
    raise TypeError(
        f"policy must be a policy name, a SchedulingAlgorithm or a policy object whose kind names a core policy, got {policy!r}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceRequirements:
    """What a job needs: CPU cores (accounted by the job scheduler), system RAM,
    GPUs and VRAM per GPU (reserved through the ``ReservationScheduler``)."""

    cpu_cores: float = 1.0
    memory_mb: float = 0.0
    gpu_count: int = 0
    vram_mb: float = 0.0

    def __post_init__(self) -> None:
        for field in ("cpu_cores", "memory_mb", "vram_mb"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"ResourceRequirements.{field} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ResourceRequirements.{field} must be a finite number >= 0, got {value!r}")
        if isinstance(self.gpu_count, bool) or not isinstance(self.gpu_count, int):
            raise TypeError(f"ResourceRequirements.gpu_count must be an int, got {self.gpu_count!r}")
        if self.gpu_count < 0:
            raise ValueError(f"ResourceRequirements.gpu_count must be >= 0, got {self.gpu_count!r}")


_NO_REQUIREMENTS = ResourceRequirements()


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A subprocess job: ``argv`` run without a shell; ``env`` is added to the
    scheduler's environment (plus ``CUDA_VISIBLE_DEVICES`` from the grant)."""

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.argv, (str, bytes)) or not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise TypeError(f"Command.argv must be a non-empty list of str, got {self.argv!r}")
        if self.env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise TypeError(f"Command.env must map str to str, got {self.env!r}")

    def to_json(self) -> str:
        return json.dumps(
            {"argv": list(self.argv), "env": dict(self.env) if self.env else None, "cwd": os.fspath(self.cwd) if self.cwd else None}
        )

    @classmethod
    def from_json(cls, text: str) -> "Command":
        d = json.loads(text)
        return cls(d["argv"], env=d.get("env"), cwd=d.get("cwd"))


@dataclasses.dataclass(frozen=True, slots=True)
class PluginCall:
    """A cjm plugin execution: ``await manager.execute_plugin_async(plugin,
    *args, **kwargs)``. The job scheduler has already admitted the job, so
    give the manager a permissive scheduler (else it admits it twice)."""

    manager: Any
    plugin: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One event: ``type`` is ``"state"``, ``"progress"``, ``"blocked"``,
    ``"deadline_missed"``, ``"preempted"``, ``"retried"`` or ``"evicted"``
    (an idle plugin unloaded for the job ``job_id``; its name in ``reason``)."""

    type: str
    job_id: int
    state: str
    previous: str | None = None
    reason: str | None = None
    progress: float | None = None
    at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A job's record (``get_job``/``wait_job``); ``result`` is what a function
    returned (or a command's exit status)."""

    job_id: int
    module: str
    state: JobState
    priority: float
    user: str | None
    project: str | None
    queue: str
    requirements: ResourceRequirements
    kind: str
    submitted: float
    deadline: float | None
    estimated_duration: float | None
    cost_per_second: float | None
    attempts: int
    preemptions: int
    retries: int
    progress: float
    progress_message: str | None
    error: str | None
    started: float | None
    ended: float | None
    ran_s: float
    #: Wall-clock Unix seconds of the submission, the last start and the end.
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested: bool = False
    result: Any = None


class JobCancelled(Exception):
    """Raised by ``JobContext.checkpoint`` when the job was asked to stop."""


class _Meta:
    """What the ReservationScheduler reads: ``name`` and ``manifest``."""

    __slots__ = ("name", "manifest")

    def __init__(self, name: str, gpu_count: int, vram_mb: float, memory_mb: float) -> None:
        resources: dict[str, Any] = {"min_system_ram_mb": memory_mb}
        if gpu_count > 0:
            resources.update(requires_gpu=True, gpu_count=gpu_count, min_gpu_vram_mb=vram_mb)
        self.name = name
        self.manifest = {"resources": resources}


class JobContext:
    """What a job's function receives: ``progress(fraction, message)``, the
    ``grant``, and cooperative pause/cancel checks (``await checkpoint()`` in
    a coroutine, ``checkpoint_sync()`` in a thread)."""

    def __init__(self, scheduler: "JobScheduler", job_id: int, module: str, grant: Any) -> None:
        self.job_id = job_id
        self.module = module
        self.grant = grant
        self._scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        self._resume = asyncio.Event()
        self._resume.set()
        self._resume_thread = threading.Event()
        self._resume_thread.set()
        self.cancel_requested = False
        self._in_thread = False

    @property
    def paused(self) -> bool:
        return not self._resume_thread.is_set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0–1); safe from a worker thread."""
        if threading.get_ident() == self._scheduler._loop_thread:
            self._scheduler._progress(self.job_id, fraction, message)
        else:
            self._loop.call_soon_threadsafe(self._scheduler._progress, self.job_id, fraction, message)

    async def checkpoint(self) -> None:
        """Waits while paused; raises ``JobCancelled`` once asked to stop."""
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was asked to stop")
        await self._resume.wait()
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was asked to stop")

    def checkpoint_sync(self) -> None:
        """``checkpoint`` for a function running in a worker thread."""
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was asked to stop")
        while not self._resume_thread.wait(0.1):
            if self.cancel_requested:
                break
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was asked to stop")

    async def sleep(self, seconds: float) -> None:
        """Sleeps ``seconds`` of running time (paused time does not count)."""
        left = seconds
        while left > 0:
            await self.checkpoint()
            step = min(left, 0.05)
            await asyncio.sleep(step)
            left -= step
        await self.checkpoint()

    def _pause(self) -> None:
        self._resume.clear()
        self._resume_thread.clear()

    def _unpause(self) -> None:
        self._resume.set()
        self._resume_thread.set()

    def _stop(self) -> None:
        self.cancel_requested = True
        self._unpause()


class _AdoptedProcess:
    """A command's process that survived the previous scheduler and was
    adopted: not a child of this one (its exit status cannot be known)."""

    __slots__ = ("pid", "start_time")

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid = pid
        self.start_time = start_time


class _Runtime:
    """Python-side state of a job being run."""

    __slots__ = (
        "ctx", "proc", "task", "stop", "stop_reason", "lease", "grant", "quota", "result", "oom", "stopper"
    )

    def __init__(self) -> None:
        self.ctx: JobContext | None = None
        self.proc: asyncio.subprocess.Process | _AdoptedProcess | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop: str | None = None  # "cancel" | "preempt" | "shutdown"
        self.stop_reason: str | None = None
        self.lease: Any = None
        self.grant: Any = None
        self.quota: bool = False
        self.result: Any = None
        self.oom: str | None = None
        self.stopper: asyncio.Task[None] | None = None


class _Subscription:
    """``async for event in scheduler.events()``: a bounded queue; events that
    do not fit are dropped and counted (``dropped``)."""

    def __init__(
        self, scheduler: "JobScheduler", job_id: int | None, maxsize: int, accept: Callable[[JobEvent], bool] | None = None
    ) -> None:
        self._scheduler = scheduler
        self.job_id = job_id
        self._accept = accept
        self.queue: asyncio.Queue[JobEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        scheduler._subscribers.add(self)

    def _offer(self, event: JobEvent) -> None:
        if self.job_id is not None and event.job_id != self.job_id:
            return
        if self._accept is not None:
            # Filtered before queueing: events this subscriber may not have
            # neither take its queue's room nor count as its drops.
            try:
                wanted = self._accept(event)
            except Exception:  # fail closed, and never into the scheduler's transition
                logger.exception("event filter %r failed on %s event of job %d: not delivered", self._accept, event.type, event.job_id)
                return
            if not wanted:
                return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self._scheduler._event_drops += 1

    def __aiter__(self) -> "_Subscription":
        return self

    async def __anext__(self) -> JobEvent:
        event = await self.queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def drain(self) -> list[JobEvent]:
        """The events queued now, without waiting."""
        out = []
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if event is not None:
                out.append(event)
        return out

    def close(self) -> None:
        self._scheduler._subscribers.discard(self)

    async def aclose(self) -> None:
        self.close()


_OOM_MARKERS = ("cuda out of memory", "outofmemoryerror", "out of memory", "cuda_error_out_of_memory", "memoryerror")


def _oom_text(text: str) -> bool:
    low = text.lower()
    return any(m in low for m in _OOM_MARKERS)


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/plugin-scheduling/jobs.db`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "plugin-scheduling" / "jobs.db"


_DEFAULT = object()

_UNKNOWN_EXIT = "the adopted process ended; its exit status cannot be known (it is not a child of this scheduler)"

#: How long recovery waits for the previous incarnation's killed processes to go.
_KILL_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1
#: The environment variable that marks a command's processes as a job's (recovery finds them by it).
_MARKER_VAR = "PLUGIN_SCHEDULING_JOB"


def _prctl() -> Any:
    """libc's ``prctl``, resolved in the parent (the child only calls it)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_PRCTL: Any = None


def _die_with_parent() -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes a command die with the scheduler.

    Why ``PR_SET_PDEATHSIG`` rather than a supervisor process: it is armed
    in the child *before* ``exec``, so there is no moment at which the
    command runs unprotected (a supervisor learns about a child only after
    it was spawned, and is one more process per scheduler that can itself
    be killed); it costs nothing per job. Its caveats, and why they hold
    here: (1) it fires when the *thread* that forked the child ends, not
    the process. asyncio forks in the event loop's thread
    (``subprocess.Popen`` runs inside ``loop.subprocess_exec``; the child
    watcher's threads only wait), so the commands die when the loop's
    thread ends -- which is the scheduler's end (``asyncio.run`` cancels
    the job tasks, which kill their commands, first anyway). (2) A parent
    that died before ``prctl`` ran would never signal: the child checks
    ``getppid()`` after arming and kills itself. (3) It reaches only the
    direct child: descendants in the job's process group outlive a crashed
    scheduler until the recovering one kills the group (pgid and start time
    are in the journal, the marker in their environment). The function
    runs between fork and exec, so it does no more than two system calls
    through a ``prctl`` resolved beforehand (no import, no lock)."""
    global _PRCTL
    if _PRCTL is None:
        _PRCTL = _prctl() or False
    prctl = _PRCTL
    if not prctl:
        return None
    parent = os.getpid()
    sig = int(signal.SIGKILL)

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the scheduler died before prctl
            os.kill(os.getpid(), sig)

    return arm


def _kill_survivors(pgid: int | None, survivors: Sequence[tuple[int, int]]) -> None:
    """SIGKILL to each survivor that still is the process recorded (pid and
    start time, checked through a pidfd so a reused pid is never hit), then
    to the group (when the plan found it is the job's)."""
    for pid, start in survivors:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:  # no pidfds (Linux < 5.3): check, then signal by pid
            if JobTable.proc_start_time(pid) == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            continue
        try:
            if JobTable.proc_start_time(pid) == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


async def _wait_gone(proc: _AdoptedProcess) -> None:
    """Waits for a process that is not our child to end (pidfd readable on
    exit; polling ``/proc`` where pidfds are missing)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    except OSError:
        while JobTable.proc_start_time(proc.pid) == proc.start_time:
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        if JobTable.proc_start_time(proc.pid) != proc.start_time:
            return  # gone (or another process now) before the pidfd was opened
        def gone() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, gone)
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


#: Finished jobs kept by default: the newest 10,000, none older than 7 days.
DEFAULT_RETENTION_JOBS = 10_000
DEFAULT_RETENTION_AGE_S = 7 * 24 * 3600.0


def _number(field: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as a float, or a ``TypeError``/``ValueError`` naming ``field``
    (the core checks the range)."""
    if type(value) is float:  # the common case, first
        return value
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{field} is too large, got {value!r}") from None


def _queue_size(field: str, value: Any) -> int:
    """An event queue's bound: an int >= 1 (``asyncio.Queue`` takes 0 or less
    as "unbounded", which a slow subscriber would turn into unbounded memory)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{field} must be an int >= 1, got {value!r}")
    return value


def _count(field: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` as an int that the binding can carry (0 … 2**32-1), or an
    error naming ``field`` (the core checks its own, smaller, limits)."""
    if type(value) is int and 0 <= value <= 0xFFFF_FFFF:  # the common case, first
        return value
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{field} must be an int between 0 and {0xFFFF_FFFF}, got {value!r}")
    return value


def _text(field: str, value: Any, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {value!r}")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid text (no lone surrogates), got {value!r}") from None
    return value


class _JournalWriter:
    """The background writer of batched journals: one daemon thread for every
    ``JobScheduler(durability="batched")`` of the process, started by the
    first that needs it (never at import), that commits each scheduler's
    buffered writes every ``flush_interval``; at interpreter exit everything
    is committed. A forked child starts with none (the parent's schedulers,
    connections and thread are not the child's)."""

    def __init__(self) -> None:
        self._setup()
        self._hooks = False

    def _setup(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._schedulers: "weakref.WeakSet[JobScheduler]" = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, scheduler: "JobScheduler") -> None:
        with self._cond:
            if not self._hooks:
                self._hooks = True
                atexit.register(self.flush_all)
                os.register_at_fork(after_in_child=self._setup)
            self._schedulers.add(scheduler)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="plugin-scheduling-journal-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def remove(self, scheduler: "JobScheduler") -> None:
        with self._cond:
            self._schedulers.discard(scheduler)
            self._cond.notify_all()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                if self._thread is not me or self._pid != os.getpid():
                    return
                schedulers = list(self._schedulers)
                if not schedulers:
                    self._thread = None
                    return
                interval = min(s._flush_interval for s in schedulers)
                del schedulers
                self._cond.wait(interval)
                schedulers = list(self._schedulers)
            for s in schedulers:
                s._commit_buffered()
            del schedulers

    def flush_all(self) -> None:
        """Commits every scheduler's buffered writes (interpreter exit)."""
        if self._pid != os.getpid():
            return
        with self._cond:
            schedulers = list(self._schedulers)
        for s in schedulers:
            s._commit_buffered()


_WRITER = _JournalWriter()


class JobScheduler:
    """Jobs with a lifecycle, a journal, events, preemption and OOM retry.

    ``policy``: a core policy name (``"fifo"``, ``"priority"``, ...), a
    ``SchedulingAlgorithm``, or a policy object whose ``kind`` names one; by
    default ``$SCHEDULING_POLICY`` or ``"fifo"``. ``journal``: a path, the
    default ``$XDG_STATE_HOME/plugin-scheduling/jobs.db``, or ``None`` (in
    memory). ``quotas``: an object with ``check_quota``/``allocate_quota``/
    ``release_quota(project_id, resources, job_type)`` (seed 004's
    ``QuotaProvider``). ``reservations``: the ``ReservationScheduler`` that
    admits jobs against the machine (default: a new one, ``timeout=0``);
    ``stats_provider``: async stats (default ``SystemMonitor().snapshot_async``).
    ``clock``: a callable returning seconds (tests drive time with it).
    ``release_on_pause``: a paused job gives its GPU/RAM reservation back and
    takes it again on resume (it stays PAUSED until the reservation fits
    again); by default it keeps it. CPU cores stay counted either way.
    ``unload``: the host's way to unload a plugin by name (e.g. a cjm
    manager's ``unload_plugin``; ``track_manager`` sets it): when a job is
    blocked on VRAM or RAM that idle loaded plugins hold, the least recently
    used idle ones are unloaded, only as many as needed, never an active or
    pinned one. ``keep_alive_s``: idle plugins are unloaded after this long.

    Durability (``journal`` set): ``durability="batched"`` (default): writes
    are buffered and a background writer thread (one per process, started by
    the first scheduler that needs it) commits them every ``flush_interval``
    seconds (0.05 by default), whether or not an event loop runs; ``flush()``,
    ``close()`` and interpreter exit commit at once. A SIGKILL loses at most
    the submissions and transitions acknowledged in the last
    ``flush_interval`` (plus the time of one commit); their ids are never
    handed to another job (ids are reserved in durable blocks).
    ``durability="sync"``: every submission and transition is committed
    before the call returns (a SIGKILL loses nothing acknowledged). Commits
    use SQLite WAL with ``synchronous=NORMAL``: durable across a crash of the
    process, not across a power loss of the machine (submit rates of each:
    ``benches/bench_jobs.py``, the performance page of the docs).

    One owner per journal: constructing a second scheduler (in this process
    or another) on a journal a live scheduler owns raises ``JournalError``
    naming the path and the owner's pid; a dead owner (its pid gone, or
    reused by a process with another start time) is taken over, logged.
    ``close()`` gives the journal up.

    Refused at ``submit_job`` with a ``ValueError`` naming the field, the need
    and the capacity: a need the machine can never meet (CPU cores, memory,
    GPU count, VRAM per GPU), a queue that can never run it, a project quota
    it can never fit; malformed or absurd figures (NaN, negative, beyond the
    core's ``limits``). Finished jobs are kept ``retention_jobs`` (newest
    10,000 by default) and ``retention_age_s`` (7 days) at most, in memory
    and in the journal (None: no bound).

    At most one copy of a job, across a crash: a ``Command`` runs in its own
    process group, and its pid, process start time and group are in the
    journal (committed at once, whatever the ``durability``) before it can
    do anything. ``recovery_mode="kill"`` (default):
    the commands die with the scheduler (``PR_SET_PDEATHSIG``), and a
    scheduler opening the journal after a crash kills whatever of them
    survived (their descendants) before it requeues anything -- and only
    after it has taken the journal as its one owner (below): a scheduler
    refused because a live one owns the journal sends no signal.
    ``recovery_mode="adopt"``: the commands outlive the scheduler (their
    output goes straight to their files, not to a pipe); the
    recovering scheduler keeps a survivor running, its job RUNNING with its
    cores, quota and reservation taken again, and waits for it: its exit
    status cannot be known (it is not this scheduler's child), so the job
    ends COMPLETED with ``result`` None and says so in its history. A pid
    is matched with its start time, so a reused pid is never mistaken for
    a job's process. A command's output is kept (with a journal) in
    ``<journal>.logs/<job_id>.{stdout,stderr}.log``, bounded by
    ``log_limit_bytes`` per stream (see ``_joblogs``), read back with
    ``job_logs``. With a quota provider that records holders
    (``LocalQuotaProvider`` on SQLite, ``supports_holds``), what a job held
    is released exactly once at recovery (kept for an adopted job), in the
    quota thread when the scheduler is made inside a running event loop.
    """

    def __init__(
        self,
        policy: Any = None,
        *,
        journal: Any = _DEFAULT,
        quotas: Any = None,
        reservations: Any = None,
        stats_provider: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        clock: Callable[[], float] | None = None,
        cpu_cores: float | None = None,
        max_retries: int = 0,
        oom_growth: float = 1.5,
        cancel_grace_s: float = 5.0,
        preempt_grace_s: float = 5.0,
        poll_interval: float = 1.0,
        event_queue_size: int = 1000,
        priority_scale: str = "auto",
        journal_batch: int = 1024,
        flush_interval: float = 0.05,
        release_on_pause: bool = False,
        unload: Callable[[str], Any] | None = None,
        keep_alive_s: float | None = None,
        history: Any = None,
        history_interval: float = 1.0,
        durability: str = "batched",
        retention_jobs: int | None = DEFAULT_RETENTION_JOBS,
        retention_age_s: float | None = DEFAULT_RETENTION_AGE_S,
        recovery_mode: str = "kill",
        log_limit_bytes: int = _joblogs.DEFAULT_LIMIT,
    ) -> None:
        self._policy_name = _policy_name(policy)
        self._policy_obj = policy
        if durability not in ("batched", "sync"):
            raise ValueError(f"durability must be 'batched' or 'sync', got {durability!r}")
        if recovery_mode not in ("kill", "adopt"):
            raise ValueError(f"recovery_mode must be 'kill' or 'adopt', got {recovery_mode!r}")
        self._recovery_mode: Literal["kill", "adopt"] = "adopt" if recovery_mode == "adopt" else "kill"
        flush = _number("flush_interval", flush_interval)
        if flush is None or not (math.isfinite(flush) and 0 < flush <= 3600):
            raise ValueError(f"flush_interval must be a number of seconds in (0, 3600], got {flush_interval!r}")
        keep_jobs = _count("retention_jobs", retention_jobs, optional=True)
        keep_age = _number("retention_age_s", retention_age_s, optional=True)
        if priority_scale not in ("auto", "0-100", "1-10"):
            raise ValueError(f"priority_scale must be 'auto', '0-100' or '1-10', got {priority_scale!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (oom_growth >= 1.0 and math.isfinite(oom_growth)):
            raise ValueError(f"oom_growth must be a finite number >= 1, got {oom_growth!r}")
        for name, value in (("cancel_grace_s", cancel_grace_s), ("preempt_grace_s", preempt_grace_s), ("poll_interval", poll_interval)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if keep_alive_s is not None and not (math.isfinite(keep_alive_s) and keep_alive_s >= 0):
            raise ValueError(f"keep_alive_s must be a finite number of seconds >= 0, got {keep_alive_s!r}")
        cores = _number("cpu_cores", cpu_cores, optional=True)
        if cores is not None and not (math.isfinite(cores) and cores > 0):
            raise ValueError(f"cpu_cores must be a finite number > 0, got {cpu_cores!r}")
        # Checked before the journal is opened (and owned): a bad value must not leave it held.
        if isinstance(log_limit_bytes, bool) or not isinstance(log_limit_bytes, int) or log_limit_bytes < 1024:
            raise ValueError(f"log_limit_bytes must be an int >= 1024, got {log_limit_bytes!r}")
        queue_size = _queue_size("event_queue_size", event_queue_size)
        if journal is _DEFAULT:
            journal = default_journal_path()
        self._pid = os.getpid()
        self._closed = False
        self._flush_interval = flush
        self._flush_failed_at: float | None = None
        self._table = JobTable(
            self._policy_name,
            None if journal is None else os.fspath(journal),
            clock,
            journal_batch,
            own=True,
            durability=durability,
            retention_jobs=keep_jobs,
            retention_age_s=keep_age,
        )
        # The table owns the journal now (a live owner was refused above,
        # before anything below could signal a process): on any failure
        # below it is given up again.
        try:
            took = self._table.took_over
            if took is not None:
                logger.warning(
                    "job journal %s: took over from its previous owner, pid %d (no longer running since it took the journal at %.0f)",
                    journal,
                    took["pid"],
                    took["since"],
                )
            self._journal_id = self._table.journal_id()
            # The previous incarnation's processes are killed (or adopted)
            # before any job is requeued, so nothing can run twice.
            self._adopt: dict[int, _AdoptedProcess] = self._recover_processes() if journal is not None else {}
            if journal is not None:
                self._recovery = self._table.recover_adopting(sorted(self._adopt))
                # A survivor of a job that has ended meanwhile (its end was
                # journaled, its process had not gone yet) is not adopted: killed.
                stray = sorted(set(self._adopt) - set(self._recovery["adopted"]))
                for job_id in stray:
                    self._adopt.pop(job_id)
                self._kill_until_gone(stray)
            else:
                self._recovery = {"queued": [], "requeued": [], "failed": [], "adopted": []}
            if quotas is None and os.environ.get("QUOTA_PROVIDER"):
                from .quotas import quota_provider_from_env

                quotas = quota_provider_from_env()  # seed 004's configuration
            self._quotas = quotas
            self._holds = self._journal_id is not None and bool(getattr(quotas, "supports_holds", False))
            self._quota_pool: concurrent.futures.ThreadPoolExecutor | None = None
            self._quota_pool_pid = 0
            self._adopted_holders = self._recover_quota()
        except BaseException:
            with contextlib.suppress(Exception):
                self._table.close()
            raise
        self._scale = priority_scale
        self._reservations = reservations if reservations is not None else ReservationScheduler(timeout=0.0)
        self._stats_provider = stats_provider
        self._cpu_cores = cores if cores is not None else float(os.cpu_count() or 1)
        self._max_retries = max_retries
        self._oom_growth = float(oom_growth)
        self._log_limit = log_limit_bytes
        self._cancel_grace = float(cancel_grace_s)
        self._preempt_grace = float(preempt_grace_s)
        self._poll = float(poll_interval)
        self._event_queue_size = queue_size
        self._release_on_pause = bool(release_on_pause)
        self._resume_pending: set[int] = set()
        self._plugins = LoadedPlugins()
        self._unload = unload
        self._keep_alive = keep_alive_s
        self._explained: Mapping[str, Any] | None = None
        self._evicting: set[asyncio.Task[None]] = set()
        self._history = history
        self._history_interval = float(history_interval)
        self._history_at: float | None = None
        self._functions: dict[int, Any] = {}
        self._results: dict[int, Any] = {}
        self._pass_jobs: dict[int, Any] | None = None
        self._registry: dict[str, Callable[..., Any]] = {}
        self._runtime: dict[int, _Runtime] = {}
        self._waiters: dict[int, list[asyncio.Future[Job]]] = {}
        self._subscribers: set[_Subscription] = set()
        self._callbacks: list[tuple[Callable[[JobEvent], Any], int | None]] = []
        self._event_drops = 0
        self._block_reasons: dict[int, str] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._missed: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._loop_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_stats: Mapping[str, Any] | None = None
        self._last_pass: dict[str, Any] = {"scheduled_count": 0, "remaining_pending": 0}
        self._refusal: str | None = None
        self._quota_refused = False
        self._took: int | None = None
        self._machine_known: tuple[Any, ...] | None = None
        self._poisoned: dict[int, str] = {}
        self._quota_checks: dict[tuple[Any, ...], Any] = {}
        self._quota_wants: dict[int, Any] = {}
        self._quota_held: dict[int, Any] = {}
        self._table.set_machine(cpu_cores=self._cpu_cores)
        if journal is not None and durability == "batched":
            _WRITER.add(self)
        for job_id in self._recovery["queued"] + self._recovery["requeued"] + self._recovery["adopted"]:
            job = self._table.job(job_id)
            if job["deadline"] is not None:
                heapq.heappush(self._deadlines, (job["deadline"], job_id))

    # ------------------------------------------------------------------ setup

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Registers a function by name: jobs submitted with ``run=name`` (or
        with ``module=name`` and no ``run``) run it, and are rerun after a crash."""
        if not callable(fn):
            raise TypeError(f"register({name!r}, fn): fn must be callable, got {fn!r}")
        self._registry[name] = fn

    def add_queue(self, name: str, priority: int = 0, max_concurrent_jobs: int | None = None) -> None:
        """A named queue: every job of a higher-priority queue is considered
        before any of a lower one; at most ``max_concurrent_jobs`` run at once."""
        name = cast(str, _text("name", name, optional=False))
        if isinstance(priority, bool) or not isinstance(priority, int) or not -(2**63) <= priority < 2**63:
            raise ValueError(f"priority must be an int (64-bit), got {priority!r}")
        limit = _count("max_concurrent_jobs", max_concurrent_jobs, optional=True)
        self._table.add_queue(name, priority, limit)

    @property
    def policy(self) -> str:
        return self._policy_name

    @property
    def journal_path(self) -> str | None:
        return self._table.journal_path

    @property
    def recovery(self) -> dict[str, list[int]]:
        """What the journal gave back at construction: ``queued``, ``requeued``,
        ``failed`` and ``adopted`` ids (``recovery_mode="adopt"``: jobs whose
        process survived and runs on, RUNNING again)."""
        return self._recovery

    @property
    def recovery_mode(self) -> str:
        return self._recovery_mode

    # --------------------------------------------------------------- recovery

    def _recover_processes(self) -> dict[int, _AdoptedProcess]:
        """Kills (``recovery_mode="kill"``) the processes the previous
        incarnation left running, and waits until they are gone; in adopt
        mode keeps those whose leader still runs. The adoption candidates, by job.

        Runs only once this scheduler owns the journal (a live owner was
        refused at ``JobTable(own=True)``), before it spawns anything: every
        process record is the previous incarnation's."""
        adopt: dict[int, _AdoptedProcess] = {}
        kill: list[int] = []
        for d in self._table.recovery_plan(self._recovery_mode):
            job_id, verdict = d["job_id"], d["verdict"]
            if verdict == "adopt":
                adopt[job_id] = _AdoptedProcess(d["pid"], d["start_time"])
                logger.warning("job %d: adopting its process %d, which survived the previous scheduler", job_id, d["pid"])
            elif verdict == "kill":
                kill.append(job_id)
                logger.warning(
                    "job %d: killing %d process(es) left by the previous scheduler (group %s) before it is rerun",
                    job_id, len(d["survivors"]), d["pgid"],
                )
            else:
                self._table.process_ended(job_id)
        self._kill_until_gone(kill)
        return adopt

    def _kill_until_gone(self, jobs: Sequence[int]) -> None:
        """SIGKILL to what is left of these jobs' processes until nothing is
        (``_KILL_WAIT_S`` at most, else ``JournalError``: they are not rerun)."""
        left = set(jobs)
        deadline = time.monotonic() + _KILL_WAIT_S
        while left:
            plan = [d for d in self._table.recovery_plan("kill") if d["job_id"] in left]
            left &= {d["job_id"] for d in plan}  # no record, no marker: nothing left of it
            for d in plan:
                if d["verdict"] == "kill":
                    _kill_survivors(d["pgid"], d["survivors"])
                else:
                    self._table.process_ended(d["job_id"])
                    left.discard(d["job_id"])
            if not left:
                return
            if time.monotonic() > deadline:
                raise JournalError(
                    f"job journal {self._table.journal_path}: processes of jobs {sorted(left)} survive SIGKILL after "
                    f"{_KILL_WAIT_S:g} s; refusing to rerun them"
                )
            time.sleep(0.005)

    def _holder(self, job_id: int) -> str | None:
        """Job ``job_id``'s quota holder (a provider with ``supports_holds``
        and a journal): its allocations are recorded under it, so recovery
        releases them exactly once."""
        return JobTable.marker_token(self._journal_id, job_id) if self._holds and self._journal_id is not None else None

    def _recover_quota(self) -> "concurrent.futures.Future[dict[int, str]] | None":
        """Releases, exactly once, what the previous incarnation's jobs held
        in the quota store (a provider with ``supports_holds``), except what
        adopted jobs hold. The calls run in the quota thread, ahead of any
        allocation this scheduler makes; made outside an event loop, the
        constructor waits for them, inside a running one it does not block
        the loop (``start()`` waits). The result: the adopted jobs' holders."""
        quotas, journal_id = self._quotas, self._journal_id
        if not self._holds or journal_id is None:
            return None
        adopted = sorted(self._adopt)
        prefix = f"{journal_id}:"

        def recover() -> dict[int, str]:
            holders = quotas.quota_holds(prefix)
            for holder in JobTable.holders_to_release(holders, journal_id, adopted):
                if quotas.release_quota_held(holder):
                    logger.warning("quota holder %s released at recovery (its job no longer runs)", holder)
            kept = {int(h[len(prefix):]): h for h in holders if h[len(prefix):].isdigit()}
            return {job_id: h for job_id, h in kept.items() if job_id in adopted}

        future = self._quota_executor().submit(recover)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop to block: done before the constructor returns
            future.result()
            return future

        def failed(f: "concurrent.futures.Future[dict[int, str]]") -> None:
            if not f.cancelled() and f.exception() is not None:
                logger.error("job journal %s: releasing the previous incarnation's quota failed: %r", self.journal_path, f.exception())

        future.add_done_callback(failed)
        return future

    async def _recovered_holders(self) -> dict[int, str]:
        """The adopted jobs' quota holders, once the quota recovery is done."""
        future = self._adopted_holders
        return {} if future is None else await asyncio.wrap_future(future)

    @property
    def reservations(self) -> Any:
        return self._reservations

    # ----------------------------------------------------------------- submit

    def _priority(self, priority: Any) -> float:
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise TypeError(f"priority must be a number (0-100, or seed 003's 1-10), got {priority!r}")
        try:
            p = float(priority)
        except OverflowError:
            raise ValueError(f"priority must be between 0 and 100, got {priority!r}") from None
        if not math.isfinite(p) or p < 0:
            raise ValueError(f"priority must be between 0 and 100, got {priority!r}")
        if self._scale == "1-10" or (self._scale == "auto" and p <= 10):
            if p > 10:
                raise ValueError(f"priority must be between 1 and 10 (priority_scale='1-10'), got {priority!r}")
            return p * 10.0
        if p > 100:
            raise ValueError(f"priority must be between 0 and 100, got {priority!r}")
        return p

    def submit_job(
        self,
        module: str,
        priority: float = 5,
        deadline: float | None = None,
        requirements: ResourceRequirements | None = None,
        estimated_duration: float | None = None,
        cost_per_second: float | None = None,
        user: str | None = None,
        project: str | None = None,
        queue: str | None = None,
        run: Any = None,
        max_retries: int | None = None,
    ) -> int:
        """Queues a job; its id. ``deadline``: seconds from now. ``run``: an
        async or sync function (called with a ``JobContext``), a ``Command``,
        the name of a registered function, or None (the function registered
        as ``module``, else a simulated job lasting ``estimated_duration``)."""
        if self._closed:
            raise RuntimeError("submit_job: this JobScheduler is closed")
        module = cast(str, _text("module", module, optional=False))
        req = requirements if requirements is not None else _NO_REQUIREMENTS
        if not isinstance(req, ResourceRequirements):
            raise TypeError(f"requirements must be a ResourceRequirements, got {req!r}")
        user = _text("user", user)
        project = _text("project", project)
        queue = _text("queue", queue)
        deadline = _number("deadline", deadline, optional=True)
        estimated_duration = _number("estimated_duration", estimated_duration, optional=True)
        cost_per_second = _number("cost_per_second", cost_per_second, optional=True)
        gpu_count = cast(int, _count("requirements.gpu_count", req.gpu_count))
        if user is None and self._policy_name in _ACCOUNT_POLICIES:
            user = module  # seed 003: fair share (and turns) across modules
        retries = self._max_retries if max_retries is None else max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        retries = cast(int, _count("max_retries", retries))
        fn = None
        if run is None:
            if module in self._registry:
                kind, payload = "registered", module
            else:
                kind, payload = "simulated", ""
        elif isinstance(run, Command):
            kind, payload = "command", run.to_json()
        elif isinstance(run, PluginCall):
            kind, payload, fn = "plugin", run.plugin, run
        elif isinstance(run, str):
            if run not in self._registry:
                raise ValueError(f"run={run!r} names no registered function (register it with scheduler.register first)")
            kind, payload = "registered", run
        elif callable(run):
            kind, payload, fn = "function", "", run
        else:
            raise TypeError(f"run must be a function, a Command, a PluginCall, a registered name or None, got {run!r}")
        if self._machine_known is None:
            self._learn_machine(None)
        if self._quotas is not None and project is not None:
            detail = getattr(self._quotas, "check_quota_detail", None)
            if detail is not None:
                decision = detail(project, _quota_resources(req.cpu_cores, req.memory_mb, gpu_count, req.vram_mb), QUOTA_JOB_TYPE)
                if getattr(decision, "never_fits", False):
                    raise ValueError(f"job {module!r} can never fit the quota of project {project!r}: {decision.reason}")
        job_id = self._table.submit(
            module,
            self._priority(priority),
            deadline,
            estimated_duration,
            cost_per_second,
            user,
            project,
            queue,
            req.cpu_cores,
            req.memory_mb,
            gpu_count,
            req.vram_mb,
            kind,
            payload,
            retries,
        )
        if fn is not None:
            self._functions[job_id] = fn
        if deadline is not None:
            heapq.heappush(self._deadlines, (self._table.now() + deadline, job_id))
        if self._subscribers or self._callbacks:
            self._emit(JobEvent("state", job_id, "QUEUED", None, "submitted", at=self._table.now()))
        self._poke()
        return job_id

    # ------------------------------------------------------------------ views

    def get_job(self, job_id: int) -> Job:
        """The job's record (``UnknownJob``, a ``KeyError``, if there is none)."""
        d = self._table.job(job_id)
        rt = self._runtime.get(job_id)
        r = d["requirements"]
        return Job(
            job_id=d["job_id"],
            module=d["module"],
            state=JobState(d["state"]),
            priority=d["priority"],
            user=d["user"],
            project=d["project"],
            queue=d["queue"],
            requirements=ResourceRequirements(r["cpu_cores"], r["memory_mb"], r["gpu_count"], r["vram_mb"]),
            kind=d["kind"],
            submitted=d["submitted"],
            deadline=d["deadline"],
            estimated_duration=d["estimated_duration"],
            cost_per_second=d["cost_per_second"],
            attempts=d["attempts"],
            preemptions=d["preemptions"],
            retries=d["retries"],
            progress=d["progress"],
            progress_message=d["progress_message"],
            error=d["error"],
            started=d["started"],
            ended=d["ended"],
            ran_s=d["ran_s"],
            submitted_at=d["submitted_at"],
            started_at=d["started_at"],
            ended_at=d["ended_at"],
            cancel_requested=bool(rt is not None and rt.stop == "cancel"),
            result=self._results.get(job_id),
        )

    def list_jobs(self, state: JobState | str | None = None) -> list[Job]:
        name = state.value if isinstance(state, JobState) else state
        return [self.get_job(d["job_id"]) for d in self._table.records(cast("_StateName | None", name))]

    def pending_jobs(self, limit: int | None = None) -> list[int]:
        """Pending ids in the order the policy considers them now."""
        return self._table.pending() if limit is None else self._table.pending(limit)

    def job_logs(self, job_id: int, tail: int | None = None) -> dict[str, Any] | None:
        """The output a ``Command`` job wrote: ``{"stdout", "stderr",
        "truncated"}`` (the last ``tail`` lines of each stream, all that is
        kept when None), or None when the job has none kept (not a command,
        or no journal). Kept in ``<journal>.logs/<job_id>.{stdout,stderr}.log``,
        bounded by ``log_limit_bytes`` per stream (one rotated part more),
        across restarts. ``UnknownJob`` for an unknown id."""
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
            raise ValueError(f"tail must be an int >= 1 or None, got {tail!r}")
        job = self._table.job(job_id)
        journal = self._table.journal_path
        if job["kind"] != "command" or journal is None:
            return None
        d = _joblogs.directory(journal)
        out, t1 = _joblogs.read(d, job_id, "stdout", tail)
        err, t2 = _joblogs.read(d, job_id, "stderr", tail)
        return {"stdout": out, "stderr": err, "truncated": t1 or t2}

    # ----------------------------------------------------- read access

    def job_record(self, job_id: int) -> dict[str, Any]:
        """The table's raw record of a job (a dict; times on the table's
        clock, ``submitted_unix`` in Unix seconds). ``UnknownJob``."""
        return dict(self._table.job(job_id))

    def job_records(self, state: JobState | str | None = None) -> list[dict[str, Any]]:
        """Raw records of all jobs (or those in ``state``), by id."""
        name = None if state is None else (state.value if isinstance(state, JobState) else str(state).upper())
        return list(self._table.records(name))  # type: ignore[arg-type]

    def clock(self) -> float:
        """The table's clock now (the clock of ``job_record``'s times)."""
        return float(self._table.now())

    def describe_order(self, job_id: int) -> str:
        """Why the policy puts a pending job where it is."""
        return str(self._table.describe(job_id))

    def job_counts(self) -> dict[str, int]:
        """Jobs per state name."""
        return {str(k): int(v) for k, v in self._table.counts().items()}

    def capacity(self) -> tuple[float, int, float]:
        """``(cpu_cores, gpus, memory_mb)`` of the machine as last read
        (GPUs and memory 0 before the first reading)."""
        return self._capacity()

    def last_stats(self) -> Mapping[str, Any]:
        """The last machine reading the dispatcher took (empty before one)."""
        return self._last_stats or {}

    @property
    def quotas(self) -> Any:
        """The quota provider (None without one)."""
        return self._quotas

    @property
    def event_drops(self) -> int:
        """Events dropped because a subscriber was slow."""
        return int(self._event_drops)

    def _plan_totals(self) -> tuple[float, int, float | None, float | None]:
        stats = self._last_stats or {}
        devices = (stats.get("details") or {}).get("gpus") or []
        mem = stats.get("memory_total_mb")
        vram = [g.get("memory_total_mb") for g in devices]
        vram_total = float(sum(vram)) if vram and all(isinstance(v, (int, float)) for v in vram) else None
        return self._cpu_cores, len(devices), (float(mem) if mem else None), vram_total

    def queue_plan(self, limit: int = 500) -> list[dict[str, Any]]:
        """The first ``limit`` pending jobs in the policy's order, each
        ``{"job_id", "position", "ahead", "estimated_start"}``: who is ahead
        and when it should start (Unix seconds; None when unknown), planned
        by the core (``jobs::plan``) per resource -- CPU cores, memory, GPUs,
        VRAM -- from the running jobs' estimated ends. Unknown from the first
        job that needs room only a job without an estimate would free, or
        more than the machine has."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        cpu, gpus, mem, vram = self._plan_totals()
        return [
            {"job_id": j, "position": pos, "ahead": pos - 1, "estimated_start": est}
            for j, pos, est in self._table.plan(cpu, gpus, mem, vram, limit)
        ]

    def explain_job(self, job_id: int) -> dict[str, Any]:
        """Why job ``job_id`` is where it is: ``{"job_id", "state",
        "position", "ahead", "estimated_start", "block_reason", "order"}``
        (``position``/``ahead``/``estimated_start`` for a QUEUED job, else
        None; ``block_reason``: what the last pass said; ``order``: the
        policy's explanation). A job next in line with no block reason is
        estimated to start now. ``UnknownJob``."""
        state = self._table.state(job_id)
        out: dict[str, Any] = {"job_id": job_id, "state": state, "position": None, "ahead": None, "estimated_start": None,
                               "block_reason": self.block_reason(job_id) if state in ("QUEUED", "PAUSED") else None, "order": None}
        if state != "QUEUED":
            return out
        order = self._table.pending()
        try:
            position = order.index(job_id) + 1
        except ValueError:
            return out
        out["position"], out["ahead"] = position, position - 1
        out["order"] = self.describe_order(job_id)
        if position == 1 and out["block_reason"] is None:
            out["estimated_start"] = time.time()
        elif position <= 500:
            plan = self.queue_plan(position)
            out["estimated_start"] = plan[-1]["estimated_start"] if plan and plan[-1]["job_id"] == job_id else None
        return out

    def flush(self) -> None:
        """Commits the journal's buffered writes now (the background writer
        does so every ``flush_interval`` seconds under ``durability="batched"``)."""
        self._table.flush()

    def close(self) -> None:
        """Commits and gives the journal up (another scheduler may then own
        it); the scheduler accepts no more submissions. Stop it first."""
        if self._closed:
            return
        _WRITER.remove(self)
        self._table.close()
        self._closed = True
        pool, self._quota_pool = self._quota_pool, None
        if pool is not None and self._quota_pool_pid == os.getpid():
            pool.shutdown(wait=False)

    @property
    def durability(self) -> str:
        """``"batched"`` or ``"sync"``."""
        return self._table.durability

    def _commit_buffered(self) -> None:
        """The background writer's commit (any thread; never raises)."""
        if self._closed or self._pid != os.getpid():
            return
        try:
            if self._table.unflushed:
                self._table.flush()
            self._flush_failed_at = None
        except JournalError as e:
            now = self._table.now()
            if self._flush_failed_at is None or now - self._flush_failed_at > 10.0:
                logger.error("job journal %s: commit failed (writes kept for the next try): %s", self.journal_path, e)
                self._flush_failed_at = now
        except RuntimeError:
            pass  # the table is busy in a dispatch callback of this thread: next tick

    def _learn_machine(self, stats: Mapping[str, Any] | None) -> None:
        """Tells the core what the machine has (from ``stats``, or a sync
        snapshot of the stats source), and fails queued jobs that can never
        fit it once it is known."""
        if stats is None:
            if self._stats_provider is None:
                self._stats_provider = SystemMonitor().snapshot_async
            source = getattr(self._stats_provider, "__self__", None)
            snap = getattr(source, "snapshot", None)
            if not callable(snap):
                self._machine_known = ()
                return
            try:
                stats = snap()
            except Exception:
                logger.debug("stats snapshot for the machine's totals failed", exc_info=True)
                self._machine_known = ()
                return
        memory = stats.get("memory_total_mb") if isinstance(stats, Mapping) else None
        details = stats.get("details") if isinstance(stats, Mapping) else None
        gpus = None
        # GPUs that cannot be read (no driver, NVML failing) are unknown, not
        # absent: the reservation admits GPU jobs then, and so does submit.
        if isinstance(details, Mapping) and isinstance(details.get("gpus"), list) and not details.get("gpu_unavailable"):
            gpus = [float(g.get("memory_total_mb") or 0.0) for g in details["gpus"] if isinstance(g, Mapping)]
        mem = float(memory) if isinstance(memory, (int, float)) and not isinstance(memory, bool) and memory > 0 else None
        key = (mem, tuple(gpus) if gpus is not None else None)
        if key == self._machine_known:
            return
        self._machine_known = key
        self._table.set_machine(cpu_cores=self._cpu_cores, memory_mb=mem, gpu_vram_mb=gpus)
        for job_id, why in self._table.refuse_never_fit():
            logger.warning("job %d can never run here: %s", job_id, why)
            self._after_transition(job_id, "QUEUED", "FAILED", why)

    def history(self, job_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Journaled transitions (of one job, or all), oldest first."""
        return self._table.history(job_id, limit)

    def _capacity(self) -> tuple[float, int, float]:
        stats = self._last_stats or {}
        gpus = len((stats.get("details") or {}).get("gpus") or [])
        mem = stats.get("memory_total_mb") or 0.0
        return self._cpu_cores, gpus, float(mem)

    def get_scheduler_stats(self) -> dict[str, Any]:
        """Seed 003's figures: ``running_jobs``, ``queued_jobs``, ...,
        ``resource_utilization`` (``cpu``, ``memory``, ``gpu`` as fractions of
        the machine held by running jobs)."""
        counts = self._table.counts()
        cpu_total, gpus, mem_total = self._capacity()
        cpu, gpu, mem = self._table.active()
        counters = self._table.counters()
        return {
            "policy": self._policy_name,
            "running_jobs": counts["RUNNING"],
            "paused_jobs": counts["PAUSED"],
            "queued_jobs": counts["QUEUED"],
            "completed_jobs": counts["COMPLETED"],
            "failed_jobs": counts["FAILED"],
            "cancelled_jobs": counts["CANCELLED"],
            "total_jobs": sum(counts.values()),
            "resource_utilization": {
                "cpu": min(cpu / cpu_total, 1.0) if cpu_total else 0.0,
                "memory": min(mem / mem_total, 1.0) if mem_total else 0.0,
                "gpu": min(gpu / gpus, 1.0) if gpus else 0.0,
            },
            "preemptions": counters["preempted"],
            "retries": counters["retried"],
            "interrupted": counters["interrupted"],
            "event_drops": self._event_drops,
            "journal_unflushed": self._table.unflushed,
            **self._trends(),
        }

    def _trends(self) -> dict[str, Any]:
        h = self._history
        if h is None:
            return {}
        return {
            "trend_per_s": {m: h.trend(m) for m in ("cpu_percent", "memory_used_mb", "gpu_used_memory_mb")},
            "predicted_in_60s": {m: h.predict(m, 60.0) for m in ("cpu_percent", "memory_used_mb", "gpu_used_memory_mb")},
        }

    def get_scheduler_info(self) -> dict[str, Any]:
        """Seed 004's view: ``policy``, ``quota_provider``, ``active_queues``, ``pending_jobs``."""
        quota = self._quotas
        quota_name = None if quota is None else (getattr(quota, "name", None) or type(quota).__name__)
        queues = self._table.queue_stats()
        return {
            "policy": self._policy_name,
            "quota_provider": quota_name,
            "active_queues": sum(1 for q in queues if q["running_jobs"] or q["pending_jobs"]),
            "pending_jobs": self._table.counts()["QUEUED"],
        }

    def get_queue_stats(self) -> list[dict[str, Any]]:
        """Per queue: ``name``, ``priority``, ``running_jobs``, ``pending_jobs``, ``total_jobs``."""
        return self._table.queue_stats()

    def get_usage(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per user and per project: jobs by state and seconds run."""
        out: dict[str, dict[str, dict[str, float]]] = {"users": {}, "projects": {}}
        for d in self._table.records():
            for key, field in (("users", "user"), ("projects", "project")):
                account = d[field] or ""
                row = out[key].setdefault(account, {s.value.lower(): 0 for s in JobState} | {"ran_s": 0.0})
                row[d["state"].lower()] += 1
                row["ran_s"] += d["ran_s"]
        return out

    # ------------------------------------------------------ loaded plugins

    def plugin_loaded(self, name: str, vram_mb: float = 0.0, ram_mb: float = 0.0, device: int | None = None, pinned: bool = False) -> None:
        """Tells the scheduler a plugin is loaded and what it holds while idle."""
        self._plugins.loaded(name, float(vram_mb), float(ram_mb), device, bool(pinned), self._table.now())

    def plugin_unloaded(self, name: str) -> None:
        self._plugins.unloaded(name)

    def get_loaded_plugins(self) -> dict[str, dict[str, Any]]:
        """``{name: {"vram_mb", "ram_mb", "device", "pinned", "active", "last_used"}}``."""
        return self._plugins.snapshot()

    def track_manager(self, manager: Any, *, pinned: Sequence[str] = (), unload: Callable[[str], Any] | None = None) -> None:
        """Tracks a cjm ``PluginManager``'s loaded plugins (footprint: the
        measured peak, else the manifest's ``min_gpu_vram_mb`` /
        ``min_system_ram_mb``) and unloads idle ones through
        ``manager.unload_plugin`` (or ``unload``) when a job needs the room."""
        peaks = self._reservations.peaks()
        for name, meta in manager.plugins.items():
            res = (getattr(meta, "manifest", None) or {}).get("resources", {}) or {}
            peak = peaks.get(name, {})
            vram = (peak.get("vram_mb") or res.get("min_gpu_vram_mb") or 0.0) if res.get("requires_gpu") else 0.0
            ram = peak.get("ram_mb") or res.get("min_system_ram_mb") or 0.0
            self.plugin_loaded(name, vram, ram, None, name in pinned)
        self._unload = unload if unload is not None else manager.unload_plugin

    def _maybe_evict(self, job_id: int, explained: Mapping[str, Any]) -> None:
        if self._unload is None or explained.get("resource") not in ("vram", "ram"):
            return
        if self._evicting:
            return  # what is being unloaded is not free yet: judge once it is
        needed = float(explained.get("needed_mb") or 0.0) - float(explained.get("available_mb") or 0.0)
        names = self._plugins.choose(explained["resource"], needed, explained.get("device"))
        for name in names:
            self._evict(name, job_id, f"job {job_id} needs {needed:.0f} MB more {explained['resource']}")

    def _evict(self, name: str, job_id: int | None, why: str) -> None:
        """Forgets the plugin at once (never chosen twice) and unloads it off the loop."""
        if not self._plugins.unloaded(name) or self._unload is None:
            return
        logger.info("unloading idle plugin %s: %s", name, why)
        if job_id is not None:
            self._emit(JobEvent("evicted", job_id, self._table.state(job_id), None, f"unloaded {name}: {why}", at=self._table.now()))
        unload = self._unload

        async def run() -> None:
            try:
                await asyncio.to_thread(unload, name)
            except Exception:
                logger.exception("unloading plugin %s failed", name)
            self._poke()

        task = asyncio.get_running_loop().create_task(run(), name=f"unload-{name}")
        self._evicting.add(task)
        task.add_done_callback(self._evicting.discard)

    # ---------------------------------------------------------------- events

    def events(
        self, job_id: int | None = None, maxsize: int | None = None, accept: Callable[[JobEvent], bool] | None = None
    ) -> _Subscription:
        """``async for event in scheduler.events(job_id=None)``: events from now
        on (of one job, or all) in a bounded queue (drops counted). ``accept``:
        only the events it returns true for are queued (or dropped and counted);
        it runs when the event happens, so it must be quick and not block."""
        return _Subscription(self, job_id, self._event_queue_size if maxsize is None else _queue_size("maxsize", maxsize), accept)

    def on_event(self, callback: Callable[[JobEvent], Any], job_id: int | None = None) -> Callable[[], None]:
        """Calls ``callback(event)`` for each event; returns the unsubscribe function."""
        entry = (callback, job_id)
        self._callbacks.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return unsubscribe

    def _poke(self) -> None:
        """Asks the dispatcher for a pass (from any thread)."""
        wake = self._wake
        if wake is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(wake.set)

    def _emit(self, event: JobEvent) -> None:
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._emit, event)
            return
        for sub in list(self._subscribers):
            sub._offer(event)
        for callback, job_id in list(self._callbacks):
            if job_id is not None and job_id != event.job_id:
                continue
            try:
                callback(event)
            except Exception:
                logger.exception("event callback %r failed on %s event of job %d", callback, event.type, event.job_id)

    # ------------------------------------------------------------ transitions

    def _transition(self, job_id: int, to: _StateName, call: str, reason: str | None = None) -> str:
        previous = self._table.transition(job_id, to, call, reason)
        self._after_transition(job_id, previous, to, reason)
        return previous

    def _after_transition(self, job_id: int, previous: str, to: str, reason: str | None) -> None:
        if self._subscribers or self._callbacks:
            self._emit(JobEvent("state", job_id, to, previous, reason, at=self._table.now()))
        if to in _TERMINAL:
            self._functions.pop(job_id, None)
            self._block_reasons.pop(job_id, None)
            futures = self._waiters.pop(job_id, [])
            if futures:
                job = self.get_job(job_id)
                for f in futures:
                    if not f.done():
                        f.set_result(job)
            for gone in self._table.take_pruned():
                self._forget(gone)
        self._poke()

    def _progress(self, job_id: int, fraction: float, message: str | None) -> None:
        try:
            value = self._table.progress(job_id, fraction, message)
        except InvalidTransition:
            return  # progress after the job ended: nothing to record
        if self._subscribers or self._callbacks:
            self._emit(JobEvent("progress", job_id, self._table.state(job_id), None, message, value, self._table.now()))

    # ------------------------------------------------------------- lifecycle

    def cancel_job(self, job_id: int, reason: str | None = None) -> None:
        """Cancels a job: a queued one at once; a running or paused one
        cooperatively first, then forced after ``cancel_grace_s`` (SIGTERM,
        then SIGKILL, for a subprocess; task cancellation for a coroutine).
        The job is CANCELLED once it has stopped (``wait_job``)."""
        state = self._table.state(job_id)
        self._table.check(job_id, "CANCELLED", "cancel_job")
        why = reason or "cancelled by cancel_job"
        if state == "QUEUED":
            self._transition(job_id, "CANCELLED", "cancel_job", why)
            return
        rt = self._runtime.get(job_id)
        if rt is None:  # running with no runner here (cannot happen after recovery): end it
            self._transition(job_id, "CANCELLED", "cancel_job", why)
            return
        if rt.stop is None:
            rt.stop, rt.stop_reason = "cancel", why
            rt.stopper = asyncio.get_running_loop().create_task(self._stop_runner(job_id, rt, self._cancel_grace))

    def pause_job(self, job_id: int) -> None:
        """Pauses a running job: SIGSTOP for a subprocess, cooperative for a
        function (its next ``checkpoint`` waits). Its reservation is kept, or
        released with ``release_on_pause=True``."""
        self._table.check(job_id, "PAUSED", "pause_job")
        rt = self._runtime.get(job_id)
        if rt is not None:
            if rt.proc is not None:
                self._signal(rt.proc, signal.SIGSTOP)
            if rt.ctx is not None:
                rt.ctx._pause()
            if self._release_on_pause and rt.lease is not None:
                lease, rt.lease = rt.lease, None
                lease.__exit__(None, None, None)
        self._transition(job_id, "PAUSED", "pause_job")

    def resume_job(self, job_id: int) -> None:
        """Resumes a paused job (SIGCONT, or the function's checkpoint returns).
        A job that gave its reservation back resumes once it fits again (at
        the next pass; it stays PAUSED, with a block reason, until then)."""
        state = self._table.state(job_id)
        if state != "PAUSED":
            module = self._table.job(job_id)["module"]
            # The core's wording (QUEUED → RUNNING is a start, not a resume).
            raise InvalidTransition(f"cannot resume_job job {job_id} ({json.dumps(module)}): it is {state}")
        rt = self._runtime.get(job_id)
        if rt is not None and rt.lease is None and rt.grant is not None:
            self._resume_pending.add(job_id)
            self._poke()
            return
        self._continue(job_id, rt)

    def _continue(self, job_id: int, rt: _Runtime | None) -> None:
        if rt is not None:
            if rt.proc is not None:
                self._signal(rt.proc, signal.SIGCONT)
            if rt.ctx is not None:
                rt.ctx._unpause()
        self._transition(job_id, "RUNNING", "resume_job")

    def _retake_for_resume(self, stats: Mapping[str, Any]) -> None:
        """Resumes the jobs waiting to take their reservation back, if it fits."""
        for job_id in sorted(self._resume_pending):
            rt = self._runtime.get(job_id)
            if rt is None or self._table.state(job_id) != "PAUSED":
                self._resume_pending.discard(job_id)
                continue
            r = self._table.job(job_id)
            req = r["requirements"]
            meta = _Meta(r["module"], req["gpu_count"], req["vram_mb"], req["memory_mb"])
            explained = self._reservations.explain(meta, lambda: stats)
            if explained.get("would_wait"):
                self._set_block_reason(job_id, f"resume waits for its reservation: {explained.get('reason')}")
                continue
            cm = self._reservations.lease(meta, lambda: stats)
            try:
                rt.grant = cm.__enter__()
            except ReservationTimeout as e:
                self._set_block_reason(job_id, f"resume waits for its reservation: {e}")
                continue
            rt.lease = cm
            if rt.proc is not None:
                self._reservations.attach_pid(rt.grant.id, rt.proc.pid)
            self._resume_pending.discard(job_id)
            self._block_reasons.pop(job_id, None)
            self._continue(job_id, rt)

    def set_priority(self, job_id: int, priority: float) -> None:
        """Changes a job's priority (same scales as ``submit_job``); a pending job moves in the order."""
        self._table.set_priority(job_id, self._priority(priority))
        self._poke()

    async def wait_job(self, job_id: int, timeout: float | None = None) -> Job:
        """Waits until the job is completed, failed or cancelled; its record."""
        if self._table.state(job_id) in _TERMINAL:
            return self.get_job(job_id)
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            if timeout is None:
                return await asyncio.shield(future)
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"wait_job({job_id}) timed out after {timeout:g} s: {self._why_pending(job_id)}") from None
        finally:
            lst = self._waiters.get(job_id)
            if lst is not None and future in lst and not future.done():
                lst.remove(future)
                if not lst:
                    self._waiters.pop(job_id, None)

    # ---------------------------------------------------------------- running

    async def start(self) -> None:
        """Starts the dispatcher in the running event loop."""
        if self._loop_task is not None and not self._loop_task.done():
            return
        self._wake = asyncio.Event()
        self._wake.set()
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        held = await self._recovered_holders()
        if self._adopt:
            self._reattach(await self._stats(), held)
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatcher(), name="JobScheduler.dispatcher")

    async def stop(self, cancel_running: bool = True) -> None:
        """Stops the dispatcher. Running jobs are cancelled (as ``cancel_job``,
        grace included) unless ``cancel_running=False`` (then they are left to
        end, and awaited); queued jobs stay queued in the journal. A sync
        function that never reaches ``checkpoint_sync`` cannot be stopped
        from outside: ``stop`` waits for its thread to return."""
        running = [j for j, rt in self._runtime.items() if rt.task is not None]
        if cancel_running:
            for job_id in running:
                if self._table.state(job_id) not in _TERMINAL:
                    with contextlib.suppress(InvalidTransition):
                        self.cancel_job(job_id, "scheduler stopped")
        tasks = [rt.task for rt in self._runtime.values() if rt.task is not None] + list(self._evicting)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._loop_task is not None:
            self._stopping = True
            self._poke()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._quota_held:
            held, self._quota_held = self._quota_held, {}
            for job_id, req in held.items():
                self._quota_release_off_loop(job_id, req)
        if self._quota_pool is not None and self._quota_pool_pid == os.getpid():
            await self._in_quota_thread(lambda: None)  # the quota calls made so far are done
        self._table.flush()
        for sub in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)

    def run_until_complete(self, timeout: float | None = None) -> dict[str, Any]:
        """Sync facade for scripts: runs the scheduler in a fresh event loop
        until no job is queued, running or paused (or ``timeout`` seconds),
        then stops it; the final ``get_scheduler_stats()``."""

        async def drive() -> dict[str, Any]:
            await self.start()
            try:
                async def idle() -> None:
                    while True:
                        c = self._table.counts()
                        if not (c["QUEUED"] or c["RUNNING"] or c["PAUSED"]):
                            return
                        await asyncio.sleep(0.01)

                try:
                    await asyncio.wait_for(idle(), timeout)
                except asyncio.TimeoutError:
                    raise asyncio.TimeoutError(f"run_until_complete timed out after {timeout:g} s: {self._pending_summary()}") from None
            finally:
                await self.stop()
            return self.get_scheduler_stats()

        return asyncio.run(drive())

    async def __aenter__(self) -> "JobScheduler":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _stats(self) -> Mapping[str, Any]:
        if self._stats_provider is None:
            self._stats_provider = SystemMonitor().snapshot_async
        stats = await self._stats_provider()
        self._last_stats = stats
        self._learn_machine(stats)
        if self._history is not None:
            now = self._table.now()
            if self._history_at is None or now - self._history_at >= self._history_interval:
                self._history_at = now
                self._history.record(stats)
        return stats

    async def _dispatcher(self) -> None:
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        while not self._stopping:
            # A timer instead of wait_for: 3.11's wait_for can swallow a cancellation.
            timer = loop.call_later(self._poll, wake.set) if self._poll > 0 else None
            try:
                await wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
            wake.clear()
            if self._stopping:
                break
            try:
                await self.trigger_async()
            except Exception:
                logger.exception("job dispatch pass failed; retrying in %.1f s", self._poll)
            if self._table.unflushed and loop.time() - last_flush >= self._flush_interval:
                try:
                    self._table.flush()
                except JournalError:
                    logger.exception("job journal flush failed (writes kept for the next try)")
                last_flush = loop.time()
            if self._table.unflushed:
                loop.call_later(self._flush_interval, wake.set)

    def trigger(self, project_id: str | None = None) -> dict[str, int]:
        """Seed 004's manual trigger: asks for a pass now; the last pass's
        ``{"scheduled_count", "remaining_pending"}`` (use ``await
        trigger_async()`` for this pass's own figures)."""
        self._poke()
        return dict(self._last_pass)

    async def trigger_async(self, project_id: str | None = None) -> dict[str, int]:
        """One admission pass now: ``{"scheduled_count", "remaining_pending"}``.
        With ``project_id``, only that project's jobs may start in it.

        Quota calls (check, allocate, release) never run on the event loop:
        they run in the scheduler's quota thread, between passes (a job whose
        quota is not allocated yet waits for the next pass, which follows at
        once). A job whose admission raises (a requirement the reservation or
        quota cannot take) fails with the reason; the pass goes on without it."""
        stats = await self._stats()
        scheduled = 0
        for _ in range(8):
            if self._quotas is not None:
                await self._quota_check_queued(project_id)
            self._quota_refused = False
            self._quota_wants = {}
            self._poisoned = {}
            scheduled += self._pass(stats, project_id)
            again = self._fail_poisoned()
            if self._quota_wants:
                again = await self._quota_allocate() or again
            if not (again or self._quota_refused):
                break
        if self._quota_held:
            held, self._quota_held = self._quota_held, {}
            for job_id, req in held.items():
                self._quota_release_off_loop(job_id, req)
        for job_id in self._table.prune():
            self._forget(job_id)
        self._check_deadlines()
        self._last_pass = {"scheduled_count": scheduled, "remaining_pending": self._table.counts()["QUEUED"]}
        return dict(self._last_pass)

    # ---------------------------------------------------------- quota thread

    def _quota_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """One worker thread per scheduler, made at the first quota call (a
        forked child makes its own): calls run in the order they are made, so
        a release is done before a later allocation."""
        if self._quota_pool is None or self._quota_pool_pid != os.getpid():
            self._quota_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plugin-scheduling-quota")
            self._quota_pool_pid = os.getpid()
        return self._quota_pool

    async def _in_quota_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._quota_executor(), fn)

    async def _quota_check_queued(self, project_id: str | None) -> None:
        """``check_quota`` for every distinct (project, need) of the queued jobs,
        in the quota thread; the pass reads the answers."""
        quotas = self._quotas
        needs: set[tuple[Any, ...]] = set()
        self._pass_jobs = {d["job_id"]: d for d in self._table.records("QUEUED")}
        for d in self._pass_jobs.values():
            project = d["project"]
            if project is None or (project_id is not None and project != project_id):
                continue
            r = d["requirements"]
            needs.add((project, r["cpu_cores"], r["memory_mb"], r["gpu_count"], r["vram_mb"]))

        def check() -> dict[tuple[Any, ...], Any]:
            out: dict[tuple[Any, ...], Any] = {}
            for key in needs:
                project, cpu, mem, gpu, vram = key
                try:
                    out[key] = _quota_call(quotas, "check_quota", project, _quota_resources(cpu, mem, gpu, vram))
                except Exception as e:
                    out[key] = e
            return out

        self._quota_checks = await self._in_quota_thread(check) if needs else {}

    async def _quota_allocate(self) -> bool:
        """``allocate_quota`` for the jobs the pass found waiting for it, in
        the quota thread; whether any allocation was made (a pass follows)."""
        quotas = self._quotas
        wants = list(self._quota_wants.items())[:64]
        self._quota_wants = {}
        holders = {job_id: self._holder(job_id) for job_id, _want in wants}

        def allocate() -> list[tuple[int, Any, Any]]:
            out = []
            for job_id, (project, req) in wants:
                holder = holders[job_id]
                try:
                    if holder is not None:
                        # Recorded under the job, in the quota store's own
                        # transaction: recovery releases it exactly once.
                        decision = quotas.allocate_quota_held(holder, project, req, QUOTA_JOB_TYPE)
                    else:
                        decision = _quota_call(quotas, "allocate_quota", project, req)
                    out.append((job_id, req, decision))
                except Exception as e:
                    out.append((job_id, req, e))
            return out

        got = False
        projects = {job_id: project for job_id, (project, _req) in wants}
        for job_id, req, decision in await self._in_quota_thread(allocate):
            project = projects[job_id]
            if isinstance(decision, Exception):
                logger.error("allocate_quota for job %d (project %r) raised: %r", job_id, project, decision)
                self._set_block_reason(job_id, f"quota of project {project!r}: allocate_quota raised {type(decision).__name__}: {decision}")
            elif decision:
                self._quota_held[job_id] = req
                got = True
            else:
                self._set_block_reason(job_id, _quota_reason(decision, project, "refused the allocation"))
                self._quota_refused = True
        return got

    def _quota_release_off_loop(self, job_id: int, resources: Any, project: str | None = None) -> None:
        """``release_quota`` in the quota thread (never blocks the caller); by
        the job's holder where the provider records holders (what it holds,
        once: a second release does nothing)."""
        quotas = self._quotas
        if quotas is None:
            return
        holder = self._holder(job_id)
        if holder is None and project is None:
            try:
                project = self._table.job(job_id)["project"]
            except UnknownJob:
                return

        def release() -> None:
            try:
                if holder is not None:
                    quotas.release_quota_held(holder)
                else:
                    quotas.release_quota(project, resources, QUOTA_JOB_TYPE)
            except Exception:
                logger.exception("release_quota failed for job %d (project %r, holder %s)", job_id, project, holder)

        future = self._quota_executor().submit(release)
        future.add_done_callback(lambda _f: self._poke())

    # ------------------------------------------------------- failing one job

    def _fail_queued(self, job_id: int, why: str) -> None:
        """Fails a queued job that cannot be admitted (the pass goes on)."""
        try:
            if self._table.state(job_id) != "QUEUED":
                return
            self._transition(job_id, "FAILED", "dispatch", why)
        except (UnknownJob, InvalidTransition):
            return
        logger.warning("job %d failed at admission: %s", job_id, why)

    def _fail_poisoned(self) -> bool:
        poisoned, self._poisoned = self._poisoned, {}
        for job_id, why in poisoned.items():
            self._fail_queued(job_id, why)
        return bool(poisoned)

    def _forget(self, job_id: int) -> None:
        """A finished job dropped by retention: its Python-side leftovers too."""
        self._results.pop(job_id, None)
        self._missed.discard(job_id)
        self._block_reasons.pop(job_id, None)
        self._functions.pop(job_id, None)

    def _pass(self, stats: Mapping[str, Any], project_id: str | None) -> int:
        if self._resume_pending:
            self._retake_for_resume(stats)
        cpu, gpus, mem = self._capacity()
        self._refusal = None
        self._explained = None
        self._took = None

        def take(job_id: int, module: str, gpu_count: int, vram_mb: float, memory_mb: float) -> Any:
            self._took = job_id
            rt = _Runtime()
            project: str | None = None
            held: Any = None
            try:
                meta = _Meta(module, gpu_count, vram_mb, memory_mb)
                explained = self._reservations.explain(meta, lambda: stats)
                if explained.get("would_wait"):
                    self._refusal = str(explained.get("reason"))
                    self._explained = explained
                    return None
                if self._quotas is not None:
                    project = self._table_project(job_id)
                    if project is not None:
                        held = self._quota_held.pop(job_id, None)
                        if held is None:
                            req = _quota_resources(self._cpu_of(job_id), memory_mb, gpu_count, vram_mb)
                            self._quota_wants[job_id] = (project, req)
                            self._refusal = f"waiting for its allocation in the quota of project {project!r}"
                            return None
                        rt.quota = True
                cm = self._reservations.lease(meta, lambda: stats)
                try:
                    rt.grant = cm.__enter__()
                except ReservationTimeout as e:
                    self._refusal = str(e)
                    if held is not None:
                        self._quota_release_off_loop(job_id, held, project)
                    return None
                rt.lease = cm
                return rt
            except Exception as e:  # this job's own failure, not the pass's
                if held is not None:
                    self._quota_release_off_loop(job_id, held, project)
                self._poisoned[job_id] = f"admission failed: {type(e).__name__}: {e}"
                self._refusal = self._poisoned[job_id]
                return None

        eligible = None
        if self._quotas is not None or project_id is not None:
            checks = self._quota_checks

            def eligible(job_id: int, project: str | None, cpu_cores: float, memory_mb: float, gpu_count: int, vram_mb: float) -> str | None:
                if project_id is not None and project != project_id:
                    return f"trigger(project_id={project_id!r}) considers only that project"
                if self._quotas is None or project is None or job_id in self._quota_held:
                    return None  # no quota, or its allocation is made already
                decision = checks.get((project, cpu_cores, memory_mb, gpu_count, vram_mb))
                if decision is None:
                    return f"quota of project {project!r} not checked yet"
                if isinstance(decision, Exception):
                    return f"quota of project {project!r}: check_quota raised {type(decision).__name__}: {decision}"
                if decision:
                    return None
                return _quota_reason(decision, project, "exceeded")

        # Job details the callbacks need without calling the table (it is busy).
        if self._quotas is None:
            self._pass_jobs = None
        started, blocked, skipped, _head_start, error = self._table.dispatch(cpu, gpus, mem, take, eligible)
        for job_id, rt in started:
            self._block_reasons.pop(job_id, None)
            self._launch(job_id, rt)
            self._after_transition(job_id, "QUEUED", "RUNNING", None)
        for job_id, why in skipped:
            self._set_block_reason(job_id, why)
        if blocked is not None and blocked not in self._poisoned:
            if self._took != blocked:
                need = self._table.job(blocked)["requirements"]["cpu_cores"]
                used = self._table.active()[0]
                reason = f"needs {need:g} CPU cores, {max(cpu - used, 0):g} of {cpu:g} free"
            else:
                reason = self._refusal or "does not fit now"
            self._set_block_reason(blocked, f"{reason}; {self._table.describe(blocked)}")
            if blocked not in self._quota_wants:
                self._maybe_preempt(blocked, cpu, gpus, mem)
            if self._took == blocked and self._explained is not None:
                self._maybe_evict(blocked, self._explained)
        if self._keep_alive is not None and self._unload is not None:
            for name in self._plugins.expired(self._keep_alive, self._table.now()):
                self._evict(name, None, f"idle longer than keep_alive_s={self._keep_alive:g}")
        if error is not None:
            raise error
        return len(started)

    def _table_project(self, job_id: int) -> str | None:
        d = (self._pass_jobs or {}).get(job_id)
        return None if d is None else d["project"]

    def _cpu_of(self, job_id: int) -> float:
        d = (self._pass_jobs or {}).get(job_id)
        return 0.0 if d is None else d["requirements"]["cpu_cores"]

    def _kind_of(self, job_id: int) -> str:
        d = (self._pass_jobs or {}).get(job_id)
        return "function" if d is None else d["kind"]

    def _release_quota(self, job_id: int, rt: _Runtime) -> None:
        """Gives the job's quota back, in the quota thread (never on the loop)."""
        if not rt.quota or self._quotas is None:
            return
        rt.quota = False
        d = self._table.job(job_id)
        r = d["requirements"]
        self._quota_release_off_loop(
            job_id, _quota_resources(r["cpu_cores"], r["memory_mb"], r["gpu_count"], r["vram_mb"]), d["project"]
        )

    def _set_block_reason(self, job_id: int, reason: str) -> None:
        if self._block_reasons.get(job_id) == reason:
            return
        self._block_reasons[job_id] = reason
        if self._subscribers or self._callbacks:
            self._emit(JobEvent("blocked", job_id, "QUEUED", None, reason, at=self._table.now()))

    def _why_pending(self, job_id: int) -> str:
        """What a job waits for, in words (for timeout messages)."""
        try:
            d = self._table.job(job_id)
        except UnknownJob:
            return f"job {job_id} is unknown"
        why = self._block_reasons.get(job_id)
        if d["state"] == "QUEUED" and why is None:
            why = "no dispatch pass has considered it yet (is the scheduler started?)" if self._loop_task is None else "waiting for a pass"
        text = f"job {job_id} ({d['module']!r}) is still {d['state']}"
        return f"{text}: {why}" if why else text

    def _pending_summary(self, limit: int = 5) -> str:
        c = self._table.counts()
        head = f"{c['QUEUED']} queued, {c['RUNNING']} running, {c['PAUSED']} paused"
        states: tuple[_StateName, ...] = ("RUNNING", "PAUSED")
        ids = [d["job_id"] for state in states for d in self._table.records(state)][:limit]
        ids += self._table.pending(limit)
        return head + "".join(f"; {self._why_pending(i)}" for i in ids[: limit * 2])

    def block_reason(self, job_id: int) -> str | None:
        """Why a pending job waits (the last pass's reason), if known."""
        return self._block_reasons.get(job_id)

    def _check_deadlines(self) -> None:
        now = self._table.now()
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, job_id = heapq.heappop(self._deadlines)
            try:
                state = self._table.state(job_id)
            except UnknownJob:
                continue
            if state in _TERMINAL or job_id in self._missed:
                continue
            self._missed.add(job_id)
            logger.warning("job %d missed its deadline (%s)", job_id, state)
            self._emit(JobEvent("deadline_missed", job_id, state, None, f"deadline passed {now - deadline:.1f} s ago while {state}", at=now))

    def _maybe_preempt(self, head: int, cpu: float, gpus: int, mem: float) -> None:
        victims = self._table.preemption_advice(head, cpu, gpus, mem)
        if not victims:
            return
        runtimes = [self._runtime.get(v) for v in victims]
        if any(rt is None or rt.stop is not None or not self._preemptible(v, rt) for v, rt in zip(victims, runtimes)):
            return  # a victim is already stopping, or cannot be stopped: the set would not free enough
        loop = asyncio.get_running_loop()
        for victim, rt in zip(victims, runtimes):
            assert rt is not None
            rt.stop, rt.stop_reason = "preempt", f"preempted for job {head}"
            self._emit(JobEvent("preempted", victim, self._table.state(victim), None, rt.stop_reason, at=self._table.now()))
            rt.stopper = loop.create_task(self._stop_runner(victim, rt, self._preempt_grace))

    def _preemptible(self, job_id: int, rt: _Runtime) -> bool:
        # A sync function in a worker thread cannot be stopped from outside.
        return rt.proc is not None or (rt.task is not None and not (rt.ctx is not None and rt.ctx._in_thread))

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process | _AdoptedProcess, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _stop_runner(self, job_id: int, rt: _Runtime, grace: float) -> None:
        """Cooperative stop, then forced after ``grace`` seconds."""
        if rt.ctx is not None:
            rt.ctx._stop()
        if rt.proc is not None:
            self._signal(rt.proc, signal.SIGCONT)
            self._signal(rt.proc, signal.SIGTERM)
        task = rt.task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace)
        if done:
            return
        if rt.proc is not None:
            self._signal(rt.proc, signal.SIGKILL)
        elif not (rt.ctx is not None and rt.ctx._in_thread):
            task.cancel()

    def _launch(self, job_id: int, rt: _Runtime) -> None:
        self._runtime[job_id] = rt
        rt.task = asyncio.get_running_loop().create_task(self._run(job_id, rt), name=f"job-{job_id}")

    async def _run(self, job_id: int, rt: _Runtime) -> None:
        job = self._table.job(job_id)
        kind, module = job["kind"], job["module"]
        error: BaseException | None = None
        try:
            try:
                if isinstance(rt.proc, _AdoptedProcess):
                    await self._wait_adopted(job_id, rt.proc)
                    rt.result = None  # its exit status cannot be known
                elif kind == "command":
                    rt.result = await self._run_command(job_id, rt, Command.from_json(job["payload"]), job["requirements"]["gpu_count"])
                elif kind == "plugin":
                    call = self._functions.get(job_id)
                    if not isinstance(call, PluginCall):
                        raise LookupError("the job's PluginCall is gone (it was submitted in another process)")
                    self._plugins.begin(call.plugin, self._table.now())
                    try:
                        rt.result = await call.manager.execute_plugin_async(call.plugin, *call.args, **call.kwargs)
                    finally:
                        self._plugins.end(call.plugin, self._table.now())
                else:
                    rt.ctx = JobContext(self, job_id, module, rt.grant)
                    if kind == "function":
                        fn = self._functions.get(job_id)
                    elif kind == "registered":
                        fn = self._registry.get(job["payload"])
                        if fn is None:
                            raise LookupError(f"no function registered as {job['payload']!r} (register it before start)")
                    else:
                        fn = None
                    if fn is None and kind == "function":
                        raise LookupError("the job's function is gone (it was submitted in another process)")
                    if fn is None:
                        await rt.ctx.sleep(job["estimated_duration"] or 0.0)
                    elif inspect.iscoroutinefunction(fn):
                        rt.result = await fn(rt.ctx)
                    else:
                        rt.ctx._in_thread = True
                        rt.result = await asyncio.get_running_loop().run_in_executor(None, fn, rt.ctx)
                        if inspect.isawaitable(rt.result):
                            rt.result = await rt.result
            finally:
                if rt.lease is not None:
                    lease, rt.lease = rt.lease, None
                    lease.__exit__(None, None, None)
                self._release_quota(job_id, rt)
        except asyncio.CancelledError as e:
            error = e
            if rt.stop is None:
                rt.stop, rt.stop_reason = "cancel", "the job's task was cancelled"
        except BaseException as e:  # the job's own failure: recorded, not raised
            error = e
        finally:
            self._runtime.pop(job_id, None)
        self._finish(job_id, rt, error)

    def _finish(self, job_id: int, rt: _Runtime, error: BaseException | None) -> None:
        state = self._table.state(job_id)
        if state in _TERMINAL:
            return
        if rt.stop == "preempt":
            self._table.requeue(job_id, "preempted", rt.stop_reason or "preempted")
            self._after_transition(job_id, state, "QUEUED", rt.stop_reason)
            return
        if rt.stop == "cancel":
            self._transition(job_id, "CANCELLED", "cancel_job", rt.stop_reason)
            return
        if error is None:
            self._results[job_id] = rt.result
            unknown = isinstance(rt.proc, _AdoptedProcess)
            self._transition(job_id, "COMPLETED", "finish", _UNKNOWN_EXIT if unknown else None)
            return
        message = f"{type(error).__name__}: {error}"
        oom = rt.oom or (message if isinstance(error, (SimulatedOutOfMemory, MemoryError)) or _oom_text(message) else None)
        job = self._table.job(job_id)
        if oom is not None and job["retries"] < job["max_retries"]:
            self._grow(job_id, job)
            reason = f"out of memory ({oom[:200]}); retry {job['retries'] + 1} of {job['max_retries']} with a larger reservation"
            self._table.requeue(job_id, "retried", reason)
            self._after_transition(job_id, state, "QUEUED", reason)
            self._emit(JobEvent("retried", job_id, "QUEUED", state, reason, at=self._table.now()))
            return
        logger.warning("job %d (%s) failed: %s", job_id, job["module"], message)
        self._transition(job_id, "FAILED", "finish", message)

    def _grow(self, job_id: int, job: Mapping[str, Any]) -> None:
        """The reservation after an OOM: the measured peak or the declared
        need, whichever is larger, times ``oom_growth``."""
        r = job["requirements"]
        peak = self._reservations.peaks().get(job["module"], {})
        ram = max(r["memory_mb"], peak.get("ram_mb") or 0.0) * self._oom_growth
        vram = max(r["vram_mb"], peak.get("vram_mb") or 0.0) * self._oom_growth if r["gpu_count"] else 0.0
        if ram == 0 and vram == 0:
            ram = 1024.0  # nothing declared nor measured: start from 1 GiB
        self._table.grow(job_id, ram, vram)

    async def _run_command(self, job_id: int, rt: _Runtime, command: Command, gpu_count: int) -> int:
        env = dict(os.environ)
        if command.env:
            env.update(command.env)
        if gpu_count > 0 and rt.grant is not None:
            env["CUDA_VISIBLE_DEVICES"] = rt.grant.cuda_visible_devices
        journal = self._table.journal_path
        token = None
        if self._journal_id is not None:
            # On disk before the process exists: a crash at any point
            # leaves a record (or the marker in its environment) that the
            # recovering scheduler finds before it reruns the job.
            token = JobTable.marker_token(self._journal_id, job_id)
            env[_MARKER_VAR] = token
            self._table.process_intent(job_id, token)
        adopt = self._recovery_mode == "adopt" and journal is not None
        sinks: list[_joblogs.Sink] = []
        try:  # a log directory refused (symlink, another owner): the job fails with why
            logs = None if journal is None else _joblogs.checked_directory(journal)
            sinks = [_joblogs.Sink(logs, job_id, s, self._log_limit, direct=adopt) for s in _joblogs.STREAMS]
        except BaseException:
            for sink in sinks:
                sink.close()
            if token is not None:
                self._table.process_ended(job_id)
            raise
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command.argv,
                    env=env,
                    cwd=command.cwd,
                    # adopt mode: nothing of the scheduler's may tie it (its stdin included)
                    stdin=asyncio.subprocess.DEVNULL if adopt else None,
                    # kill mode: pipes the scheduler copies to the bounded
                    # files; adopt mode: the files themselves (it must outlive us)
                    stdout=sinks[0].fd if adopt else asyncio.subprocess.PIPE,
                    stderr=sinks[1].fd if adopt else asyncio.subprocess.PIPE,
                    start_new_session=True,  # its own process group: signals reach its children
                    # kill mode: the command dies with the scheduler; adopt
                    # mode: it must outlive it, to be adopted.
                    preexec_fn=None if adopt else _die_with_parent(),
                )
            except BaseException:
                if token is not None:
                    self._table.process_ended(job_id)
                raise
            rt.proc = proc
            try:
                if token is not None:
                    self._table.process_spawned(job_id, proc.pid, proc.pid)
                if rt.grant is not None:
                    self._reservations.attach_pid(rt.grant.id, proc.pid)
                if rt.stop is not None:  # stopped before it started
                    self._signal(proc, signal.SIGTERM)
                elif self._table.state(job_id) == "PAUSED":
                    self._signal(proc, signal.SIGSTOP)
                try:
                    if adopt:
                        await _joblogs.watch(proc.wait(), sinks)
                    else:
                        await asyncio.gather(_joblogs.pump(proc.stdout, sinks[0]), _joblogs.pump(proc.stderr, sinks[1]), proc.wait())
                except asyncio.CancelledError:
                    self._signal(proc, signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        await asyncio.shield(proc.wait())
                    raise
            except BaseException:
                if proc.returncode is None:  # a journal write failed: it must not run unrecorded
                    self._signal(proc, signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        await asyncio.shield(proc.wait())
                raise
            finally:
                if token is not None and proc.returncode is not None:
                    self._table.process_ended(job_id)
            tail = sinks[1].end() + sinks[0].end()
        finally:
            for sink in sinks:
                sink.close()
        rc = proc.returncode
        if rc == 0:
            return 0
        if _oom_text(tail):
            rt.oom = tail.strip()[-300:]
        elif rc == -signal.SIGKILL and rt.stop is None:
            rt.oom = "killed by SIGKILL, not by the scheduler (the kernel's OOM killer?)"
        raise RuntimeError(f"command {list(command.argv)!r} exited with {rc}: {tail.strip()[-500:]}")

    async def _wait_adopted(self, job_id: int, proc: _AdoptedProcess) -> None:
        """Waits for an adopted command to end. Its exit status cannot be
        known (it is not our child): the job ends COMPLETED, ``result``
        None, the history saying so; its output is in ``<journal>.logs/``."""
        try:
            if self._table.state(job_id) == "PAUSED":
                self._signal(proc, signal.SIGSTOP)
            journal = self._table.journal_path
            logs = None if journal is None else _joblogs.checked_directory(journal)
            sinks = [_joblogs.Sink(logs, job_id, s, self._log_limit, direct=True, new_attempt=False) for s in _joblogs.STREAMS] if logs is not None else []
            try:
                await _joblogs.watch(_wait_gone(proc), sinks)  # its files kept within the bound
            finally:
                for sink in sinks:
                    sink.close()
        except asyncio.CancelledError:
            self._signal(proc, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(_wait_gone(proc))
            raise
        finally:
            self._table.process_ended(job_id)

    def _reattach(self, stats: Mapping[str, Any], held: Mapping[int, str]) -> None:
        """Runs the adopted jobs again here: their reservation taken again
        (when it still fits: the process runs either way), then waited for;
        ``held``: the quota holders they kept (released when they end)."""
        adopt, self._adopt = self._adopt, {}
        for job_id, proc in sorted(adopt.items()):
            rt = _Runtime()
            rt.proc = proc
            rt.quota = job_id in held
            r = self._table.job(job_id)
            req = r["requirements"]
            meta = _Meta(r["module"], req["gpu_count"], req["vram_mb"], req["memory_mb"])
            cm = self._reservations.lease(meta, lambda: stats)
            try:
                rt.grant = cm.__enter__()
                rt.lease = cm
                self._reservations.attach_pid(rt.grant.id, proc.pid)
            except ReservationTimeout as e:
                logger.warning("adopted job %d runs without its reservation (it does not fit now: %s)", job_id, e)
            self._launch(job_id, rt)


#: The job type quotas are charged under (seed 004's ``JobTypeEnum``).
QUOTA_JOB_TYPE = "batch"


def _quota_resources(cpu_cores: float, memory_mb: float, gpu_count: int, vram_mb: float) -> Any:
    """A job's requirements as seed 004's ``Resources`` (memory in GiB)."""
    from .quotas import Resources

    return Resources(cpu=float(cpu_cores), memory=float(memory_mb) / 1024.0, gpu=int(gpu_count), vram_mb=float(vram_mb))


def _quota_call(quotas: Any, call: str, project: str, resources: Any) -> Any:
    """``check_quota``/``allocate_quota``, with the reason (``*_detail``) when
    the provider gives one."""
    detail = getattr(quotas, f"{call}_detail", None)
    if detail is not None:
        return detail(project, resources, QUOTA_JOB_TYPE)
    return bool(getattr(quotas, call)(project, resources, QUOTA_JOB_TYPE))


def _quota_reason(decision: Any, project: str, what: str) -> str:
    reason = getattr(decision, "reason", None)
    if reason:
        return f"quota of project {project!r} {what}: {reason}"
    return f"quota of project {project!r} {what}"
