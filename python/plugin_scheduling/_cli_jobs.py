"""``python -m plugin_scheduling jobs [--journal PATH] [list|show ID|history] [--json]``."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ._core import JobTable, UnknownJob


def _table(journal: str | None) -> JobTable:
    from .jobs import default_journal_path

    path = journal or os.fspath(default_journal_path())
    if not os.path.exists(path):
        raise FileNotFoundError(f"no job journal at {path}")
    table = JobTable("fifo", path)
    table.view()  # the records as journaled; writes nothing (a scheduler may be running on it)
    return table


def _when(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


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
        job["history"] = table.history(job_id)
        if as_json:
            print(json.dumps(job, indent=2))
        else:
            for key, value in job.items():
                if key != "history":
                    print(f"{key:>20}: {value}")
            for h in job["history"]:
                print(f"{_when(h['at']):>20}  {h['from'] or '-':>9} -> {h['to']:<9} {h['call']} {h['reason'] or ''}")
        return 0
    rows: list[dict[str, Any]]
    if command == "history":
        rows = table.history(job_id, 1000)
        if as_json:
            print(json.dumps(rows, indent=2))
            return 0
        for h in rows:
            print(f"{_when(h['at'])}  job {h['job_id']:>6}  {h['from'] or '-':>9} -> {h['to']:<9} {h['call']} {h['reason'] or ''}")
        return 0
    rows = table.records()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':>6}  {'MODULE':<24} {'STATE':<10} {'PRIO':>5} {'QUEUE':<12} {'TRIES':>5} ERROR")
    for j in rows:
        print(
            f"{j['job_id']:>6}  {j['module'][:24]:<24} {j['state']:<10} {j['priority']:>5.0f} {j['queue'][:12]:<12} "
            f"{j['attempts']:>5} {(j['error'] or '')[:60]}"
        )
    return 0
