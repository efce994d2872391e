"""How a server-submitted ``Command`` is wrapped for log capture
(``_logcapture.py``), and how to read the wrapping back from a journaled argv.
Kept apart from ``_logcapture.py`` (which runs with the standard library only)
and from the server (which needs its extra)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

WRAPPER = Path(__file__).with_name("_logcapture.py")


def wrap(argv: Sequence[str], log_dir: str | os.PathLike[str], limit_bytes: int) -> list[str]:
    """The argv that runs ``argv`` with its output captured under ``log_dir``."""
    return [sys.executable, "-IS", os.fspath(WRAPPER), "--dir", os.fspath(log_dir), "--limit", str(int(limit_bytes)), "--", *argv]


def split_wrapped(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(log_dir, user_argv)`` of a wrapped argv; ``(None, argv)`` otherwise."""
    a = list(argv)
    if len(a) >= 8 and a[1] == "-IS" and a[2].endswith("_logcapture.py") and a[3] == "--dir" and a[5] == "--limit" and a[7] == "--":
        return a[4], a[8:]
    return None, a
