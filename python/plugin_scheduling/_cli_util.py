"""What every command of the CLI shares: one-line errors, output paths checked
before any work starts, policy names, and the help formatter."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

#: Exit status of a usage mistake (as argparse uses).
EXIT_USAGE = 2
#: Exit status of a failure at run time (a missing file, a refused write, ...).
EXIT_RUNTIME = 1


class CliError(Exception):
    """A mistake to report as one line on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples of an epilog as written and shows defaults."""


def output_path(option: str, path: str) -> str:
    """``path`` if a file can be written there: refuses (``CliError``, exit 2)
    a directory, or a path whose parent directory does not exist, before
    any work starts."""
    if not path:
        raise CliError(f"{option}: needs a file name", EXIT_USAGE)
    if os.path.isdir(path):
        raise CliError(f"{option} {path}: is a directory; give a file name inside it", EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"{option} {path}: no such directory {parent}", EXIT_USAGE)
    if not os.access(parent, os.W_OK):
        raise CliError(f"{option} {path}: directory {parent} is not writable", EXIT_USAGE)
    return path


def policy_names(option: str, text: str) -> List[str]:
    """The comma-separated built-in policy names of ``text``, ignoring case;
    an unknown one is refused with the core's "did you mean" (exit 2)."""
    from ._core import CorePolicy

    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            names.append(CorePolicy.canonical_name(part))
        except ValueError as e:
            reason = str(e).removeprefix("policy: ")
            raise CliError(f"{option} {part}: {reason}", EXIT_USAGE) from None
    if not names:
        raise CliError(f"{option}: needs at least one policy name", EXIT_USAGE)
    return names


def os_message(error: OSError) -> str:
    """An ``OSError`` as one line that names the file."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        return f"{error.filename}: {reason}"
    return reason


def quiet_stdout() -> None:
    """The reader of our stdout went away (``| head``): as the Python docs
    advise, point stdout at /dev/null so that later writes and the
    interpreter's final flush do not raise again, and let the caller end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing will flush to a pipe
