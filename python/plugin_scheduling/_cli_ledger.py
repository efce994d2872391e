"""``python -m plugin_scheduling ledger [NAME] [--json]``: the grants and
waiters of every process on a shared ledger, as ``nvidia-smi`` lists GPU
processes. Reads only: a missing ledger is reported, not created."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping, TextIO

from ._core import SharedLedgerError, _shared_ledger_view

#: The ledger ``shared=True`` uses.
DEFAULT_NAME = "default"


def add_parser(commands: Any) -> None:
    ledger = commands.add_parser("ledger", help="grants and waiters of every process on a shared ledger")
    ledger.add_argument("name", nargs="?", default=DEFAULT_NAME, help="ledger name or path (default: %(default)s)")
    ledger.add_argument("--json", action="store_true", help="print the view as JSON")


def render(view: Mapping[str, Any]) -> str:
    """The view as a table: one row per grant, then one per waiter."""
    policy = f" (policy {view['policy']})" if view.get("policy") else ""
    lines = [f"Shared ledger {view['path']}{policy}"]
    if not view["exists"]:
        lines.append("  (no such ledger yet: nothing held, nobody waiting)")
        return "\n".join(lines)
    rule = "+" + "-" * 8 + "+" + "-" * 18 + "+" + "-" * 22 + "+" + "-" * 9 + "+" + "-" * 11 + "+" + "-" * 10 + "+"
    lines += [rule, f"| {'PID':>6} | {'Process':<16} | {'Plugin':<20} | {'GPUs':<7} | {'VRAM MB':>9} | {'State':<8} |", rule]
    for g in view["grants"]:
        gpus = ",".join(str(d) for d in g["devices"]) or "-"
        state = "running" if g["started"] else "granted"
        lines.append(
            f"| {g['pid']:>6} | {g['process'][:16]:<16} | {g['plugin'][:20]:<20} | {gpus:<7} | {g['vram_mb']:>9,.0f} | {state:<8} |"
        )
    for w in view["waiters"]:
        state = "granted" if w["granted"] else "waiting"
        lines.append(
            f"| {w['pid']:>6} | {w['process'][:16]:<16} | {w['plugin'][:20]:<20} | {'x' + str(w['gpu_count']):<7} | {w['vram_mb']:>9,.0f} | {state:<8} |"
        )
    if not view["grants"] and not view["waiters"]:
        lines.append(f"| {'nothing held, nobody waiting':<81} |")
    lines.append(rule)
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        view = _shared_ledger_view(args.name)
    except (SharedLedgerError, ValueError) as e:
        print(f"plugin-scheduling ledger: {e}", file=sys.stderr)
        return 1
    print(json.dumps(view, indent=2) if args.json else render(view), file=out)
    return 0
