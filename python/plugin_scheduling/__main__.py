"""Command line: ``python -m plugin_scheduling demo``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin_scheduling", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="plugins queueing for a simulated GPU")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import _demo

        _demo.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
