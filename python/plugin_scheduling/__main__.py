"""Command line: ``python -m plugin_scheduling {demo,stats,simulate,trace}``."""

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
    from . import _cli_sim

    _cli_sim.add_parsers(commands)
    args = parser.parse_args(argv)
    if args.command in _cli_sim.COMMANDS:
        return _cli_sim.run(args)
    if args.command == "demo":
        from . import _demo

        _demo.main()
        return 0
    from . import _cli_stats

    return _cli_stats.run(as_json=args.json, watch=args.watch)


if __name__ == "__main__":
    sys.exit(main())
