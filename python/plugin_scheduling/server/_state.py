"""What the service reads from a ``JobScheduler``, in one place.

The service runs in the scheduler's event loop; every read here happens on
that loop's thread (routes are ``async def``), so it sees the table between
two transitions, never in the middle of one. What it needs of
``JobScheduler`` (raw records, the last machine reading, the capacity, the
start plan computed by the core) comes from its public read methods."""

from __future__ import annotations

import datetime
import json
import math
import time
from typing import Any, Mapping


_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
#: Jobs the start estimate walks at most: a job further back is "unknown".
PLAN_LIMIT = 500


def iso(unix: float | None) -> str | None:
    if unix is None or not math.isfinite(unix):
        return None
    when = datetime.datetime.fromtimestamp(unix, tz=datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def categorize(state: str, block_reason: str | None, position: int | None, ahead: int | None, describe: str | None, policy: str) -> dict[str, Any]:
    """``reason``: why a job is where it is (category + message)."""
    if state == "PAUSED":
        return {"category": "held", "message": block_reason or "paused (resume it to continue)"}
    if state != "QUEUED":
        return {"category": None, "message": None}
    if block_reason:
        low = block_reason.lower()
        if "quota" in low:
            category = "quota"
        elif "max_concurrent_jobs" in low:
            category = "queue_limit"
        elif "trigger(project_id" in low:
            category = "policy"
        else:
            category = "resources"
        return {"category": category, "message": block_reason}
    if ahead:
        msg = f"{ahead} job{'s' if ahead != 1 else ''} ahead in {policy} order"
        return {"category": "policy", "message": f"{msg}; {describe}" if describe else msg}
    return {"category": None, "message": "next in line: starts at the next pass if it fits"}


class SchedulerView:
    """Read access to one scheduler (see the module's docstring), through
    its public read methods only."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def raw(self, job_id: int) -> dict[str, Any]:
        return dict(self.scheduler.job_record(job_id))

    def records(self, state: str | None = None) -> list[dict[str, Any]]:
        return list(self.scheduler.job_records(state))

    def now(self) -> float:
        return float(self.scheduler.clock())

    def describe(self, job_id: int) -> str:
        return str(self.scheduler.describe_order(job_id))

    def capacity(self) -> tuple[float, int, float]:
        cpu, gpus, mem = self.scheduler.capacity()
        return float(cpu), int(gpus), float(mem)

    def last_stats(self) -> Mapping[str, Any]:
        return self.scheduler.last_stats() or {}

    def unix(self, d: Mapping[str, Any], clock_value: float | None) -> float | None:
        """A table-clock time of job ``d`` as a Unix time."""
        if clock_value is None:
            return None
        return float(d["submitted_unix"]) - float(d["submitted"]) + float(clock_value)

    def now_unix(self) -> float:
        return time.time()


class Snapshot:
    """One request's consistent view: the pending order, computed once."""

    def __init__(self, view: SchedulerView) -> None:
        self.view = view
        self.pending = list(view.scheduler.pending_jobs())
        self.position = {job_id: i + 1 for i, job_id in enumerate(self.pending)}
        self._starts: dict[int, float | None] | None = None

    def starts(self, until: int | None = None) -> dict[int, float | None]:
        """Estimated starts (Unix time) of the first ``until`` pending jobs
        (all when None, at most ``PLAN_LIMIT``; later ones are unknown)."""
        want = min(len(self.pending) if until is None else until, PLAN_LIMIT)
        if self._starts is None or len(self._starts) < want:
            # planned by the core (jobs::plan), in the policy's order, per resource
            plan = self.view.scheduler.queue_plan(want)
            self._starts = {p["job_id"]: p["estimated_start"] for p in plan}
            self._starts.update({j: None for j in self.pending[:want] if j not in self._starts})
        return self._starts

    def job_view(self, d: Mapping[str, Any]) -> dict[str, Any]:
        v = self.view
        job_id = d["job_id"]
        state = d["state"]
        position = self.position.get(job_id) if state == "QUEUED" else None
        ahead = None if position is None else position - 1
        block = v.scheduler.block_reason(job_id) if state in ("QUEUED", "PAUSED") else None
        describe = v.describe(job_id) if state == "QUEUED" and not block and ahead else None
        estimated: float | None = None
        if state == "QUEUED":
            if block is None and ahead == 0:
                estimated = v.now_unix()
            else:
                estimated = self.starts(position).get(job_id)
        command = None
        if d["kind"] == "command":
            try:
                argv = json.loads(d["payload"])["argv"]
                command = list(argv)
            except (ValueError, KeyError, TypeError):
                command = None
        r = d["requirements"]
        return {
            "id": job_id,
            "name": d["module"],
            "state": state,
            "user": d["user"],
            "project": d["project"],
            "queue": d["queue"],
            "priority": d["priority"],
            "submitted_at": iso(d["submitted_unix"]),
            "started_at": iso(v.unix(d, d["started"])),
            "ended_at": iso(v.unix(d, d["ended"])),
            "reason": categorize(state, block, position, ahead, describe, v.scheduler.policy),
            "position": position,
            "ahead": ahead,
            "estimated_start": iso(estimated),
            "command": command,
            "requirements": {k: r[k] for k in ("cpu_cores", "memory_mb", "gpu_count", "vram_mb")},
            "progress": d["progress"],
            "progress_message": d["progress_message"],
            "error": d["error"],
            "attempts": d["attempts"],
            "deadline_at": iso(None if d["deadline"] is None else v.unix(d, d["submitted"] + d["deadline"])),
            "estimated_duration": d["estimated_duration"],
            "kind": d["kind"],
        }
