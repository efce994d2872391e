"""Command line: ``python -m plugin_scheduling {demo,stats,jobs}``."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value) and value <= 86_400):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400], got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin_scheduling")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="plugins queueing for a GPU (simulated) on this machine's real RAM/CPU")
    stats = commands.add_parser("stats", help="this machine's RAM, CPU and GPUs")
    stats.add_argument("--json", action="store_true", help="print the SystemStats dict as JSON")
    stats.add_argument("--watch", type=_positive_seconds, metavar="SECONDS", help="refresh until Ctrl-C")
    jobs = commands.add_parser("jobs", help="jobs in a JobScheduler journal (list, show ID, history)")
    jobs.add_argument("--journal", metavar="PATH", help="journal file (default $XDG_STATE_HOME/plugin-scheduling/jobs.db)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument("view", nargs="?", choices=["list", "show", "history"], default="list")
    jobs.add_argument("job_id", nargs="?", type=int)
    args = parser.parse_args(argv)
    if args.command == "jobs":
        if args.view == "show" and args.job_id is None:
            parser.error("jobs show needs a job ID")
        from . import _cli_jobs

        return _cli_jobs.run(args.journal, args.view, args.job_id, args.json)
    if args.command == "demo":
        from . import _demo

        _demo.main()
        return 0
    from . import _cli_stats

    return _cli_stats.run(as_json=args.json, watch=args.watch)


if __name__ == "__main__":
    sys.exit(main())
