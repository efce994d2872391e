"""Command line: ``plugin-scheduling {demo,stats,quota,jobs,simulate,trace,ledger}`` (the
console script) or ``python -m plugin_scheduling ...`` with the same commands."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

#: Exit status after Ctrl-C, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED = 130


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value) and value <= 86_400):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400], got {text!r}")
    return value


def _prog() -> str:
    """How the user invoked us, for the usage line: the console script's own
    name (``plugin-scheduling``), or ``python -m plugin_scheduling``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not invoked or invoked in ("__main__.py", "-c", "-m") or invoked.startswith("python"):
        return "python -m plugin_scheduling"
    return invoked


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__, _cli_client

    if _cli_client.wants_client(sys.argv[1:] if argv is None else argv):
        return _cli_client.main(list(sys.argv[2:] if argv is None else argv[1:]))

    parser = argparse.ArgumentParser(
        prog=_prog(), description="Resource-aware admission of plugins (GPU VRAM, RAM): a demo and this machine's stats."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="plugins queueing for a GPU (simulated) on this machine's real RAM/CPU")
    stats = commands.add_parser("stats", help="this machine's RAM, CPU and GPUs")
    stats.add_argument("--json", action="store_true", help="print the SystemStats dict as JSON")
    stats.add_argument("--watch", type=_positive_seconds, metavar="SECONDS", help="refresh until Ctrl-C")
    from . import _cli_quota

    _cli_quota.add_parser(commands)
    jobs = commands.add_parser("jobs", help="jobs in a JobScheduler journal (list, show ID, history)")
    jobs.add_argument("--url", metavar="URL", help="a server's jobs instead (submit|list|show|cancel|pause|resume|logs): jobs --url URL --help")
    jobs.add_argument("--journal", metavar="PATH", help="journal file (default $XDG_STATE_HOME/plugin-scheduling/jobs.db)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument("view", nargs="?", choices=["list", "show", "history"], default="list")
    jobs.add_argument("job_id", nargs="?", type=int)
    from . import _cli_sim

    _cli_sim.add_parsers(commands)
    from . import _cli_ledger

    _cli_ledger.add_parser(commands)
    from . import _cli_serve

    _cli_serve.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _cli_serve.run(args)
    if args.command == "ledger":
        return _cli_ledger.run(args)
    if args.command == "quota":
        return _cli_quota.run(args)
    if args.command == "jobs":
        if args.view == "show" and args.job_id is None:
            parser.error("jobs show needs a job ID")
        from . import _cli_jobs

        return _cli_jobs.run(args.journal, args.view, args.job_id, args.json)
    if args.command in _cli_sim.COMMANDS:
        return _cli_sim.run(args)
    if args.command == "demo":
        from . import _demo

        try:
            _demo.main()
        except KeyboardInterrupt:
            _exit_interrupted()
        return 0
    from . import _cli_stats

    return _cli_stats.run(as_json=args.json, watch=args.watch)


def _exit_interrupted() -> None:
    """Ctrl-C: exit quietly with 130. The demo's plugin threads may be inside a
    blocking wait; ``os._exit`` ends them with the process instead of having
    the interpreter wait for them (or print their tracebacks) at shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
