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


DESCRIPTION = """\
Decides whether, when and on which GPU a plugin, model or job may run: admission for
plugins (demo), this machine's stats, per-project quotas, a job journal, a cluster
simulator with its traces, the shared ledger of every process on this host, and a
job service (REST API, live dashboard) with its command-line client.

Run '%(prog)s COMMAND --help' for a command's options and examples."""

EPILOG = """\
examples:
  %(prog)s demo
  %(prog)s stats --watch 1
  %(prog)s trace generate --jobs 500 -o trace.csv
  %(prog)s simulate trace.csv --gpus 16 --policy fifo,backfill
  %(prog)s quota get my-project
  %(prog)s serve --port 8765
  %(prog)s jobs --url http://127.0.0.1:8765 list"""

JOBS_EPILOG = """\
actions:
  list          every job of the journal: id, module, state, priority, queue, tries, error (default)
  show ID       one job's record and its state history
  history [ID]  the state changes of every job (or of job ID), oldest first

examples:
  %(prog)s
  %(prog)s show 12 --json
  %(prog)s --journal ./jobs.db history"""


LEDGER_EPILOG = """\
examples:
  %(prog)s                 the ledger ReservationScheduler(shared=True) uses
  %(prog)s my-team --json  the ledger of shared='my-team'"""


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__, _cli_ledger, _cli_quota, _cli_sim
    from ._cli_util import HelpFormatter

    parser = argparse.ArgumentParser(
        prog=_prog(), description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    commands.add_parser(
        "demo",
        help="plugins queueing for a GPU (simulated) on this machine's real RAM/CPU",
        description="Four plugins queue for a simulated 24 GB GPU and are admitted as memory frees up.",
        epilog="examples:\n  %(prog)s            (Ctrl-C stops it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats = commands.add_parser(
        "stats",
        help="this machine's RAM, CPU and GPUs",
        description="This machine's RAM, CPU and GPUs (per device: memory, load, temperature, processes).",
        epilog="examples:\n  %(prog)s\n  %(prog)s --json\n  %(prog)s --watch 2",
        formatter_class=HelpFormatter,
    )
    stats.add_argument("--json", action="store_true", help="print the SystemStats dict as JSON")
    stats.add_argument("--watch", type=_positive_seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    _cli_quota.add_parser(commands)
    jobs = commands.add_parser(
        "jobs",
        help="jobs in a JobScheduler journal (list, show ID, history)",
        description="Reads a JobScheduler journal (writes nothing: a scheduler may be running on it).",
        epilog=JOBS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jobs.add_argument(
        "--url", metavar="URL",
        help="a server's jobs instead (submit|list|show|cancel|pause|resume|logs): jobs --url URL --help",
    )
    jobs.add_argument("--journal", metavar="PATH", help="journal file (default $XDG_STATE_HOME/plugin-scheduling/jobs.db)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument(
        "view", nargs="?", choices=["list", "show", "history"], default="list", metavar="ACTION",
        help="list (default), show or history; see actions below",
    )
    jobs.add_argument("job_id", nargs="?", type=int, metavar="ID", help="the job (show: required; history: optional)")
    jobs.set_defaults(_parser=jobs)
    _cli_sim.add_parsers(commands)
    _cli_ledger.add_parser(commands)
    from . import _cli_serve

    _cli_serve.add_parser(commands)
    ledger = commands.choices["ledger"]
    ledger.description = "The grants and waiters of every process on a shared ledger, as nvidia-smi lists GPU processes (reads only)."
    ledger.epilog = LEDGER_EPILOG
    ledger.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _run(argv: Sequence[str] | None) -> int:
    from . import _cli_ledger, _cli_quota, _cli_sim

    from . import _cli_client

    if _cli_client.wants_client(sys.argv[1:] if argv is None else argv):
        return _cli_client.main(list(sys.argv[2:] if argv is None else argv[1:]))
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        from . import _cli_serve

        return _cli_serve.run(args)
    if args.command == "ledger":
        return _cli_ledger.run(args)
    if args.command == "quota":
        return _cli_quota.run(args)
    if args.command == "jobs":
        if args.view == "show" and args.job_id is None:
            args._parser.error("jobs show needs a job ID, e.g. 'jobs show 12'")
        if args.view == "list" and args.job_id is not None:
            args._parser.error("jobs list takes no job ID (did you mean 'jobs show ID'?)")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; every known mistake ends as one line on stderr and an
    exit status (2: usage, 1: at run time, 130: Ctrl-C), never a traceback.
    ``PLUGIN_SCHEDULING_TRACEBACK=1`` re-raises instead (for bug reports)."""
    import sqlite3

    from ._cli_util import EXIT_RUNTIME, EXIT_USAGE, CliError, os_message, quiet_stdout

    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return code
    except BrokenPipeError:
        quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("PLUGIN_SCHEDULING_TRACEBACK") == "1":
            raise
        if isinstance(error, CliError):
            message, code = error.message, error.code
        elif isinstance(error, OSError):
            message, code = os_message(error), EXIT_RUNTIME
        elif isinstance(error, sqlite3.Error):
            message, code = f"database: {error}", EXIT_RUNTIME
        elif isinstance(error, (ValueError, TypeError)):
            message, code = str(error), EXIT_USAGE
        else:
            message = f"unexpected {type(error).__name__}: {error} (PLUGIN_SCHEDULING_TRACEBACK=1 shows where)"
            code = EXIT_RUNTIME
        first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        try:
            print(f"{_prog()}: error: {first}", file=sys.stderr)
        except (OSError, ValueError):
            pass
        return code


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
