"""Request and response bodies (pydantic): the OpenAPI schema is generated from these."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from ..quotas import QuotaInfo

JobStateName = Literal["QUEUED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]
ReasonCategory = Literal["quota", "resources", "queue_limit", "policy", "held"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
#: A job id in a path or query (the journal's ids are unsigned 63-bit).
#: A project id in a path or query: a name as in the tokens file (or a UUID).
ProjectId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
JobId = Annotated[int, Field(ge=0, le=2**63 - 1)]
Arg = Annotated[str, Field(max_length=32768)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not a number, 0 not a boolean


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail


class Requirements(_Strict):
    cpu_cores: float = Field(default=1.0, ge=0, le=1_000_000)
    memory_mb: float = Field(default=0.0, ge=0, le=1e12)
    gpu_count: int = Field(default=0, ge=0, le=4096)
    vram_mb: float = Field(default=0.0, ge=0, le=1e12)


class JobSubmit(_Strict):
    """``POST /api/v1/jobs``: the command is an argv list, run without a shell."""

    name: Name = "job"
    command: list[Arg] = Field(min_length=1, max_length=4096, description="argv: the program and its arguments; never run through a shell")
    priority: float = Field(default=50.0, ge=0, le=100, description="0-100 (seed 004's scale)")
    project: Name | None = Field(default=None, description="one of the token's projects (default: its only one)")
    queue: Name | None = None
    requirements: Requirements = Field(default_factory=Requirements)
    deadline: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, description="seconds from now")
    estimated_duration: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, description="seconds")
    env: dict[str, Arg] | None = Field(default=None, max_length=1024, description="added to the server's environment")
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("command[0] (the program) must not be empty")
        for i, a in enumerate(v):
            if "\x00" in a:
                raise ValueError(f"command[{i}] contains a NUL character")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for k, val in (v or {}).items():
            if not _ENV_NAME.match(k):
                raise ValueError(f"env name {k!r} is not a valid variable name")
            if "\x00" in val:
                raise ValueError(f"env[{k!r}] contains a NUL character")
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("cwd contains a NUL character")
        return v


class PriorityPatch(_Strict):
    priority: float = Field(ge=0, le=100)


class Reason(BaseModel):
    """Why a job is where it is: ``category`` null when it is not waiting."""

    category: ReasonCategory | None
    message: str | None


class JobView(BaseModel):
    id: int
    name: str
    state: JobStateName
    user: str | None
    project: str | None
    queue: str
    priority: float
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    reason: Reason
    position: int | None = Field(description="1 = next in the policy's order; null unless QUEUED")
    ahead: int | None = Field(description="jobs ahead of it in the policy's order; null unless QUEUED")
    estimated_start: str | None = Field(description="ISO 8601 UTC; null when unknown")
    command: list[str] | None
    requirements: Requirements
    progress: float
    progress_message: str | None
    error: str | None
    attempts: int
    deadline_at: str | None
    estimated_duration: float | None
    kind: str


class JobLogs(BaseModel):
    job_id: int
    tail: int
    stdout: str
    stderr: str
    truncated: bool = Field(description="older output was dropped (bounded capture)")


class SchedulerInfo(BaseModel):
    """Seed 004's ``GET /api/v1/jobs/scheduler/info``."""

    policy: str
    quota_provider: str | None
    active_queues: int
    pending_jobs: int


class TriggerRequest(_Strict):
    project_id: Name | None = None


class TriggerResult(BaseModel):
    scheduled_count: int
    remaining_pending: int


class QueueStats(BaseModel):
    """Seed 004's ``GET /api/v1/queues`` item (``id`` is the queue's name)."""

    id: str
    name: str
    priority: int
    max_concurrent_jobs: int | None
    running_jobs: int
    pending_jobs: int
    total_jobs: int


class QuotaPatch(_Strict):
    """Seed 004's ``PATCH /api/v1/queues/quota/{project_id}``: fields left out
    keep their value; ``null`` makes a resource unlimited."""

    cpu_quota: float | None = Field(default=None, ge=0)
    memory_quota: float | None = Field(default=None, ge=0)
    gpu_quota: int | None = Field(default=None, ge=0)
    vram_quota_mb: float | None = Field(default=None, ge=0)
    enforce_quota: bool | None = None


def _quota_view() -> type[BaseModel]:
    """Seed 004's quota usage view: ``QuotaInfo.to_dict()``'s fields (one
    source: the dataclass), ``synced_at`` as an ISO 8601 string."""
    hints = typing.get_type_hints(QuotaInfo)
    fields: dict[str, Any] = {f.name: (hints[f.name], ...) for f in dataclasses.fields(QuotaInfo)}
    fields["synced_at"] = (str, ...)
    return create_model("QuotaView", __doc__="Seed 004's quota usage view (GET /api/v1/queues/quota/{project_id}).", **fields)


QuotaView = _quota_view()


class GpuGrant(BaseModel):
    job: str | None = Field(description="the job's name when the token may see it, else null")
    vram_mb: float
    started: bool


class GpuView(BaseModel):
    index: int
    name: str | None
    capacity_mb: float | None
    used_mb: float | None
    free_mb: float | None
    reserved_mb: float
    utilization_percent: float | None
    grants: list[GpuGrant]
    waiters: int


class WhoAmI(BaseModel):
    user: str
    projects: list[str]
    admin: bool
