"""What the service reads from a ``JobScheduler``, in one place.

The service runs in the scheduler's event loop; every read here happens on
that loop's thread (routes are ``async def``), so it sees the table between
two transitions, never in the middle of one. The few private attributes of
``JobScheduler`` it needs (the table's raw records, the last machine
reading, the capacity) are read only here."""

from __future__ import annotations

import datetime
import json
import math
import time
from typing import Any, Iterable, Mapping


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


def plan_starts(
    now: float,
    cpu_total: float,
    gpu_total: int,
    running: Iterable[tuple[float, int, float | None]],
    pending: Iterable[tuple[int, float, int, float | None]],
) -> dict[int, float | None]:
    """Estimated start (same clock as ``now``) of each pending job, taken in
    the policy's order: a job starts at the first moment at or after the
    previous job's start when enough CPU cores and GPUs are free, counting
    running jobs as ending at their ``estimated_duration``. Unknown once a
    job ahead that is needed to make room has no estimate, or when the job
    cannot fit the machine. Assumes no job arrives ahead (a later, higher
    priority arrival can only delay it) and no backfill (which can only
    bring it earlier for the backfilled ones)."""
    held: list[tuple[float, int, float | None]] = list(running)  # (cpu, gpus, end or None)
    out: dict[int, float | None] = {}
    t_prev = now
    for job_id, cpu, gpus, est in pending:
        if cpu > cpu_total + 1e-9 or gpus > gpu_total:
            out[job_id] = None
            break  # unknown from here on (``pending`` may be lazy: nothing more is read)
        candidates = sorted({t_prev, *(end for _, _, end in held if end is not None and end > t_prev)})
        start: float | None = None
        for t in candidates:
            busy_cpu = sum(c for c, _, end in held if end is None or end > t)
            busy_gpu = sum(g for _, g, end in held if end is None or end > t)
            if busy_cpu + cpu <= cpu_total + 1e-9 and busy_gpu + gpus <= gpu_total:
                start = t
                break
        out[job_id] = start
        if start is None:
            break
        t_prev = start
        held.append((cpu, gpus, None if est is None else start + est))
        held = [h for h in held if h[2] is None or h[2] > start]
    return out


class SchedulerView:
    """Read access to one scheduler (see the module's docstring)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._table = scheduler._table

    def raw(self, job_id: int) -> dict[str, Any]:
        return dict(self._table.job(job_id))

    def records(self, state: str | None = None) -> list[dict[str, Any]]:
        return list(self._table.records(state))

    def now(self) -> float:
        return float(self._table.now())

    def describe(self, job_id: int) -> str:
        return str(self._table.describe(job_id))

    def capacity(self) -> tuple[float, int, float]:
        cpu, gpus, mem = self.scheduler._capacity()
        return float(cpu), int(gpus), float(mem)

    def last_stats(self) -> Mapping[str, Any]:
        return getattr(self.scheduler, "_last_stats", None) or {}

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
            v = self.view
            now = v.now()
            cpu, gpus, _ = v.capacity()
            running = []
            for d in v.records("RUNNING") + v.records("PAUSED"):
                r = d["requirements"]
                est = d["estimated_duration"]
                if d["state"] == "PAUSED" or est is None or d["started"] is None:
                    end = None
                else:
                    end = now + max(est - (now - d["started"]), 0.0)
                running.append((float(r["cpu_cores"]), int(r["gpu_count"]), end))
            if until is None:
                by_id = {d["job_id"]: d for d in v.records("QUEUED")}
                ahead: Iterable[Mapping[str, Any]] = (by_id[j] for j in self.pending[:want] if j in by_id)
            else:
                ahead = (v.raw(j) for j in self.pending[:want])
            pending = ((q["job_id"], float(q["requirements"]["cpu_cores"]), int(q["requirements"]["gpu_count"]), q["estimated_duration"]) for q in ahead)
            plan = plan_starts(now, cpu, gpus, running, pending)
            plan.update({j: None for j in self.pending[:want] if j not in plan})  # unknown: computed, not missing
            offset = time.time() - now
            self._starts = {k: (None if t is None else t + offset) for k, t in plan.items()}
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
