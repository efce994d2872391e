"""Per-project resource quotas: the job-queue module's ``QuotaProvider`` and its backends.

``QuotaProvider`` is the interface (an ABC a Python class may implement);
the built-in providers keep their state in a real system:

* ``LocalQuotaProvider()`` -- SQLite file (default
  ``$XDG_STATE_HOME/plugin-scheduling/quotas.db``), shared safely by every
  process of the host; ``LocalQuotaProvider(dsn="postgresql://...")`` -- the
  same tables in PostgreSQL, for several hosts.
* ``SlurmQuotaProvider()`` -- each project is the Slurm account
  ``{SLURM_ACCOUNT_PREFIX}{project_id}``; its quota is that association's
  ``GrpTRES`` (enforced by Slurm for its jobs), usage is what Slurm's
  running jobs of the account use plus what was allocated through the
  provider.

Units: ``cpu`` in cores, ``memory`` in GiB (the job-queue module's ``500Gi``), ``gpu`` in
whole GPUs, ``vram_mb`` in MB. A limit of ``None`` is unlimited. A project
without any quota is unlimited (its usage is still recorded).

``quota_provider_from_env()`` picks the provider from ``QUOTA_PROVIDER``
(``local``/``slurm``) as the job-queue module's configuration does; the job scheduler
calls ``check_quota_detail``/``allocate_quota``/``release_quota`` and names
the provider in ``get_scheduler_info()["quota_provider"]`` with
``provider.name``.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
import getpass
import math
import numbers
import os
import uuid
from pathlib import Path
from typing import Any, ClassVar, Mapping, Union

from ._core import InvalidQuota, QuotaBackendError, _QuotaBackend

__all__ = [
    "InvalidQuota",
    "JobTypeEnum",
    "LocalQuotaProvider",
    "ProjectId",
    "QuotaBackendError",
    "QuotaDecision",
    "QuotaInfo",
    "QuotaProvider",
    "QuotaUsage",
    "Resources",
    "SlurmQuotaProvider",
    "as_quota_provider",
    "quota_provider_from_env",
]

ProjectId = Union[uuid.UUID, str]

_UNSET: Any = object()


class JobTypeEnum(str, enum.Enum):
    """What kind of work a job is. Recorded with each allocation, so
    ``usage()`` breaks a project's use down by kind; every kind counts
    against the same project quota.

    * ``TRAINING`` -- model training (long running, GPU heavy)
    * ``INFERENCE`` -- serving or offline inference
    * ``BATCH`` -- generic batch work (preprocessing, evaluation scripts)
    * ``INTERACTIVE`` -- notebooks and shells
    """

    TRAINING = "training"
    INFERENCE = "inference"
    BATCH = "batch"
    INTERACTIVE = "interactive"


# The largest amount the core accepts in any unit (its MAX_UNITS).
_MAX_COUNT = 10**15


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidQuota(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidQuota(f"{field} must be a finite number >= 0 (and not absurdly large), got {value!r}"[:200]) from None
    if not math.isfinite(number) or number < 0:
        raise InvalidQuota(f"{field} must be a finite number >= 0, got {value!r}")
    return number


def _count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidQuota(f"{field} must be a whole number, got {value!r} ({type(value).__name__})")
    count = int(value)
    if count < 0:
        raise InvalidQuota(f"{field} must be >= 0, got {value!r}")
    if count > _MAX_COUNT:
        raise InvalidQuota(f"{field} must be at most {_MAX_COUNT:,}, got {value!r}"[:200])
    return count


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one job asks for: ``cpu`` cores, ``memory`` GiB, ``gpu`` GPUs,
    ``vram_mb`` MB of GPU memory."""

    cpu: float = 0.0
    memory: float = 0.0
    gpu: int = 0
    vram_mb: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu", _number("cpu", self.cpu))
        object.__setattr__(self, "memory", _number("memory", self.memory))
        object.__setattr__(self, "gpu", _count("gpu", self.gpu))
        object.__setattr__(self, "vram_mb", _number("vram_mb", self.vram_mb))


def _synced(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_dict(self: Any) -> dict[str, Any]:
    """JSON-ready (``synced_at`` as ISO 8601 UTC)."""
    out: dict[str, Any] = dataclasses.asdict(self)
    out["synced_at"] = _iso(self.synced_at)
    return out


@dataclasses.dataclass(frozen=True)
class QuotaInfo:
    """The job-queue module's monitoring view (``GET /quota/{project_id}``). ``*_quota``
    and ``available_*``/``*_usage_percent`` are ``None`` for an unlimited
    resource; ``provider`` is the provider's name (``local``, ``slurm``),
    ``backend`` where it keeps its data (``sqlite``, ``postgresql``,
    ``slurm``), ``synced_at`` when the figures were read from it."""

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
    provider: str
    backend: str
    synced_at: datetime.datetime

    to_dict = _to_dict

    def _repr_html_(self) -> str:
        """Jupyter: one row per resource (used, quota, available, share in use)."""
        from ._html import table

        rows = [
            ("cpu (cores)", self.used_cpu, self.cpu_quota, self.available_cpu, self.cpu_usage_percent),
            ("memory (GiB)", self.used_memory, self.memory_quota, self.available_memory, self.memory_usage_percent),
            ("gpu", self.used_gpu, self.gpu_quota, self.available_gpu, self.gpu_usage_percent),
            ("vram (MB)", self.used_vram_mb, self.vram_quota_mb, self.available_vram_mb, self.vram_usage_percent),
        ]
        caption = (
            f"QuotaInfo: project {self.project_id} ({self.provider}, {self.backend}; "
            f"{'enforced' if self.enforce_quota else 'not enforced'}; synced {self.synced_at.isoformat()})"
        )
        return table(caption, ("resource", "used", "quota", "available", "% used"), rows)


@dataclasses.dataclass(frozen=True)
class QuotaUsage:
    """What a project uses now: totals, per job type (allocations made
    through the provider) and, for Slurm, what its running jobs use."""

    project_id: str
    cpu: float
    memory: float
    gpu: int
    vram_mb: float
    by_job_type: dict[str, Resources]
    slurm_jobs: Resources | None
    provider: str
    backend: str
    synced_at: datetime.datetime

    to_dict = _to_dict


@dataclasses.dataclass(frozen=True)
class QuotaDecision:
    """The answer to a check or an allocation, with the reason when
    refused (naming the project and the resource). ``never_fits``: the
    request alone exceeds the quota, so waiting cannot help."""

    allowed: bool
    reason: str | None = None
    resource: str | None = None
    never_fits: bool = False

    def __bool__(self) -> bool:
        return self.allowed


def _project(project_id: object) -> str:
    if isinstance(project_id, uuid.UUID):
        return str(project_id)
    if isinstance(project_id, str):
        return project_id
    raise InvalidQuota(f"project_id must be a UUID or a str, got {project_id!r} ({type(project_id).__name__})")


def _job_type(job_type: object) -> str:
    if isinstance(job_type, JobTypeEnum):
        return job_type.value
    if isinstance(job_type, str):
        try:
            return JobTypeEnum(job_type.lower()).value
        except ValueError:
            pass
    names = ", ".join(t.name for t in JobTypeEnum)
    raise InvalidQuota(f"job_type must be a JobTypeEnum ({names}), got {job_type!r}")


def _resources(resources: object) -> Resources:
    if not isinstance(resources, Resources):
        raise InvalidQuota(f"resources must be a Resources, got {resources!r} ({type(resources).__name__})")
    return resources


class QuotaProvider(abc.ABC):
    """The job-queue module's interface. Subclass it to plug in another backend: the
    four abstract methods are the contract; ``set_quota``/``usage`` are
    optional (they raise ``NotImplementedError`` unless overridden), and
    ``check_quota_detail`` derives a reason from ``check_quota``."""

    #: What ``get_scheduler_info()["quota_provider"]`` shows.
    name: ClassVar[str] = "custom"

    @abc.abstractmethod
    def get_quota(self, project_id: ProjectId) -> QuotaInfo | None:
        """Get quota information."""

    @abc.abstractmethod
    def check_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> bool:
        """Check quota availability."""

    @abc.abstractmethod
    def allocate_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> bool:
        """Allocate quota."""

    @abc.abstractmethod
    def release_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> None:
        """Release quota."""

    def set_quota(
        self,
        project_id: ProjectId,
        *,
        cpu_quota: float | None = _UNSET,
        memory_quota: float | None = _UNSET,
        gpu_quota: int | None = _UNSET,
        vram_quota_mb: float | None = _UNSET,
        enforce_quota: bool = _UNSET,
    ) -> QuotaInfo:
        """The job-queue module's ``PATCH /quota/{project_id}``: fields left out keep
        their value, ``None`` makes a resource unlimited. Validates the
        fields and hands those given to ``_apply_quota``."""
        given = {
            "cpu_quota": cpu_quota,
            "memory_quota": memory_quota,
            "gpu_quota": gpu_quota,
            "vram_quota_mb": vram_quota_mb,
            "enforce_quota": enforce_quota,
        }
        fields = {k: v for k, v in given.items() if v is not _UNSET}
        for key in ("cpu_quota", "memory_quota", "vram_quota_mb"):
            if fields.get(key) is not None:
                _number(key, fields[key])
        if fields.get("gpu_quota") is not None:
            _count("gpu_quota", fields["gpu_quota"])
        if "enforce_quota" in fields and not isinstance(fields["enforce_quota"], bool):
            raise InvalidQuota(f"enforce_quota must be a bool, got {fields['enforce_quota']!r}")
        return self._apply_quota(_project(project_id), fields)

    def _apply_quota(self, project_id: str, fields: dict[str, Any]) -> QuotaInfo:
        """Store the validated ``set_quota`` fields (a subclass supporting
        ``set_quota`` overrides this, or ``set_quota`` itself)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement set_quota")

    def usage(self, project_id: ProjectId) -> QuotaUsage:
        """What the project uses now."""
        raise NotImplementedError(f"{type(self).__name__} does not implement usage")

    def describe(self) -> str:
        """The provider and where its data lives (for logs and the CLI)."""
        return f"{self.name} ({type(self).__name__})"

    def check_quota_detail(
        self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> QuotaDecision:
        """``check_quota`` with the reason when it refuses."""
        if self.check_quota(project_id, resources, job_type):
            return QuotaDecision(True)
        return QuotaDecision(False, f"project {str(project_id)!r}: over quota ({self.name})")

    def allocate_quota_detail(
        self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> QuotaDecision:
        """``allocate_quota`` with the reason when it refuses."""
        if self.allocate_quota(project_id, resources, job_type):
            return QuotaDecision(True)
        return QuotaDecision(False, f"project {str(project_id)!r}: over quota ({self.name})")


def _decision(denied: Mapping[str, Any] | None) -> QuotaDecision:
    if denied is None:
        return QuotaDecision(True)
    return QuotaDecision(False, denied["reason"], denied["resource"], denied["never_fits"])


def _amounts(d: Mapping[str, Any]) -> Resources:
    return Resources(cpu=d["cpu"], memory=d["memory"], gpu=d["gpu"], vram_mb=d["vram_mb"])


class _BuiltinProvider(QuotaProvider):
    """A provider over one Rust backend (``_core._QuotaBackend``)."""

    _backend: _QuotaBackend

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql`` or ``slurm``."""
        return self._backend.kind

    def describe(self) -> str:
        return f"{self.name} ({self._backend.describe()})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._backend.describe()}>"

    def _info(self, raw: Mapping[str, Any]) -> QuotaInfo:
        fields = {k: v for k, v in raw.items() if k not in ("provider", "synced_at_ms")}
        return QuotaInfo(
            **fields, provider=self.name, backend=raw["provider"], synced_at=_synced(raw["synced_at_ms"])
        )

    def get_quota(self, project_id: ProjectId) -> QuotaInfo | None:
        raw = self._backend.get(_project(project_id))
        return None if raw is None else self._info(raw)

    def _apply_quota(self, project_id: str, fields: Any) -> QuotaInfo:
        return self._info(self._backend.set(project_id, fields))

    def _request(
        self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> tuple[str, Any, tuple[float, float, int, float]]:
        r = _resources(resources)
        return (_project(project_id), _job_type(job_type), (r.cpu, r.memory, r.gpu, r.vram_mb))

    def check_quota_detail(
        self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> QuotaDecision:
        return _decision(self._backend.decide(*self._request(project_id, resources, job_type), False))

    def allocate_quota_detail(
        self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> QuotaDecision:
        return _decision(self._backend.decide(*self._request(project_id, resources, job_type), True))

    def check_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> bool:
        return self.check_quota_detail(project_id, resources, job_type).allowed

    def allocate_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> bool:
        return self.allocate_quota_detail(project_id, resources, job_type).allowed

    def release_quota(self, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum) -> None:
        self._backend.release(*self._request(project_id, resources, job_type))

    @property
    def supports_holds(self) -> bool:
        """Whether allocations can be recorded by holder (``allocate_quota_held``):
        what makes a job scheduler's quota crash-consistent. SQLite only."""
        return self._backend.kind == "sqlite"

    def allocate_quota_held(
        self, holder: str, project_id: ProjectId, resources: Resources, job_type: JobTypeEnum
    ) -> QuotaDecision:
        """``allocate_quota_detail`` recorded under ``holder`` in the same
        transaction as the usage it adds; a holder that already holds is
        allowed again without a second charge."""
        return _decision(self._backend.allocate_held(holder, *self._request(project_id, resources, job_type)))

    def release_quota_held(self, holder: str) -> bool:
        """Releases what ``holder`` holds (True) or nothing (False), in one
        transaction with forgetting the hold: a second call does nothing."""
        return self._backend.release_held(holder)

    def quota_holds(self, prefix: str) -> list[str]:
        """The holders starting with ``prefix``."""
        return [h for h, _project, _type in self._backend.holds(prefix)]

    def usage(self, project_id: ProjectId) -> QuotaUsage:
        raw = self._backend.usage(_project(project_id))
        slurm = raw["slurm_jobs"]
        return QuotaUsage(
            project_id=raw["project_id"],
            cpu=raw["cpu"],
            memory=raw["memory"],
            gpu=raw["gpu"],
            vram_mb=raw["vram_mb"],
            by_job_type={k: _amounts(v) for k, v in raw["by_job_type"].items()},
            slurm_jobs=None if slurm is None else _amounts(slurm),
            provider=self.name,
            backend=raw["provider"],
            synced_at=_synced(raw["synced_at_ms"]),
        )


class LocalQuotaProvider(_BuiltinProvider):
    """Quotas in a database: SQLite at ``path`` (default
    ``$XDG_STATE_HOME/plugin-scheduling/quotas.db``), or PostgreSQL when
    ``dsn`` (``postgresql://user@host:port/db``) is given. Check-and-allocate
    is one transaction holding the project's lock (SQLite ``BEGIN
    IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE``), so concurrent
    allocations from any number of threads, processes or hosts never exceed
    a quota.

    No wait is unbounded: with PostgreSQL a write waits at most
    ``lock_timeout`` seconds (default 10; the session's ``lock_timeout``,
    with ``statement_timeout`` three times as long) for a project's row
    that another transaction holds, then raises ``QuotaBackendError`` naming
    the project and saying its row is locked; with SQLite a write waits up
    to 30 s for another process's write lock.

    Amounts are counted exactly, in millicores, KiB of memory and KiB of
    VRAM: a value that is not a whole number of those units (``cpu=0.0004``,
    ``cpu=1.0005``) is refused with ``InvalidQuota`` naming the field,
    never rounded (rounded, 0.0004 cores would count as 0 and any number of
    them would fit a 0.001-core quota)."""

    name: ClassVar[str] = "local"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        dsn: str | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        if path is not None and dsn is not None:
            raise InvalidQuota("give path (SQLite) or dsn (PostgreSQL), not both")
        if lock_timeout is not None:
            if dsn is None:
                raise InvalidQuota("lock_timeout applies to PostgreSQL (dsn=...); SQLite waits up to 30 s")
            seconds = _number("lock_timeout", lock_timeout)
            if not 0.001 <= seconds <= 3600:
                raise InvalidQuota(f"lock_timeout must be between 0.001 and 3600 seconds, got {lock_timeout!r}")
            lock_timeout = seconds
        if dsn is not None:
            if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
                raise InvalidQuota(f"dsn must be a 'postgresql://...' URL, got {dsn!r}"[:200])
            self._backend = _QuotaBackend.postgres(dsn, lock_timeout)
        else:
            self._backend = _QuotaBackend.sqlite(None if path is None else Path(path))


class SlurmQuotaProvider(_BuiltinProvider):
    """Quotas as Slurm association limits. Project ``P`` is the account
    ``{account_prefix}{P}`` (prefix from ``SLURM_ACCOUNT_PREFIX``, default
    ``project-``; Slurm folds account names to lower case). ``set_quota``
    creates the account (with an association for ``user``, default the
    current user, so it can submit jobs there) and sets its ``GrpTRES``
    (``cpu``, ``mem``, ``gres/gpu``) with ``sacctmgr``; Slurm then holds back
    any job of the account that would exceed them. ``get_quota``/
    ``check_quota`` read the limits and the usage of running jobs from
    slurmctld (``scontrol show assoc_mgr``, the counters Slurm enforces
    with; ``set_quota`` returns once slurmctld shows the new limits), plus what was allocated through this provider (a
    local ledger, ``ledger``). Slurm has no VRAM resource and always
    enforces, so ``vram_quota_mb`` and ``enforce_quota=False`` are refused
    (``InvalidQuota``). The Slurm client commands use the environment
    (``SLURM_CONF``) and ``bin_dir`` (default: ``PATH``)."""

    name: ClassVar[str] = "slurm"

    def __init__(
        self,
        account_prefix: str | None = None,
        *,
        user: str | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        ledger: str | os.PathLike[str] | None = None,
    ) -> None:
        if account_prefix is None:
            account_prefix = os.environ.get("SLURM_ACCOUNT_PREFIX", "project-")
        if not isinstance(account_prefix, str):
            raise InvalidQuota(f"account_prefix must be a str, got {account_prefix!r}")
        self.account_prefix = account_prefix
        self.user: str = getpass.getuser() if user is None else user
        self._backend = _QuotaBackend.slurm(
            account_prefix,
            self.user,
            None if bin_dir is None else Path(bin_dir),
            None if ledger is None else Path(ledger),
        )

    def account(self, project_id: ProjectId) -> str:
        """The Slurm account of a project."""
        return f"{self.account_prefix}{_project(project_id)}".lower()


def as_quota_provider(provider: object) -> QuotaProvider:
    """``provider`` if it is a ``QuotaProvider`` (built-in or a Python
    subclass), else ``TypeError`` -- what the job scheduler calls on
    ``quotas=``."""
    if not isinstance(provider, QuotaProvider):
        raise TypeError(
            f"quotas must be a plugin_scheduling.quotas.QuotaProvider, got {provider!r} ({type(provider).__name__})"
        )
    return provider


def quota_provider_from_env(environ: Mapping[str, str] | None = None) -> QuotaProvider:
    """The provider the job-queue module's configuration names: ``QUOTA_PROVIDER`` is
    ``local`` (default; ``QUOTA_DATABASE_URL=postgresql://...`` selects
    PostgreSQL, ``QUOTA_DB_PATH`` the SQLite file) or ``slurm``
    (``SLURM_ACCOUNT_PREFIX``, default ``project-``). ``k8s`` is documented
    but not shipped: it raises ``InvalidQuota`` naming the variable."""
    env = os.environ if environ is None else environ
    kind = env.get("QUOTA_PROVIDER", "local").strip().lower() or "local"
    if kind == "local":
        dsn = env.get("QUOTA_DATABASE_URL") or None
        path = env.get("QUOTA_DB_PATH") or None
        return LocalQuotaProvider(dsn=dsn) if dsn else LocalQuotaProvider(path=path)
    if kind == "slurm":
        return SlurmQuotaProvider(env.get("SLURM_ACCOUNT_PREFIX", "project-"))
    raise InvalidQuota(
        f"QUOTA_PROVIDER must be 'local' or 'slurm', got {kind!r}"
        + (" (the Kubernetes ResourceQuota provider is a documented design, not shipped)" if kind == "k8s" else "")
    )
