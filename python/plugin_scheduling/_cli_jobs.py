"""``python -m plugin_scheduling jobs [--journal PATH] [list|show ID|history] [--json]``."""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any

from ._core import JobTable, UnknownJob


def _table(journal: str | None) -> JobTable:
    from .jobs import default_journal_path

    path = journal or os.fspath(default_journal_path())
    if not os.path.exists(path):
        raise FileNotFoundError(f"no job journal at {path}")
    table = JobTable("fifo", path, own=False, retention_jobs=None, retention_age_s=None)
    table.view()  # the records as journaled; writes nothing (a scheduler may be running on it)
    return table


def _when(unix: float | None) -> str:
    """ISO 8601 in UTC (``2026-12-04T20:11:56.123Z``), ``-`` for none."""
    if unix is None:
        return "-"
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Clock seconds of this viewer's own table: meaningless to a reader (the
# wall-clock ``*_at`` fields carry the times).
_CLOCK_FIELDS = ("submitted", "submitted_unix", "started", "ended", "deadline")


def _shown(job: dict[str, Any]) -> dict[str, Any]:
    """A job record as the CLI prints it: times as ISO 8601 UTC, the payload
    as the object it encodes (a command's argv, env and cwd)."""
    out = {k: v for k, v in job.items() if k not in _CLOCK_FIELDS}
    submitted = job.get("submitted_at")
    for key in ("submitted_at", "started_at", "ended_at"):
        out[key] = None if job.get(key) is None else _when(job[key])
    deadline = job.get("deadline")
    if deadline is not None and submitted is not None:
        out["deadline_at"] = _when(submitted + (deadline - job["submitted"]))
    payload = job.get("payload")
    if isinstance(payload, str) and payload[:1] in ("{", "["):
        try:
            out["payload"] = json.loads(payload)
        except ValueError:
            pass
    return out


def _history_shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**h, "at": _when(h["at"])} for h in rows]


def run(journal: str | None, command: str, job_id: int | None, as_json: bool) -> int:
    try:
        table = _table(journal)
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if command == "show":
        assert job_id is not None
        try:
            job = table.job(job_id)
        except UnknownJob:
            print(f"error: no job with id {job_id}", file=sys.stderr)
            return 1
        history = table.history(job_id)
        shown = _shown(job)
        if as_json:
            shown["history"] = _history_shown(history)
            print(json.dumps(shown, indent=2))
        else:
            for key, value in shown.items():
                print(f"{key:>20}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
            for h in history:
                print(f"{_when(h['at']):>24}  {h['from'] or '-':>9} -> {h['to']:<9} {h['call']} {h['reason'] or ''}")
        return 0
    rows: list[dict[str, Any]]
    if command == "history":
        rows = table.history(job_id, 1000)
        if as_json:
            print(json.dumps(_history_shown(rows), indent=2))
            return 0
        for h in rows:
            print(f"{_when(h['at'])}  job {h['job_id']:>6}  {h['from'] or '-':>9} -> {h['to']:<9} {h['call']} {h['reason'] or ''}")
        return 0
    rows = table.records()
    if as_json:
        print(json.dumps([_shown(j) for j in rows], indent=2))
        return 0
    print(f"{'ID':>6}  {'MODULE':<24} {'STATE':<10} {'PRIO':>5} {'QUEUE':<12} {'TRIES':>5} {'SUBMITTED (UTC)':<24} ERROR")
    for j in rows:
        print(
            f"{j['job_id']:>6}  {j['module'][:24]:<24} {j['state']:<10} {j['priority']:>5.0f} {j['queue'][:12]:<12} "
            f"{j['attempts']:>5} {_when(j['submitted_at']):<24} {(j['error'] or '')[:60]}"
        )
    return 0
